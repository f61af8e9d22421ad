// Every fast path against the reference kernel (the oracle), on every SIMD
// target this machine can run, plus batch invariance and determinism.
#include "core/kernels/qmm.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_split.h"
#include "core/half.h"
#include "core/reference.h"
#include "tbb/task_arena.h"
#include "tests/core/kernels/kernel_test_util.h"

namespace qlinear {
namespace {

// The scale type the packer should pick: affine scales and biases keep the
// weights' 16-bit type (float32 weights give scales no 16-bit type holds);
// E8M0 and E4M3 scales all fit bfloat16.
kernels::ScaleType ExpectedScaleType(const QuantParams& p, DType w_dtype) {
  if (p.mode != QuantMode::kAffine) return kernels::ScaleType::kBF16;
  if (w_dtype == DType::kF16) return kernels::ScaleType::kF16;
  if (w_dtype == DType::kBF16) return kernels::ScaleType::kBF16;
  return kernels::ScaleType::kF32;
}

class FormatTest : public ::testing::TestWithParam<QuantParams> {};

// |fast - reference| <= 1e-6 · Σ_k |x_k w_k| per output, for every x dtype,
// target and scale storage (weights f32, f16, bf16), with K = one group and
// K = several, odd M, N not a multiple of the 16-output tile nor of the
// 64-output block.
TEST_P(FormatTest, MatchesReferenceOnEveryTarget) {
  const QuantParams p = GetParam();
  for (auto [k, n, w_dtype] : {std::tuple<int64_t, int64_t, DType>{p.group_size, 37, DType::kF16},
                               {p.group_size * 5, 37, DType::kF16},
                               {p.group_size * 2, 100, DType::kF32},
                               {p.group_size * 3, 21, DType::kBF16}}) {
    const int64_t m = 5;
    const QuantizedMatrix q = MakeLayer(p, n, k, 11 + k, w_dtype);
    const PackedMatrix packed = PackedMatrix::Pack(q);
    ASSERT_EQ(packed.scale_type(), ExpectedScaleType(p, w_dtype))
        << p.ToString() << " weights " << ShortDTypeName(w_dtype);
    ASSERT_LE(packed.bytes(), PackedMatrix::MaxBytes(p, n, k));
    std::vector<float> dq(static_cast<size_t>(n * k));
    Dequantize(q, DType::kF32, dq.data());
    std::vector<float> bias(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) bias[static_cast<size_t>(i)] = 0.25f * static_cast<float>(i % 5);
    for (DType xd : {DType::kF32, DType::kF16, DType::kBF16}) {
      const std::vector<uint8_t> x = Random(xd, m * k, 5);
      std::vector<double> ref(static_cast<size_t>(m * n));
      ReferenceForwardDouble(q, xd, x.data(), m, bias.data(), ref.data());
      for (const Path& path : Paths()) {
        const MatmulOptions options{.target = path.target, .strategy = path.strategy};
        std::vector<float> y(static_cast<size_t>(m * n));
        QuantizedMatmul(packed, xd, x.data(), m, bias.data(), DType::kF32, y.data(), options);
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            double mag = std::abs(bias[static_cast<size_t>(j)]);
            for (int64_t c = 0; c < k; ++c) {
              mag += std::abs(static_cast<double>(LoadFloat(xd, x.data(), static_cast<size_t>(i * k + c))) *
                              dq[static_cast<size_t>(j * k + c)]);
            }
            const size_t o = static_cast<size_t>(i * n + j);
            ASSERT_LE(std::abs(y[o] - ref[o]), 1e-6 * mag + 1e-30)
                << p.ToString() << " K=" << k << " N=" << n << " weights "
                << ShortDTypeName(w_dtype) << " x " << ShortDTypeName(xd) << " on "
                << path.name() << " at " << i << "," << j;
          }
        }
        // Other output dtypes are the float32 result rounded once.
        for (DType yd : {DType::kF16, DType::kBF16}) {
          std::vector<uint8_t> yo(static_cast<size_t>(m * n) * 2);
          QuantizedMatmul(packed, xd, x.data(), m, bias.data(), yd, yo.data(), options);
          for (size_t o = 0; o < y.size(); ++o) {
            ASSERT_EQ(LoadFloat(yd, yo.data(), o), RoundTo(yd, y[o]));
          }
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllFormats, FormatTest, ::testing::ValuesIn(AllQuantParams()),
                         [](const auto& info) {
                           const QuantParams& p = info.param;
                           return std::string(QuantModeName(p.mode)) + "_b" +
                                  std::to_string(p.bits) + "_g" + std::to_string(p.group_size);
                         });

// A row's bits never depend on its batch, the thread count, the target or
// the kernel strategy. (80 outputs are two blocks: with 4 threads the rows
// are split among tasks too.)
TEST(BatchInvarianceTest, RowsAloneEqualRowsInAnyBatch) {
  const int64_t n = 80, k = 512, total = 256;
  for (const QuantParams& p : {QuantParams{QuantMode::kAffine, 4, 64},
                               QuantParams{QuantMode::kAffine, 2, 64},
                               QuantParams{QuantMode::kAffine, 3, 32},
                               QuantParams{QuantMode::kAffine, 8, 128},
                               DefaultQuantParams(QuantMode::kMxfp4),
                               DefaultQuantParams(QuantMode::kMxfp8),
                               DefaultQuantParams(QuantMode::kNvfp4)}) {
    const PackedMatrix packed = PackedMatrix::Pack(MakeLayer(p, n, k, 3));
    const std::vector<uint8_t> x = Random(DType::kF32, total * k, 8);
    const float* xf = reinterpret_cast<const float*>(x.data());
    // Baseline: every row alone, portable target, one thread.
    tbb::task_arena one(1), two(2), four(4);
    std::vector<float> alone(static_cast<size_t>(total * n));
    for (int64_t r = 0; r < total; ++r) {
      QuantizedMatmul(packed, DType::kF32, xf + r * k, 1, nullptr, DType::kF32,
                      alone.data() + r * n, {.target = SimdTarget::kPortable, .arena = &one});
    }
    for (const Path& path : Paths()) {
      for (tbb::task_arena* arena : {&one, &two, &four}) {
        for (int64_t batch : {1, 2, 3, 7, 13, 30, 64, 256}) {
          std::vector<float> y(static_cast<size_t>(total * n));
          for (int64_t r = 0; r < total; r += batch) {
            const int64_t rows = std::min(batch, total - r);
            QuantizedMatmul(packed, DType::kF32, xf + r * k, rows, nullptr, DType::kF32,
                            y.data() + r * n,
                            {.target = path.target, .strategy = path.strategy, .arena = arena});
          }
          ASSERT_EQ(std::memcmp(y.data(), alone.data(), y.size() * 4), 0)
              << p.ToString() << " " << path.name() << " threads "
              << arena->max_concurrency() << " batch " << batch;
        }
      }
    }
  }
}

// The AVX-512 kernel reads integer codes against inputs pre-scaled by
// powers of two, and falls back to shifting codes when some |x| is too
// small (< 2^-96) to scale exactly: either way the bits are the same, so a
// row keeps its result when a batch-mate takes the batch down the other path.
TEST(BatchInvarianceTest, TinyInputsChangeThePathNotTheBits) {
  const int64_t n = 64, k = 256, rows = 4;
  for (int bits : {2, 4, 8}) {
    const QuantParams p{QuantMode::kAffine, bits, 64};
    const PackedMatrix packed = PackedMatrix::Pack(MakeLayer(p, n, k, 21));
    std::vector<uint8_t> x = Random(DType::kF32, rows * k, 22);
    float* xf = reinterpret_cast<float*>(x.data());
    // Row 2 is tiny throughout (so that bits lost to scaling would show),
    // with two subnormals.
    for (int64_t i = 0; i < k; ++i) xf[2 * k + i] *= 0x1p-110f;
    xf[2 * k + 131] = 0x1.8p-140f;
    xf[2 * k + 200] = -0x1.8p-140f;
    tbb::task_arena one(1);
    std::vector<float> alone(static_cast<size_t>(rows * n));
    for (int64_t r = 0; r < rows; ++r) {
      QuantizedMatmul(packed, DType::kF32, xf + r * k, 1, nullptr, DType::kF32,
                      alone.data() + r * n, {.target = SimdTarget::kPortable, .arena = &one});
    }
    for (const Path& path : Paths()) {
      const MatmulOptions options{.target = path.target, .strategy = path.strategy, .arena = &one};
      std::vector<float> y(static_cast<size_t>(rows * n));
      QuantizedMatmul(packed, DType::kF32, xf, rows, nullptr, DType::kF32, y.data(), options);
      EXPECT_EQ(std::memcmp(y.data(), alone.data(), y.size() * 4), 0)
          << p.ToString() << " " << path.name() << ", the batch with the tiny row";
      for (int64_t r = 0; r < rows; ++r) {
        QuantizedMatmul(packed, DType::kF32, xf + r * k, 1, nullptr, DType::kF32,
                        y.data() + r * n, options);
      }
      EXPECT_EQ(std::memcmp(y.data(), alone.data(), y.size() * 4), 0)
          << p.ToString() << " " << path.name() << ", rows alone";
    }
  }
}

// A call of many rows prepares them (widening, group sums, pre-scaling)
// and finishes them (bias, output dtype) on all its threads, a few rows
// per task: the bytes are those of the rows computed alone, also when the
// one row too small to pre-scale lies in a task other than the first, and
// with float16 inputs or outputs.
TEST(BatchInvarianceTest, RowsPreparedOnSeveralThreadsKeepTheirBits) {
  // 62,464 inputs and 18,300 outputs (not whole tiles: through scratch):
  // both passes in parallel.
  const int64_t n = 300, k = 1024, rows = 61;  // 8 pieces of 8 rows on 4 threads, the last of 5
  const QuantParams p{QuantMode::kAffine, 4, 64};
  const PackedMatrix packed = PackedMatrix::Pack(MakeLayer(p, n, k, 31));
  std::vector<float> bias(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) bias[static_cast<size_t>(i)] = 0.125f * static_cast<float>(i % 7);
  tbb::task_arena one(1), four(4);
  for (bool tiny : {false, true}) {
    for (DType x_dtype : {DType::kF32, DType::kF16}) {
      // Row 50 below 2^-96 throughout: a float16 input cannot hold it.
      if (tiny && x_dtype != DType::kF32) continue;
      std::vector<uint8_t> x = Random(x_dtype, rows * k, 32);
      if (tiny) {
        float* xf = reinterpret_cast<float*>(x.data());
        for (int64_t i = 0; i < k; ++i) xf[50 * k + i] *= 0x1p-110f;
      }
      const size_t row_bytes = static_cast<size_t>(k) * DTypeSize(x_dtype);
      for (DType y_dtype : {DType::kF32, DType::kF16}) {
        const size_t y_row = static_cast<size_t>(n) * DTypeSize(y_dtype);
        std::vector<uint8_t> alone(rows * y_row);
        for (int64_t r = 0; r < rows; ++r) {
          QuantizedMatmul(packed, x_dtype, x.data() + r * row_bytes, 1, bias.data(), y_dtype,
                          alone.data() + r * y_row,
                          {.target = SimdTarget::kPortable, .arena = &one});
        }
        for (const Path& path : Paths()) {
          std::vector<uint8_t> y(rows * y_row);
          QuantizedMatmul(packed, x_dtype, x.data(), rows, bias.data(), y_dtype, y.data(),
                          {.target = path.target, .strategy = path.strategy, .arena = &four});
          EXPECT_EQ(y, alone) << path.name() << (tiny ? ", with a tiny row" : "") << ", x "
                              << DTypeName(x_dtype) << ", y " << DTypeName(y_dtype);
        }
      }
    }
  }
}

// Inputs longer than one panel chunk (qmm_panel_avx512.cc decodes 1024 at
// a time), with a short last chunk, in batches whose rows are not whole
// micro-kernel blocks, and (100 rows) in chunks that qmm.cc's
// kTaskInputBytes bounds (24 rows of this k, where halving for two threads
// would stop at 32): every path gives the bits of the rows computed alone,
// in every format.
TEST(BatchInvarianceTest, LongInputsKeepTheirBitsOnEveryPath) {
  const int64_t n = 80, k = 2560;  // chunks of 1024, 1024 and 512 inputs
  tbb::task_arena two(2);
  for (const QuantParams& p : AllQuantParams()) {
    const PackedMatrix packed = PackedMatrix::Pack(MakeLayer(p, n, k, 41));
    for (int64_t rows : {1, 9, 15, 100}) {
      const std::vector<uint8_t> x = Random(DType::kF32, rows * k, 42);
      const auto* xf = reinterpret_cast<const float*>(x.data());
      std::vector<float> alone(static_cast<size_t>(rows * n));
      for (int64_t r = 0; r < rows; ++r) {
        QuantizedMatmul(packed, DType::kF32, xf + r * k, 1, nullptr, DType::kF32,
                        alone.data() + r * n, {.target = SimdTarget::kPortable, .arena = &two});
      }
      for (const Path& path : Paths()) {
        std::vector<float> y(static_cast<size_t>(rows * n));
        QuantizedMatmul(packed, DType::kF32, xf, rows, nullptr, DType::kF32, y.data(),
                        {.target = path.target, .strategy = path.strategy, .arena = &two});
        EXPECT_EQ(std::memcmp(y.data(), alone.data(), y.size() * 4), 0)
            << p.ToString() << " " << path.name() << ", " << rows << " rows";
      }
    }
  }
}

// Scales held in 16 bits halve their bytes: a 4096 x 4096 4-bit layer with
// float16 scales holds 8 MiB of codes and 1 MiB of scales and biases (and a
// zero word of 64 bytes either side of the codes).
TEST(PackTest, SixteenBitScalesHalveTheirBytes) {
  const QuantParams p{QuantMode::kAffine, 4, 64};
  const int64_t n = 256, k = 512;
  const size_t pad = 2 * 64;
  const size_t codes = static_cast<size_t>(n * k / 2) + pad;
  const size_t groups = static_cast<size_t>(n * k / 64);
  EXPECT_EQ(PackedMatrix::Pack(MakeLayer(p, n, k, 1, DType::kF16)).bytes(), codes + groups * 2 * 2);
  EXPECT_EQ(PackedMatrix::Pack(MakeLayer(p, n, k, 1, DType::kF32)).bytes(), codes + groups * 2 * 4);
  EXPECT_EQ(PackedMatrix::MaxBytes(p, n, k), codes + groups * 2 * 4);
  // N = 65 pads to two blocks of 64 outputs.
  EXPECT_EQ(PackedMatrix::MaxBytes(p, 65, k), (codes - pad + groups * 2 * 4) / 256 * 128 + pad);
}

// Small allocations come from the heap, cache-line aligned; large ones are
// their own mapping, from a 2 MiB boundary to the page that holds their
// last byte.
TEST(WeightMemoryTest, LargeAllocationsAreExactHugePageAlignedMappings) {
  void* small = AllocateWeightMemory(1000);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(small) % 64, 0u);
  std::memset(small, 7, 1000);
  FreeWeightMemory(small, 1000);

  const size_t bytes = (size_t{2} << 20) * 2 + 12345;
  auto* large = static_cast<unsigned char*>(AllocateWeightMemory(bytes));
  const uintptr_t start = reinterpret_cast<uintptr_t>(large);
  EXPECT_EQ(start % (size_t{2} << 20), 0u);
  large[0] = 1;
  large[bytes - 1] = 2;
  EXPECT_EQ(large[0] + large[bytes - 1], 3);
  // Mapped from start to the page that holds the last byte, and the page
  // after it not (the slack unmapped; nothing else maps between here and
  // the allocation): mincore fails with ENOMEM on unmapped pages.
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t length = (bytes + page - 1) / page * page;
  std::vector<unsigned char> resident(length / page + 1);
  EXPECT_EQ(mincore(large, length, resident.data()), 0);
  errno = 0;
  EXPECT_EQ(mincore(large + length, page, resident.data()), -1);
  EXPECT_EQ(errno, ENOMEM);
  FreeWeightMemory(large, bytes);
}

// A layer whose codes take more than 2 MiB (so they live in their own
// mapping) computes the same as the reference on every target.
TEST(WeightMemoryTest, LargeLayersMatchTheReference) {
  const QuantParams p{QuantMode::kAffine, 4, 64};
  const int64_t n = 1100, k = 4096, m = 3;
  const QuantizedMatrix q = MakeLayer(p, n, k, 3);
  const PackedMatrix packed = PackedMatrix::Pack(q);
  ASSERT_GT(packed.bytes(), size_t{2} << 20);
  const std::vector<uint8_t> x = Random(DType::kF32, m * k, 4);
  std::vector<double> ref(static_cast<size_t>(m * n));
  ReferenceForwardDouble(q, DType::kF32, x.data(), m, nullptr, ref.data());
  std::vector<float> dq(static_cast<size_t>(n * k));
  Dequantize(q, DType::kF32, dq.data());
  const auto* xf = reinterpret_cast<const float*>(x.data());
  for (SimdTarget target : Targets()) {
    std::vector<float> y(static_cast<size_t>(m * n));
    QuantizedMatmul(packed, DType::kF32, x.data(), m, nullptr, DType::kF32, y.data(),
                    {.target = target});
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double mag = 0;
        for (int64_t c = 0; c < k; ++c) {
          mag += std::abs(static_cast<double>(xf[i * k + c]) * dq[static_cast<size_t>(j * k + c)]);
        }
        const size_t o = static_cast<size_t>(i * n + j);
        ASSERT_LE(std::abs(y[o] - ref[o]), 1e-6 * mag) << SimdTargetName(target) << " at " << i << "," << j;
      }
    }
  }
}

// The one dispatch point: the panel runs only EXACT products on AVX-512,
// and only when asked for; kAuto is the register kernel (qmm.h).
TEST(KernelStrategyTest, ChooseStrategyHonoursTargetAndPrecision) {
  EXPECT_EQ(KernelStrategyName(KernelStrategy::kAuto), "auto");
  EXPECT_EQ(KernelStrategyName(KernelStrategy::kRegister), "register");
  EXPECT_EQ(KernelStrategyName(KernelStrategy::kPanel), "panel");
  for (SimdTarget target : Targets()) {
    for (int64_t rows : {1, 15, 16, 128}) {
      const bool avx512 = target == SimdTarget::kAvx512;
      MatmulOptions o{.target = target, .strategy = KernelStrategy::kPanel};
      EXPECT_EQ(ChooseStrategy(o, rows), avx512 ? KernelStrategy::kPanel : KernelStrategy::kRegister)
          << SimdTargetName(target) << " " << rows;
      o.strategy = KernelStrategy::kRegister;
      EXPECT_EQ(ChooseStrategy(o, rows), KernelStrategy::kRegister);
      o.strategy = KernelStrategy::kAuto;
      EXPECT_EQ(ChooseStrategy(o, rows), KernelStrategy::kRegister);
      for (Precision precision : {Precision::kInt8, Precision::kBf16}) {
        o = {.target = target, .strategy = KernelStrategy::kPanel, .precision = precision};
        EXPECT_EQ(ChooseStrategy(o, rows), KernelStrategy::kRegister);
      }
    }
  }
}

TEST(SimdTargetTest, DefaultIsSupportedAndNamed) {
  EXPECT_TRUE(SimdTargetSupported(DefaultSimdTarget()));
  EXPECT_TRUE(SimdTargetSupported(SimdTarget::kPortable));
  EXPECT_EQ(SimdTargetName(SimdTarget::kAvx512), "avx512");
}

// The one list of choices holds every name the readers act on, first the
// value that means none.
TEST(KernelEnvironmentTest, ChoicesAreTheKernelsNames) {
  const std::vector<std::string> simd = absl::StrSplit(kSimdChoices, '|');
  EXPECT_THAT(simd, ::testing::UnorderedElementsAre(
                        "best", std::string(SimdTargetName(SimdTarget::kAvx512)),
                        std::string(SimdTargetName(SimdTarget::kAvx2)),
                        std::string(SimdTargetName(SimdTarget::kPortable))));
  EXPECT_EQ(simd.front(), "best");
  const std::vector<std::string> kernel = absl::StrSplit(kKernelChoices, '|');
  EXPECT_THAT(kernel, ::testing::ElementsAre(std::string(KernelStrategyName(KernelStrategy::kAuto)),
                                             std::string(KernelStrategyName(KernelStrategy::kRegister)),
                                             std::string(KernelStrategyName(KernelStrategy::kPanel))));
}

// The variables the kernels read: a value they would ignore is named, with
// what was allowed, before anything runs on it.
TEST(KernelEnvironmentTest, RefusesWhatTheKernelsWouldIgnore) {
  struct Saved {
    const char* name;
    std::optional<std::string> value;
  };
  std::vector<Saved> saved;
  for (const char* name : {"QLINEAR_SIMD", "QLINEAR_KERNEL"}) {
    const char* v = std::getenv(name);
    saved.push_back({name, v != nullptr ? std::optional<std::string>(v) : std::nullopt});
    unsetenv(name);
  }
  EXPECT_TRUE(CheckKernelEnvironment().ok());
  setenv("QLINEAR_SIMD", "avx2", 1);
  setenv("QLINEAR_KERNEL", "panel", 1);
  EXPECT_TRUE(CheckKernelEnvironment().ok());
  setenv("QLINEAR_SIMD", "best", 1);  // the server's --simd default: no cap
  EXPECT_TRUE(CheckKernelEnvironment().ok());

  setenv("QLINEAR_KERNEL", "panle", 1);
  absl::Status s = CheckKernelEnvironment();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "QLINEAR_KERNEL must be one of auto, register, panel; got 'panle'");

  setenv("QLINEAR_KERNEL", "auto", 1);
  setenv("QLINEAR_SIMD", "AVX512", 1);  // the names are lower case
  s = CheckKernelEnvironment();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "QLINEAR_SIMD must be one of best, avx512, avx2, portable; got 'AVX512'");

  for (const Saved& v : saved) {
    if (v.value) {
      setenv(v.name, v.value->c_str(), 1);
    } else {
      unsetenv(v.name);
    }
  }
}

}  // namespace
}  // namespace qlinear
