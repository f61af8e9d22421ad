// The INT8 precision's SIMD kernels (qmm_int8_avx512.cc, qmm_int8_avx2.cc)
// against its portable kernel, the definition (qmm_int8.cc, kernel_args.h):
// bit for bit on every SIMD target this machine runs, for every format
// INT8 applies to, batch invariance, thread counts and edge inputs; and a
// small case worked out by hand from the definition.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "core/half.h"
#include "core/kernels/kernel_args.h"
#include "core/kernels/qmm.h"
#include "core/precision.h"
#include "tbb/task_arena.h"
#include "tests/core/kernels/kernel_test_util.h"

namespace qlinear {
namespace {

// The formats INT8 runs as INT8 (mxfp8 runs BF16: core/precision.h).
std::vector<QuantParams> Int8Formats() {
  std::vector<QuantParams> out;
  for (const QuantParams& p : AllQuantParams()) {
    if (EffectivePrecision(p, Precision::kInt8) == Precision::kInt8) out.push_back(p);
  }
  return out;
}

std::vector<float> RunInt8(const PackedMatrix& w, DType xd, const void* x, int64_t rows,
                       SimdTarget target, tbb::task_arena* arena = nullptr,
                       const float* bias = nullptr) {
  std::vector<float> y(static_cast<size_t>(rows * w.n()));
  QuantizedMatmul(w, xd, x, rows, bias, DType::kF32, y.data(),
                  {.target = target, .arena = arena, .precision = Precision::kInt8});
  return y;
}

// The first `count` floats of a and b hold the same bits.
bool SameBits(const float* a, const float* b, size_t count) {
  return std::memcmp(a, b, count * sizeof(float)) == 0;
}

// Where two results first differ, for a failure message.
std::string FirstDifference(const std::vector<float>& got, const float* want, int64_t n) {
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], 4) != 0) {
      return "row " + std::to_string(static_cast<int64_t>(i) / n) + " col " +
             std::to_string(static_cast<int64_t>(i) % n) + ": " + std::to_string(got[i]) +
             " vs " + std::to_string(want[i]);
    }
  }
  return "none";
}

std::string FormatName(const QuantParams& p) {
  return std::string(QuantModeName(p.mode)) + "_b" + std::to_string(p.bits) + "_g" +
         std::to_string(p.group_size);
}

class Int8FormatTest : public ::testing::TestWithParam<QuantParams> {};

// Every target gives the portable kernel's bits: N not a multiple of the
// 16-output tile nor of the 64-output block, K of 1 to 8 groups, every
// scale storage (weights f16, f32, bf16), x f32/f16/bf16, and every row
// count 1..20 (all register blockings of rows and their remainders). The
// portable result for 20 rows is the oracle for every prefix of them (its
// rows are independent by definition).
TEST_P(Int8FormatTest, EveryTargetMatchesPortableBitForBit) {
  const QuantParams p = GetParam();
  constexpr int64_t kRows = 20;
  for (auto [k, n, w_dtype] : {std::tuple<int64_t, int64_t, DType>{p.group_size, 37, DType::kF16},
                               {p.group_size * 3, 100, DType::kF32},
                               {p.group_size * 8, 64, DType::kF16},
                               {p.group_size * 2, 130, DType::kBF16}}) {
    const PackedMatrix packed = PackedMatrix::Pack(MakeLayer(p, n, k, 31 + k + n, w_dtype));
    for (DType xd : {DType::kF32, DType::kF16, DType::kBF16}) {
      const std::vector<uint8_t> x = Random(xd, kRows * k, 7 + k);
      const std::vector<float> want = RunInt8(packed, xd, x.data(), kRows, SimdTarget::kPortable);
      for (SimdTarget target : Targets()) {
        for (int64_t rows = 1; rows <= kRows; ++rows) {
          const std::vector<float> y = RunInt8(packed, xd, x.data(), rows, target);
          ASSERT_TRUE(SameBits(y.data(), want.data(), y.size()))
              << p.ToString() << " K=" << k << " N=" << n << " weights "
              << ShortDTypeName(w_dtype) << " x " << ShortDTypeName(xd) << " on "
              << SimdTargetName(target) << " rows " << rows << ": "
              << FirstDifference(y, want.data(), n);
        }
      }
    }
  }
}

// A row's bits never depend on its batch or the thread count: each row
// alone (portable, one thread) against batches of 1, 2, 7, 64 and 256 on
// every target with 1 and 2 threads.
TEST_P(Int8FormatTest, RowsAloneEqualRowsInAnyBatchAndThreadCount) {
  const QuantParams p = GetParam();
  const int64_t n = 80, k = std::max<int64_t>(512, p.group_size * 2), total = 256;
  const PackedMatrix packed = PackedMatrix::Pack(MakeLayer(p, n, k, 3));
  const std::vector<uint8_t> x = Random(DType::kF32, total * k, 8);
  const float* xf = reinterpret_cast<const float*>(x.data());
  tbb::task_arena one(1), two(2);
  std::vector<float> alone(static_cast<size_t>(total * n));
  for (int64_t r = 0; r < total; ++r) {
    const std::vector<float> y = RunInt8(packed, DType::kF32, xf + r * k, 1, SimdTarget::kPortable, &one);
    std::memcpy(alone.data() + r * n, y.data(), y.size() * 4);
  }
  for (SimdTarget target : Targets()) {
    for (tbb::task_arena* arena : {&one, &two}) {
      for (int64_t batch : {1, 2, 7, 64, 256}) {
        std::vector<float> y(static_cast<size_t>(total * n));
        for (int64_t r = 0; r < total; r += batch) {
          const int64_t rows = std::min(batch, total - r);
          const std::vector<float> part = RunInt8(packed, DType::kF32, xf + r * k, rows, target, arena);
          std::memcpy(y.data() + r * n, part.data(), part.size() * 4);
        }
        ASSERT_TRUE(SameBits(y.data(), alone.data(), y.size()))
            << p.ToString() << " " << SimdTargetName(target) << " threads "
            << arena->max_concurrency() << " batch " << batch << ": "
            << FirstDifference(y, alone.data(), n);
      }
    }
  }
}

// Rows that stress the quantization of the input, one per row: an all-zero
// group (against a weight group of zero codes and zero scale), Inf and NaN
// in a group (d = NaN: the whole row's outputs are NaN), huge values
// (products overflow), tiny ones (1e-30, subnormal d, and d = 0 from
// max|x| < 127·2^-150, where x / d is ±Inf or NaN and clamps), a group whose
// largest magnitude is negative, exact halves (round half to even), and
// signed zeros; and, since the input is quantized per kInt8Block block
// (kernel_args.h), blocks of one group that differ: a zero block among
// normal ones, blocks of d = 0 and subnormal d among normal ones, and
// blocks of mixed magnitudes. Every target gives the portable bits, in one
// batch and row by row, and the NaN rows are NaN throughout.
TEST_P(Int8FormatTest, EdgeInputsMatchPortable) {
  const QuantParams p = GetParam();
  const int64_t gs = p.group_size, groups = 5, k = gs * groups, n = 70;
  QuantizedMatrix q = MakeLayer(p, n, k, 41);
  // Weight group 1 of every output: codes 0 and (affine, nvfp4) scale and
  // bias 0.
  for (int64_t r = 0; r < n; ++r) {
    uint32_t* row = q.wq.data() + r * p.packed_cols(k);
    for (int64_t c = gs; c < 2 * gs; ++c) {
      const int64_t bit = c * p.bits;
      for (int b = 0; b < p.bits; ++b) {
        row[(bit + b) >> 5] &= ~(1u << ((bit + b) & 31));
      }
    }
    if (p.mode == QuantMode::kAffine || p.mode == QuantMode::kNvfp4) {
      const size_t bytes = p.mode == QuantMode::kAffine ? DTypeSize(q.dtype) : 1;
      std::memset(q.scales.data() + (r * groups + 1) * bytes, 0, bytes);
      if (p.has_biases()) std::memset(q.biases.data() + (r * groups + 1) * bytes, 0, bytes);
    }
  }
  const PackedMatrix packed = PackedMatrix::Pack(q);
  constexpr int64_t kRows = 14;
  std::vector<uint8_t> raw = Random(DType::kF32, kRows * k, 42);
  float* x = reinterpret_cast<float*>(raw.data());
  auto at = [&](int64_t row, int64_t g, int64_t i) -> float& { return x[row * k + g * gs + i]; };
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t i = 0; i < gs; ++i) {
      if (g == 1) at(1, g, i) = 0.0f;                          // row 1: zero group 1
      at(4, g, i) = std::copysign(3e38f, at(4, g, i));         // row 4: huge
      at(5, g, i) *= 1e-30f;                                   // row 5: tiny
      at(6, g, i) *= 1e-40f;                                   // row 6: subnormal d
      if (g == 2) at(7, g, i) = -std::fabs(at(7, g, i));       // row 7: negative max
      if (g == 0) at(8, g, i) *= 1e30f;                        // row 8: mixed magnitudes
      if (g == 3) at(8, g, i) *= 1e-35f;
      if (g == 4) at(8, g, i) *= 1e-44f;                       // d = 0: x / d is ±Inf, NaN
      // Row 9: amax 127 (d = 1) and halves: q rounds half to even.
      at(9, g, i) = i == 0 ? 127.0f : static_cast<float>(i % 9) - 4.5f;
      // Row 10: signed zeros, and one group all -0.
      if (g == 4 || i % 3 == 0) at(10, g, i) = (i % 2 == 0) ? -0.0f : 0.0f;
      const int64_t block = (g * gs + i) / kernels::kInt8Block;
      if (block % 3 == 1) at(11, g, i) = 0.0f;                 // row 11: zero blocks
      if (block % 2 == 1) at(12, g, i) *= 1e-44f;              // row 12: d = 0 blocks
      if (block % 4 == 2) at(12, g, i) *= 1e-40f;              // and subnormal d
      if (block % 2 == 0) at(13, g, i) *= 1e30f;               // row 13: mixed blocks
    }
  }
  at(2, 1, gs / 2) = inf;   // row 2: Inf in group 1
  at(3, 3, 1) = nan;        // row 3: NaN in group 3
  at(3, 0, 0) = -inf;       // and -Inf in group 0
  tbb::task_arena one(1);
  const std::vector<float> want = RunInt8(packed, DType::kF32, x, kRows, SimdTarget::kPortable, &one);
  for (int64_t c = 0; c < n; ++c) {
    EXPECT_TRUE(std::isnan(want[2 * n + c])) << p.ToString() << " col " << c;
    EXPECT_TRUE(std::isnan(want[3 * n + c])) << p.ToString() << " col " << c;
    for (int64_t r : {0, 1, 5, 7, 9, 10, 11, 12}) {
      EXPECT_TRUE(std::isfinite(want[r * n + c])) << p.ToString() << " row " << r << " col " << c;
    }
  }
  for (SimdTarget target : Targets()) {
    const std::vector<float> y = RunInt8(packed, DType::kF32, x, kRows, target, &one);
    EXPECT_TRUE(SameBits(y.data(), want.data(), y.size()))
        << p.ToString() << " " << SimdTargetName(target) << ": " << FirstDifference(y, want.data(), n);
    for (int64_t r = 0; r < kRows; ++r) {
      const std::vector<float> alone = RunInt8(packed, DType::kF32, x + r * k, 1, target, &one);
      EXPECT_TRUE(SameBits(alone.data(), want.data() + r * n, alone.size()))
          << p.ToString() << " " << SimdTargetName(target) << " row " << r << " alone";
    }
  }
}

// The AVX-512 and AVX2 input preparations write PrepareInt8's bytes exactly, for
// every lane width and group size, on inputs of every magnitude: normal,
// tiny (d subnormal, or d = 0 when max|x| < 127·2^-150, so that x / d is
// ±Inf or NaN and clamps), huge, zeros and signed zeros, Inf and NaN.
TEST(PrepareInt8Test, SimdVersionsWriteThePortableBytes) {
  const int64_t k = 1024, rows = 12;
  std::vector<uint8_t> raw = Random(DType::kF32, rows * k, 77);
  float* x = reinterpret_cast<float*>(raw.data());
  const float scale[rows] = {1.0f, 1e-30f, 1e-40f, 1e-44f, 3e38f, 1e20f,
                             0.0f, -1.0f, 1.0f, 1.0f, 1e-38f, 1.0f};
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < k; ++i) x[r * k + i] *= scale[r];
  }
  x[7 * k + 5] = -0.0f;
  x[8 * k + 100] = std::numeric_limits<float>::infinity();
  x[8 * k + 300] = -std::numeric_limits<float>::infinity();
  x[9 * k + 17] = std::numeric_limits<float>::quiet_NaN();
  x[9 * k + 600] = -std::numeric_limits<float>::quiet_NaN();
  for (int64_t i = 0; i < k; ++i) {
    if (i % 7 == 0) x[11 * k + i] = 0x1p-149f;  // the smallest subnormal among normals
    if (i % 64 < 32) x[11 * k + i] *= 0x1p-140f;
  }
  for (int lane_bits : {2, 4, 8}) {
    for (int64_t gs : {16, 32, 64, 128}) {
      if (gs % (32 / lane_bits) != 0) continue;
      const int64_t groups = k / gs;
      std::vector<int8_t> q0(rows * k), q1(rows * k);
      std::vector<float> d0(rows * groups), d1(rows * groups);
      std::vector<int32_t> s0(rows * groups), s1(rows * groups);
      kernels::PrepareInt8(x, rows, k, gs, lane_bits, q0.data(), d0.data(), s0.data());
      for (SimdTarget target : Targets()) {
        if (target == SimdTarget::kPortable) continue;
        (target == SimdTarget::kAvx512 ? kernels::PrepareInt8Avx512 : kernels::PrepareInt8Avx2)(
            x, rows, k, gs, lane_bits, q1.data(), d1.data(), s1.data());
        const std::string where = std::string(SimdTargetName(target)) + " lane bits " +
                                  std::to_string(lane_bits) + " group " + std::to_string(gs);
        EXPECT_EQ(q0, q1) << where;
        EXPECT_TRUE(SameBits(d0.data(), d1.data(), d0.size())) << where;
        EXPECT_EQ(s0, s1) << where;
      }
    }
  }
}

// The tile kernels called directly on hand-made arguments: group sizes no
// format uses (3 or 6 blocks of kInt8Block per group: the kernels' generic
// block loop rather than their unrolled groups) and one block per group
// for 2- and 8-bit lanes, 1 to 4 tiles per call (QuantizedMatmul always
// passes 4) and 1 to 11 rows, float32 scales; every SIMD kernel this CPU
// runs gives TileKernelInt8Portable's bits.
TEST(Int8TileKernelTest, AnyGroupSizeAndTileCountMatchesPortable) {
  std::vector<std::pair<const char*, void (*)(const kernels::TileArgs&)>> kernels_here;
  if (SimdTargetSupported(SimdTarget::kAvx2)) {
    kernels_here.push_back({"avx2", kernels::TileKernelInt8Avx2});
  }
  if (SimdTargetSupported(SimdTarget::kAvx512) && CpuHasVnni()) {
    kernels_here.push_back({"avx512vnni", kernels::TileKernelInt8Avx512Vnni});
  }
  if (kernels_here.empty()) GTEST_SKIP() << "no SIMD INT8 kernel on this CPU";
  std::mt19937_64 rng(99);
  for (auto [lane_bits, decode, gs] :
       {std::tuple<int, kernels::Decode, int64_t>{4, kernels::Decode::kInt, 48},
        {4, kernels::Decode::kInt, 96},
        {2, kernels::Decode::kInt, 48},
        {2, kernels::Decode::kInt, 16},
        {8, kernels::Decode::kInt, 48},
        {8, kernels::Decode::kInt, 16},
        {4, kernels::Decode::kFp4, 48}}) {
    const int cpl = 32 / lane_bits;
    const int64_t groups = 3, k = gs * groups, words = k / cpl;
    const bool fp4 = decode == kernels::Decode::kFp4;
    // A zero word either side of the codes, as the packed layout has.
    std::vector<uint32_t> codes(static_cast<size_t>(4 * words * 16 + 32));
    for (size_t i = 16; i + 16 < codes.size(); ++i) codes[i] = static_cast<uint32_t>(rng());
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> scales(static_cast<size_t>(groups * 64)), biases(scales.size());
    for (float& v : scales) v = normal(rng);
    for (float& v : biases) v = normal(rng);
    constexpr int64_t kRows = 11;
    std::vector<float> x(static_cast<size_t>(kRows * k));
    for (float& v : x) v = normal(rng);
    // Every row's third block zero (d = 0).
    for (int64_t r = 0; r < kRows; ++r) {
      for (int64_t i = 2 * kernels::kInt8Block; i < 3 * kernels::kInt8Block; ++i) x[r * k + i] = 0.0f;
    }
    const int64_t blocks = k / kernels::kInt8Block, per_group = gs / kernels::kInt8Block;
    std::vector<int8_t> xq(x.size());
    std::vector<float> xd(static_cast<size_t>(kRows * blocks));
    std::vector<int32_t> xqsum(xd.size());
    kernels::PrepareInt8(x.data(), kRows, k, kernels::kInt8Block, lane_bits, xq.data(), xd.data(),
                         xqsum.data());
    // xsum per group: fma(d, qsum, xsum) over its blocks (kernel_args.h).
    std::vector<float> xsum(static_cast<size_t>(kRows * groups), 0.0f);
    for (int64_t r = 0; r < kRows; ++r) {
      for (int64_t b = 0; b < blocks; ++b) {
        float& sum = xsum[r * groups + b / per_group];
        sum = std::fma(xd[r * blocks + b], static_cast<float>(xqsum[r * blocks + b]), sum);
      }
    }
    for (int tiles = 1; tiles <= 4; ++tiles) {
      for (int rows = 1; rows <= kRows; ++rows) {
        kernels::TileArgs a{};
        a.codes = codes.data() + 16;
        a.scales = scales.data();
        a.biases = fp4 ? nullptr : biases.data();
        a.x = x.data();
        a.xsum = xsum.data();
        a.xp = xq.data();
        a.xp_stride = k;
        a.xd = xd.data();
        a.xqsum = xqsum.data();
        a.xd_stride = blocks;
        a.k = k;
        a.groups = groups;
        a.group_size = gs;
        a.x_stride = k;
        a.xsum_stride = groups;
        a.y_stride = 64;
        a.codes_stride = words * 16;
        a.rows = rows;
        a.tiles = tiles;
        a.lane_bits = lane_bits;
        a.decode = decode;
        a.scale_type = kernels::ScaleType::kF32;
        a.scale_bytes = 4;
        std::vector<float> want(static_cast<size_t>(rows * 64), -1.0f), got(want.size());
        a.y = want.data();
        kernels::TileKernelInt8Portable(a);
        for (const auto& [name, kernel] : kernels_here) {
          std::fill(got.begin(), got.end(), -1.0f);
          a.y = got.data();
          kernel(a);
          ASSERT_TRUE(SameBits(got.data(), want.data(), got.size()))
              << name << " lane bits " << lane_bits << (fp4 ? " fp4" : " int") << " group " << gs
              << " tiles " << tiles << " rows " << rows << ": " << FirstDifference(got, want.data(), 64);
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Int8Formats, Int8FormatTest, ::testing::ValuesIn(Int8Formats()),
                         [](const auto& info) { return FormatName(info.param); });

// INT8 covers every format but mxfp8 (which runs BF16).
TEST(Int8FormatsTest, AllButMxfp8) {
  EXPECT_EQ(Int8Formats().size() + 1, AllQuantParams().size());
  for (const QuantParams& p : Int8Formats()) EXPECT_NE(p.mode, QuantMode::kMxfp8);
}

// One group of 32 (two blocks of kInt8Block = 16) worked out by hand from
// the definition (kernel_args.h), independent of the CPU. Input, zeros
// elsewhere:
//   block 0: x[0..3] = 254, 127, 125, -6.6: amax 254, d0 = 2; x/d = 127,
//     63.5, 62.5, -3.3; rounded half to even: q = 127, 64, 62, -3;
//     qsum0 = 250.
//   block 1: x[16..19] = -15.875, 3, 0.3125, 0.1875: amax 15.875, d1 =
//     0.125; x/d = -127, 24, 2.5, 1.5: q = -127, 24, 2, 2; qsum1 = -99.
// (With one scale for the group, d = 2 would quantize block 1 to -8, 2, 0,
// 0.) xsum = fma(0.125, -99, fma(2, 250, 0)) = 500 - 12.375 = 487.625.
std::vector<float> HandInput() {
  std::vector<float> x(32, 0.0f);
  x[0] = 254.0f;
  x[1] = 127.0f;
  x[2] = 125.0f;
  x[3] = -6.6f;
  x[16] = -15.875f;
  x[17] = 3.0f;
  x[18] = 0.3125f;
  x[19] = 0.1875f;
  return x;
}

// 4-bit codes of one output, 8 to a word, code k in bits 4(k%8).
std::vector<uint32_t> PackNibbles(const std::vector<uint32_t>& codes) {
  std::vector<uint32_t> words(codes.size() / 8, 0u);
  for (size_t i = 0; i < codes.size(); ++i) words[i / 8] |= codes[i] << (4 * (i % 8));
  return words;
}

TEST(Int8HandTest, PreparedInputFollowsTheDefinition) {
  static_assert(kernels::kInt8Block == 16);
  const std::vector<float> x = HandInput();
  // 4-bit lanes: cpl 8, npos 2; code k = 8j + 2b + i sits at 8j + 4i + b.
  std::vector<int8_t> xq(32, 99);
  float d[2] = {};
  int32_t qsum[2] = {};
  kernels::PrepareInt8(x.data(), 1, 32, kernels::kInt8Block, 4, xq.data(), d, qsum);
  EXPECT_EQ(d[0], 2.0f);
  EXPECT_EQ(d[1], 0.125f);
  EXPECT_EQ(qsum[0], 250);
  EXPECT_EQ(qsum[1], -99);
  // Word 0: k = 0 (b 0, i 0) at 0; k = 1 (b 0, i 1) at 4; k = 2 (b 1, i 0)
  // at 1; k = 3 (b 1, i 1) at 5. Word 2 the same from 16.
  const std::vector<int8_t> want_head = {127, 62, 0, 0, 64, -3, 0, 0};
  EXPECT_EQ(std::vector<int8_t>(xq.begin(), xq.begin() + 8), want_head);
  const std::vector<int8_t> want_third = {-127, 2, 0, 0, 24, 2, 0, 0};
  EXPECT_EQ(std::vector<int8_t>(xq.begin() + 16, xq.begin() + 24), want_third);
  for (int i : {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}) {
    EXPECT_EQ(xq[i], 0) << i;
  }
  // -Inf in block 0: d0 NaN, its codes 0; block 1 (all 1) keeps its own
  // d1 = 1/127 and codes 127.
  std::vector<float> bad(32, 1.0f);
  bad[5] = -std::numeric_limits<float>::infinity();
  kernels::PrepareInt8(bad.data(), 1, 32, kernels::kInt8Block, 4, xq.data(), d, qsum);
  EXPECT_TRUE(std::isnan(d[0]));
  EXPECT_EQ(qsum[0], 0);
  EXPECT_EQ(d[1], 1.0f / 127.0f);
  EXPECT_EQ(qsum[1], 16 * 127);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(xq[i], 0) << i;
  for (int i = 16; i < 32; ++i) EXPECT_EQ(xq[i], 127) << i;
  // All zero: d 0, codes 0.
  const std::vector<float> zero(32, 0.0f);
  kernels::PrepareInt8(zero.data(), 1, 32, kernels::kInt8Block, 4, xq.data(), d, qsum);
  EXPECT_EQ(d[0], 0.0f);
  EXPECT_EQ(d[1], 0.0f);
  EXPECT_EQ(qsum[0], 0);
  EXPECT_EQ(qsum[1], 0);
}

// Affine 4-bit, one group of 32. Output 0: codes 1, 2, 3, 15 for k = 0..3,
// 4, 7, 9, 0 for k = 16..19, 5 elsewhere (their inputs are 0).
//   P0 = 127·1 + 64·2 + 62·3 - 3·15 = 396; acc = fma(2, 396, 0) = 792;
//   P1 = -127·4 + 24·7 + 2·9 + 2·0 = -322; acc = fma(0.125, -322, 792) =
//   751.75; scale 0.5, bias -2: y = 0.5·751.75 - 2·487.625 = -599.375.
// Output 1: codes 15 throughout, scale 0.25, bias 0.125:
//   P0 = 15·250 = 3750, P1 = 15·(-99) = -1485; acc = 7500 - 185.625 =
//   7314.375; y = 1828.59375 + 60.953125 = 1889.546875.
TEST(Int8HandTest, AffineOneGroupByHand) {
  QuantizedMatrix q;
  q.params = QuantParams{QuantMode::kAffine, 4, 32};
  q.dtype = DType::kF32;
  q.n = 2;
  q.k = 32;
  std::vector<uint32_t> c0(32, 5u), c1(32, 15u);
  c0[0] = 1;
  c0[1] = 2;
  c0[2] = 3;
  c0[3] = 15;
  c0[16] = 4;
  c0[17] = 7;
  c0[18] = 9;
  c0[19] = 0;
  for (const auto& c : {c0, c1}) {
    const std::vector<uint32_t> w = PackNibbles(c);
    q.wq.insert(q.wq.end(), w.begin(), w.end());
  }
  const float scales[2] = {0.5f, 0.25f}, biases[2] = {-2.0f, 0.125f};
  q.scales.resize(8);
  q.biases.resize(8);
  std::memcpy(q.scales.data(), scales, 8);
  std::memcpy(q.biases.data(), biases, 8);
  const PackedMatrix packed = PackedMatrix::Pack(q);
  const std::vector<float> x = HandInput();
  for (SimdTarget target : Targets()) {
    const std::vector<float> y = RunInt8(packed, DType::kF32, x.data(), 1, target);
    EXPECT_EQ(y[0], -599.375f) << SimdTargetName(target);
    EXPECT_EQ(y[1], 1889.546875f) << SimdTargetName(target);
    // The output bias is added after the INT8 product.
    const float bias[2] = {1.0f, -0.5f};
    const std::vector<float> yb = RunInt8(packed, DType::kF32, x.data(), 1, target, nullptr, bias);
    EXPECT_EQ(yb[0], -598.375f) << SimdTargetName(target);
    EXPECT_EQ(yb[1], 1889.046875f) << SimdTargetName(target);
  }
}

// mxfp4, one group of 32: E2M1 codes 2 (1.0), 7 (6.0), 9 (-0.5), 15 (-6.0)
// for k = 0..3, 4 (2.0), 10 (-1.0), 6 (4.0), 13 (-3.0) for k = 16..19 and
// 0 (+0.0) elsewhere. Block 0: P0 = Σ q·2·E2M1 = 127·2 + 64·12 - 62·1 +
// 3·12 = 996 (the kernels use 2·E2M1 + 12 and start from -12·qsum0 =
// -3000); block 1: P1 = -127·4 - 24·2 + 2·8 - 2·6 = -552 (from -12·qsum1
// = 1188). acc = fma(0.125, -552, fma(2, 996, 0)) = 1992 - 69 = 1923,
// halved 961.5; E8M0 scale 2^-2: y = 240.375.
TEST(Int8HandTest, Mxfp4OneGroupByHand) {
  QuantizedMatrix q;
  q.params = QuantParams{QuantMode::kMxfp4, 4, 32};
  q.dtype = DType::kBF16;
  q.n = 1;
  q.k = 32;
  std::vector<uint32_t> c(32, 0u);
  c[0] = 2;
  c[1] = 7;
  c[2] = 9;
  c[3] = 15;
  c[16] = 4;
  c[17] = 10;
  c[18] = 6;
  c[19] = 13;
  q.wq = PackNibbles(c);
  q.scales = {125};  // 2^(125 - 127)
  const PackedMatrix packed = PackedMatrix::Pack(q);
  const std::vector<float> x = HandInput();
  for (SimdTarget target : Targets()) {
    const std::vector<float> y = RunInt8(packed, DType::kF32, x.data(), 1, target);
    EXPECT_EQ(y[0], 240.375f) << SimdTargetName(target);
  }
}

}  // namespace
}  // namespace qlinear
