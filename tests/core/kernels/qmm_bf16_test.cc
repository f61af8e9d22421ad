// The BF16 precision (kernel_args.h): every SIMD kernel bit for bit against
// the portable one (the definition), on every target this machine runs, for
// every format; batch, thread and path invariance; edge inputs; a case
// computed by hand; and, where the CPU has AVX512-BF16, vdpbf16ps itself
// against the scalar definition.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "core/half.h"
#include "core/kernels/qmm.h"
#include "core/reference.h"
#include "tbb/task_arena.h"
#include "tests/core/kernels/kernel_test_util.h"

namespace qlinear {
namespace {

std::string Name(const QuantParams& p) {
  return std::string(QuantModeName(p.mode)) + "_b" + std::to_string(p.bits) + "_g" +
         std::to_string(p.group_size);
}

MatmulOptions Bf16On(SimdTarget target, tbb::task_arena* arena = nullptr) {
  MatmulOptions o;
  o.target = target;
  o.arena = arena;
  o.precision = Precision::kBf16;
  return o;
}

std::vector<float> Matmul(const PackedMatrix& w, DType xd, const void* x, int64_t rows,
                       const MatmulOptions& o, const float* bias = nullptr) {
  std::vector<float> y(static_cast<size_t>(rows * w.n()));
  QuantizedMatmul(w, xd, x, rows, bias, DType::kF32, y.data(), o);
  return y;
}

// Bits equal, element by element; the first difference reported.
::testing::AssertionResult SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "sizes differ";
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], 4) != 0) {
      return ::testing::AssertionFailure()
             << "element " << i << ": " << std::hexfloat << a[i] << " vs " << b[i];
    }
  }
  return ::testing::AssertionSuccess();
}

class Bf16FormatTest : public ::testing::TestWithParam<QuantParams> {};

// Every target gives the portable kernel's bits, for every x dtype, every
// row count 1..20 (each count its own call, against the portable result of
// all 20 rows), K one group and several, N not a multiple of 16 or 64, and
// scales stored in each width. The portable result is also within bf16's
// error of the double-precision reference.
TEST_P(Bf16FormatTest, EveryTargetMatchesPortable) {
  const QuantParams p = GetParam();
  const int64_t rows = 20;
  for (auto [k, n, w_dtype] : {std::tuple<int64_t, int64_t, DType>{p.group_size, 37, DType::kF16},
                               {p.group_size * 5, 100, DType::kF16},
                               {p.group_size * 3, 21, DType::kBF16},
                               {p.group_size * 2, 130, DType::kF32}}) {
    const QuantizedMatrix q = MakeLayer(p, n, k, 31 + k + n, w_dtype);
    const PackedMatrix packed = PackedMatrix::Pack(q);
    std::vector<float> dq(static_cast<size_t>(n * k));
    Dequantize(q, DType::kF32, dq.data());
    for (DType xd : {DType::kF32, DType::kF16, DType::kBF16}) {
      const std::vector<uint8_t> x = Random(xd, rows * k, 7 + k);
      const std::vector<float> want = Matmul(packed, xd, x.data(), rows, Bf16On(SimdTarget::kPortable));
      // Sanity of the definition itself: bf16 inputs (relative error
      // 2^-9) and float32 sums.
      std::vector<double> ref(static_cast<size_t>(rows * n));
      ReferenceForwardDouble(q, xd, x.data(), rows, nullptr, ref.data());
      for (int64_t m = 0; m < rows; ++m) {
        for (int64_t j = 0; j < n; ++j) {
          double mag = 0;
          for (int64_t c = 0; c < k; ++c) {
            mag += std::abs(static_cast<double>(LoadFloat(xd, x.data(), static_cast<size_t>(m * k + c))) *
                            dq[static_cast<size_t>(j * k + c)]);
          }
          const size_t o = static_cast<size_t>(m * n + j);
          ASSERT_LE(std::abs(want[o] - ref[o]), 0x1p-8 * mag + 1e-30)
              << p.ToString() << " K=" << k << " N=" << n << " at " << m << "," << j;
        }
      }
      for (SimdTarget target : Targets()) {
        for (int64_t m = 1; m <= rows; ++m) {
          std::vector<float> y = Matmul(packed, xd, x.data(), m, Bf16On(target));
          const std::vector<float> head(want.begin(), want.begin() + m * n);
          ASSERT_TRUE(SameBits(y, head))
              << p.ToString() << " K=" << k << " N=" << n << " weights " << ShortDTypeName(w_dtype)
              << " x " << ShortDTypeName(xd) << " on " << SimdTargetName(target) << " rows " << m;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllFormats, Bf16FormatTest, ::testing::ValuesIn(AllQuantParams()),
                         [](const auto& info) { return Name(info.param); });

// A row's bits never depend on its batch (1, 2, 7, 64 or 256 rows a call),
// the thread count (1 or 2) or the target.
TEST(Bf16InvarianceTest, RowsAloneEqualRowsInAnyBatch) {
  const int64_t n = 130, k = 512, total = 256;
  for (const QuantParams& p : {QuantParams{QuantMode::kAffine, 4, 64},
                               QuantParams{QuantMode::kAffine, 2, 32},
                               QuantParams{QuantMode::kAffine, 3, 32},
                               QuantParams{QuantMode::kAffine, 8, 128},
                               DefaultQuantParams(QuantMode::kMxfp4),
                               DefaultQuantParams(QuantMode::kMxfp8),
                               DefaultQuantParams(QuantMode::kNvfp4)}) {
    const PackedMatrix packed = PackedMatrix::Pack(MakeLayer(p, n, k, 3));
    const std::vector<uint8_t> x = Random(DType::kF32, total * k, 8);
    const float* xf = reinterpret_cast<const float*>(x.data());
    tbb::task_arena one(1), two(2);
    std::vector<float> alone(static_cast<size_t>(total * n));
    for (int64_t r = 0; r < total; ++r) {
      QuantizedMatmul(packed, DType::kF32, xf + r * k, 1, nullptr, DType::kF32,
                      alone.data() + r * n, Bf16On(SimdTarget::kPortable, &one));
    }
    for (SimdTarget target : Targets()) {
      for (tbb::task_arena* arena : {&one, &two}) {
        for (int64_t batch : {1, 2, 7, 64, 256}) {
          std::vector<float> y(static_cast<size_t>(total * n));
          for (int64_t r = 0; r < total; r += batch) {
            const int64_t rows = std::min(batch, total - r);
            QuantizedMatmul(packed, DType::kF32, xf + r * k, rows, nullptr, DType::kF32,
                            y.data() + r * n, Bf16On(target, arena));
          }
          ASSERT_TRUE(SameBits(y, alone))
              << p.ToString() << " " << SimdTargetName(target) << " threads "
              << arena->max_concurrency() << " batch " << batch;
        }
      }
    }
  }
}

// Inputs at the edges: float32 and bfloat16 subnormals (flushed), inputs
// whose products with the codes fall near 2^-126 (so that sums are
// flushed, and the AVX2 kernel takes its slow path), huge values whose sums
// overflow, infinities and NaN. Every target gives the portable bits.
TEST(Bf16EdgeTest, EdgeInputsMatchPortable) {
  const int64_t n = 80, k = 256, rows = 9;
  std::mt19937_64 rng(99);
  std::vector<float> x(static_cast<size_t>(rows * k));
  auto pick = [&](int row) -> float {
    const float sign = (rng() & 1) ? -1.0f : 1.0f;
    const int u = static_cast<int>(rng() % 16);
    switch (row) {
      case 0:  // subnormal float32, and values that round to subnormal bfloat16
        return u < 6 ? sign * 0x1p-140f * static_cast<float>(rng() % 1000)
                     : sign * std::ldexp(1.0f + static_cast<float>(rng() % 256) / 256.0f, -127);
      case 1:  // products near 2^-126: x ~ 2^-133 .. 2^-120
      case 2:
        return sign * std::ldexp(1.0f + static_cast<float>(rng() % 128) / 128.0f,
                                 -133 + static_cast<int>(rng() % 14));
      case 3:  // near 2^-126 in groups that mostly cancel
        return (u < 8 ? 1.0f : -1.0f) * 0x1p-126f * (1.0f + static_cast<float>(u % 4) / 4.0f);
      case 4:  // huge: bf16 rounding reaches Inf, sums overflow
        return sign * std::ldexp(1.0f + static_cast<float>(rng() % 256) / 256.0f,
                                 120 + static_cast<int>(rng() % 8));
      case 5:  // one infinity among normal values
        return u == 0 ? std::numeric_limits<float>::infinity() : sign;
      case 6:  // a NaN among normal values
        return u == 0 ? std::numeric_limits<float>::quiet_NaN() : sign;
      case 7:  // +Inf and -Inf: Inf - Inf and Inf * 0 give NaN
        return u < 2 ? sign * std::numeric_limits<float>::infinity() : 0.5f * sign;
      default:  // exact zeros of both signs and normal values
        return u < 8 ? sign * 0.0f : sign * static_cast<float>(u);
    }
  };
  for (int r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < k; ++i) x[static_cast<size_t>(r * k + i)] = pick(r);
  }
  for (const QuantParams& p : AllQuantParams()) {
    const PackedMatrix packed = PackedMatrix::Pack(MakeLayer(p, n, k, 17));
    const std::vector<float> want = Matmul(packed, DType::kF32, x.data(), rows, Bf16On(SimdTarget::kPortable));
    for (SimdTarget target : Targets()) {
      // All rows in one call, and each row alone.
      ASSERT_TRUE(SameBits(Matmul(packed, DType::kF32, x.data(), rows, Bf16On(target)), want))
          << p.ToString() << " " << SimdTargetName(target);
      for (int r = 0; r < rows; ++r) {
        const std::vector<float> head(want.begin() + r * n, want.begin() + (r + 1) * n);
        ASSERT_TRUE(SameBits(Matmul(packed, DType::kF32, x.data() + r * k, 1, Bf16On(target)), head))
            << p.ToString() << " " << SimdTargetName(target) << " row " << r;
      }
    }
  }
}

// Subnormal bfloat16 inputs are zeros of their sign: a row of them gives
// what zeros give (for fp formats, which have no bias term over the sums).
TEST(Bf16EdgeTest, SubnormalInputsAreZeros) {
  const int64_t n = 64, k = 128;
  for (QuantMode mode : {QuantMode::kMxfp4, QuantMode::kMxfp8, QuantMode::kNvfp4}) {
    const PackedMatrix packed = PackedMatrix::Pack(MakeLayer(DefaultQuantParams(mode), n, k, 5));
    std::vector<float> tiny(static_cast<size_t>(k)), zeros(static_cast<size_t>(k));
    for (int64_t i = 0; i < k; ++i) {
      const float sign = i % 3 == 0 ? -1.0f : 1.0f;
      tiny[static_cast<size_t>(i)] = sign * 0x1p-127f * (1.0f + static_cast<float>(i % 7) / 8.0f);
      zeros[static_cast<size_t>(i)] = sign * 0.0f;
    }
    for (SimdTarget target : Targets()) {
      const std::vector<float> a = Matmul(packed, DType::kF32, tiny.data(), 1, Bf16On(target));
      const std::vector<float> b = Matmul(packed, DType::kF32, zeros.data(), 1, Bf16On(target));
      EXPECT_TRUE(SameBits(a, b)) << QuantModeName(mode) << " " << SimdTargetName(target);
    }
  }
}

// mxfp8 has no INT8 form: INT8 asked of it runs BF16, the same bits.
TEST(Bf16PrecisionTest, Mxfp8Int8IsBf16) {
  const QuantParams p = DefaultQuantParams(QuantMode::kMxfp8);
  const int64_t n = 100, k = 256, rows = 11;
  const PackedMatrix packed = PackedMatrix::Pack(MakeLayer(p, n, k, 41));
  const std::vector<uint8_t> x = Random(DType::kF32, rows * k, 42);
  for (SimdTarget target : Targets()) {
    MatmulOptions int8 = Bf16On(target);
    int8.precision = Precision::kInt8;
    EXPECT_TRUE(SameBits(Matmul(packed, DType::kF32, x.data(), rows, int8),
                         Matmul(packed, DType::kF32, x.data(), rows, Bf16On(target))))
        << SimdTargetName(target);
  }
}

// Three outputs of one 4-bit affine group of 32, computed by hand from
// kernel_args.h: pairs (code i, code i+4) of each word, hi first; inputs
// rounded to bfloat16 (nearest even) and subnormal ones zero.
TEST(Bf16PrecisionTest, HandComputedCase) {
  const QuantParams p{QuantMode::kAffine, 4, 32};
  const int64_t n = 3, k = 32;
  std::vector<uint32_t> codes(static_cast<size_t>(n * k), 0);
  for (int64_t i = 0; i < k; ++i) codes[static_cast<size_t>(i)] = 1;  // output 0: all ones
  codes[static_cast<size_t>(k + 8)] = 5;                             // output 1
  codes[static_cast<size_t>(k + 12)] = 2;
  codes[static_cast<size_t>(k + 31)] = 7;
  codes[static_cast<size_t>(2 * k + 20)] = 15;  // output 2
  QuantizedMatrix q;
  q.params = p;
  q.dtype = DType::kF32;
  q.n = n;
  q.k = k;
  q.wq.assign(static_cast<size_t>(n * k / 8), 0u);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t i = 0; i < k; ++i) {
      q.wq[static_cast<size_t>(r * 4 + i / 8)] |= codes[static_cast<size_t>(r * k + i)] << (4 * (i % 8));
    }
  }
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t i = 0; i < k; ++i) {
      ASSERT_EQ(UnpackCode(q.wq.data() + r * 4, 4, i), codes[static_cast<size_t>(r * k + i)]);
    }
  }
  const float scales[3] = {1.0f, 1.0f, 1.0f};
  const float biases[3] = {0.5f, 0.0f, 0.0f};
  q.scales.resize(12);
  q.biases.resize(12);
  std::memcpy(q.scales.data(), scales, 12);
  std::memcpy(q.biases.data(), biases, 12);
  std::vector<float> x(static_cast<size_t>(k), 0.0f);
  x[1] = 1.0f;
  x[4] = 1.0f;
  x[5] = 0x1p24f;
  x[8] = 1.0f + 0x1p-8f;       // bf16: a tie, to 1
  x[12] = 1.0f + 3 * 0x1p-8f;  // bf16: a tie, to 1 + 2^-6
  x[20] = 0x1p-127f;           // bf16 subnormal: zero
  x[31] = -0.5f;
  // Output 0 (all codes 1): pair (0,4): 1 (x4 first), + 0; pair (1,5):
  // 1 + 2^24 -> 2^24 (a tie, to even), + 1 -> 2^24; word 1 pair (8,12):
  // + 1.015625 -> 2^24 + 2, + 1 -> 2^24 + 4 (a tie, to even); word 2: + 0
  // (x20 flushed); word 3 pair (27,31): - 0.5 -> 2^24 + 4. Then
  // y = 1·acc + 0.5·xsum, xsum = float(Σ bf16 x) = float(2^24 + 3.515625 +
  // 2^-127) = 2^24 + 4: y = 1.5·(2^24 + 4) = 25165830.
  // Output 1: 1.015625·2 + 1·5 - 0.5·7 = 3.53125. Output 2: x20's code 15
  // meets a flushed input: +0. (In k order, as EXACT sums, output 0's acc
  // would be 2^24 + 6.)
  const PackedMatrix packed = PackedMatrix::Pack(q);
  for (SimdTarget target : Targets()) {
    const std::vector<float> y = Matmul(packed, DType::kF32, x.data(), 1, Bf16On(target));
    EXPECT_EQ(y[0], 25165830.0f) << SimdTargetName(target);
    EXPECT_EQ(y[1], 3.53125f) << SimdTargetName(target);
    EXPECT_EQ(y[2], 0.0f) << SimdTargetName(target);
    EXPECT_FALSE(std::signbit(y[2])) << SimdTargetName(target);
    MatmulOptions exact = Bf16On(target);
    exact.precision = Precision::kExact;
    EXPECT_NE(Matmul(packed, DType::kF32, x.data(), 1, exact)[0], y[0]) << SimdTargetName(target);
  }
}

// PrepareBf16 (which every target shares) against its definition:
// FloatToBF16Bits, a subnormal result zero of its sign, word j's pair i
// (codes i and i + cpl/2) at j*cpl/2 + i. Values of every exponent, ties,
// subnormals, values that round up to 2^-126 or to Inf, Inf, NaN.
TEST(Bf16PrepareTest, MatchesTheDefinition) {
  std::mt19937_64 rng(5);
  const int64_t rows = 3, k = 1024;
  std::vector<float> x(static_cast<size_t>(rows * k));
  for (float& v : x) {
    uint32_t u = static_cast<uint32_t>(rng());
    switch (rng() % 4) {
      case 0:
        u &= 0x807FFFFFu;  // exponent 0: zeros and subnormals, and
        if (rng() % 2) u |= 0x007F8000u;  // some that round up to 2^-126
        break;
      case 1:
        u = (u & 0xFFFF0000u) | 0x8000u;  // a tie
        break;
      case 2:
        if (rng() % 4 == 0) u = (u & 0x80000000u) | 0x7F800000u | (rng() % 2 ? 0x400000u : 0u);
        break;
      default:
        break;
    }
    std::memcpy(&v, &u, 4);
  }
  for (int lane_bits : {2, 4, 8}) {
    const int cpl = 32 / lane_bits;
    std::vector<uint32_t> got(static_cast<size_t>(rows * k / 2));
    kernels::PrepareBf16(x.data(), rows, k, lane_bits, got.data());
    for (int64_t m = 0; m < rows; ++m) {
      for (int64_t c = 0; c < k; ++c) {
        uint32_t want = FloatToBF16Bits(x[static_cast<size_t>(m * k + c)]);
        if ((want & 0x7F80u) == 0) want &= 0x8000u;
        const int64_t j = c / cpl, i = c % cpl;
        const uint32_t pair = got[static_cast<size_t>(m * k / 2 + j * cpl / 2 + i % (cpl / 2))];
        const uint32_t half = i < cpl / 2 ? pair & 0xFFFFu : pair >> 16;
        ASSERT_EQ(half, want) << "lane_bits " << lane_bits << " row " << m << " k " << c
                              << std::hexfloat << " x " << x[static_cast<size_t>(m * k + c)];
      }
    }
  }
}

// --- vdpbf16ps itself -----------------------------------------------------

float Bf16Value(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float v;
  std::memcpy(&v, &u, 4);
  return v;
}

float Flush(float v) {
  return std::fabs(v) < std::numeric_limits<float>::min() ? std::copysign(0.0f, v) : v;
}

// kernel_args.h's step: fma rounded (on float32's grid, subnormals
// included), then a subnormal result zero of its sign; subnormal operands
// zero too.
float DefinitionStep(float x, float w, float acc) {
  return Flush(std::fma(Flush(x), Flush(w), Flush(acc)));
}

// The step as x86's flush-to-zero has it: rounded to 24 bits as if the
// exponent were unbounded, then a result below 2^-126 zero of its sign.
// The two differ only when fma gives ±2^-126 from an exact value in
// [2^-126 - 2^-150, 2^-126 - 2^-151) (in magnitude), which the step scaled
// by 2^24 (exact: then |x·w| and |acc| are below 2^63) tells apart. That
// exact value is not a multiple of 2^-149, so it cannot occur in the
// kernels, whose products are (|x| >= 2^-126 with 8 significant bits, codes
// multiples of 2^-9).
float FtzStep(float x, float w, float acc) {
  x = Flush(x);
  w = Flush(w);
  acc = Flush(acc);
  const float r = std::fma(x, w, acc);
  const float m = std::fabs(r);
  if (m < 0x1p-126f) return std::copysign(0.0f, r);
  if (m == 0x1p-126f && x != 0.0f && w != 0.0f) {
    const bool scale_x = std::fabs(x) <= 0x1p100f;
    const float s =
        std::fma(scale_x ? x * 0x1p24f : x, scale_x ? w : w * 0x1p24f, acc * 0x1p24f);
    if (std::fabs(s) < 0x1p-102f) return std::copysign(0.0f, s);
  }
  return r;
}

__attribute__((target("avx512f,avx512bf16"))) void Dpbf16(const float* acc, const uint16_t* a,
                                                          const uint16_t* b, float* out) {
  const __m512 r = _mm512_dpbf16_ps(_mm512_loadu_ps(acc), (__m512bh)_mm512_loadu_si512(a),
                                    (__m512bh)_mm512_loadu_si512(b));
  _mm512_storeu_ps(out, r);
}

uint16_t Bf16Bits(uint32_t sign, uint32_t exponent, uint32_t mantissa) {
  return static_cast<uint16_t>(sign << 15 | (exponent & 0xFF) << 7 | (mantissa & 0x7F));
}

uint32_t Bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return u;
}

// Both NaN, or the same bits.
bool Same(float a, float b) { return (std::isnan(a) && std::isnan(b)) || Bits(a) == Bits(b); }

// Random lanes built to reach the corners: tiny and subnormal operands
// (products in the subnormal range), accumulators near ±2^-126 and ones
// that cancel a product exactly (zeros of either sign), Inf and NaN.
struct LaneGen {
  std::mt19937_64 rng{12345};
  uint32_t U(uint32_t n) { return static_cast<uint32_t>(rng() % n); }
  uint16_t Input(bool codes_only) {
    if (codes_only) {  // a value the kernels multiply: a code's value
      switch (U(3)) {
        case 0:
          return static_cast<uint16_t>(Bits(static_cast<float>(U(256))) >> 16);
        case 1: {
          constexpr float kE2m1[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
          return static_cast<uint16_t>(Bits((U(2) ? -1.0f : 1.0f) * kE2m1[U(8)]) >> 16);
        }
        default: {  // E4M3, subnormals included
          const uint32_t c = U(256);
          const float mag =
              (c & 0x78) == 0 ? static_cast<float>(c & 7) * 0x1p-9f
                              : std::ldexp(1.0f + static_cast<float>(c & 7) / 8.0f,
                                           static_cast<int>((c >> 3) & 15) - 7);
          return static_cast<uint16_t>(Bits((c & 0x80) ? -mag : mag) >> 16);
        }
      }
    }
    switch (U(8)) {
      case 0:
        return Bf16Bits(U(2), 1 + U(254), U(128));  // any normal
      case 1:
        return Bf16Bits(U(2), 0, U(128));  // zero or subnormal
      case 2:
        return Bf16Bits(U(2), 50 + U(30), U(128));  // ~2^-77 .. 2^-48
      case 3:
        return U(16) == 0 ? Bf16Bits(U(2), 255, U(2) ? 0 : 0x40) : Bf16Bits(U(2), 127, U(128));
      default:
        return Bf16Bits(U(2), 117 + U(20), U(128));  // ~2^-10 .. 2^10
    }
  }
  // The kernels' x: a prepared input (never subnormal), mostly small.
  uint16_t PreparedInput() {
    switch (U(4)) {
      case 0:
        return Bf16Bits(U(2), 1 + U(20), U(128));  // 2^-126 .. 2^-107
      case 1:
        return U(8) == 0 ? Bf16Bits(U(2), 0, 0) : Bf16Bits(U(2), 1 + U(254), U(128));
      default:
        return Bf16Bits(U(2), 117 + U(20), U(128));
    }
  }
  float Acc(float p_hi, bool normal_only) {
    switch (U(8)) {
      case 0:
        return U(2) ? 0.0f : -0.0f;
      case 1:  // near ±2^-126, both sides
        return (U(2) ? -1.0f : 1.0f) *
               static_cast<float>((1 << 23) + static_cast<int>(U(64)) - 32) * 0x1p-149f;
      case 2:
        return -p_hi;  // cancels the first product exactly
      case 3:
        return -p_hi + (static_cast<float>(U(64)) - 32.0f) * 0x1p-149f;
      case 4:
        return static_cast<float>(static_cast<int>(U(1000)) - 500) * 0x1p-10f;
      case 5:
        return normal_only ? 0x1p-126f : static_cast<float>(U(1 << 23)) * 0x1p-149f;  // subnormal
      default:
        return std::ldexp(static_cast<float>(U(1 << 24)) * 0x1p-24f, -130 + static_cast<int>(U(20)));
    }
  }
};

// Counts lanes where vdpbf16ps and `model` differ, over `iterations` x 16
// lanes; codes_only restricts the operands to what the kernels feed it.
template <typename Model>
int64_t Mismatches(int iterations, bool codes_only, Model model, std::string* first) {
  LaneGen gen;
  int64_t bad = 0;
  for (int it = 0; it < iterations; ++it) {
    uint16_t a[32], b[32];
    float acc[16], out[16];
    for (int i = 0; i < 32; ++i) {
      a[i] = codes_only ? gen.PreparedInput() : gen.Input(false);
      b[i] = gen.Input(codes_only);
    }
    for (int i = 0; i < 16; ++i) {
      float c = gen.Acc(Bf16Value(a[2 * i + 1]) * Bf16Value(b[2 * i + 1]), codes_only);
      if (codes_only) c = Flush(c);  // a previous step's result
      acc[i] = c;
    }
    Dpbf16(acc, a, b, out);
    for (int i = 0; i < 16; ++i) {
      const float hi = model(Bf16Value(a[2 * i + 1]), Bf16Value(b[2 * i + 1]), acc[i]);
      const float want = model(Bf16Value(a[2 * i]), Bf16Value(b[2 * i]), hi);
      if (!Same(want, out[i])) {
        if (bad == 0 && first != nullptr) {
          char buf[256];
          std::snprintf(buf, sizeof buf, "acc %a, hi %a*%a, lo %a*%a: model %a, vdpbf16ps %a",
                        acc[i], Bf16Value(a[2 * i + 1]), Bf16Value(b[2 * i + 1]),
                        Bf16Value(a[2 * i]), Bf16Value(b[2 * i]), want, out[i]);
          *first = buf;
        }
        ++bad;
      }
    }
  }
  return bad;
}

// What the kernels rely on: on their operands (prepared inputs times code
// values, accumulators that are earlier results) vdpbf16ps is exactly
// kernel_args.h's two steps, hi first. 4M lanes.
TEST(Bf16InstructionTest, VdpbfEqualsTheDefinitionOnKernelOperands) {
  if (!CpuHasAvx512Bf16()) GTEST_SKIP() << "no AVX512-BF16 here";
  std::string first;
  EXPECT_EQ(Mismatches(250000, true, DefinitionStep, &first), 0) << first;
}

// On any operands vdpbf16ps is x86 flush-to-zero arithmetic: subnormal
// operands are zero, the result is rounded as if the exponent were
// unbounded and zero of its sign when below 2^-126. 4M lanes, the fixed
// corner cases first. (kernel_args.h's step, which rounds subnormals
// first, differs on some lanes here: see FtzStep.)
TEST(Bf16InstructionTest, VdpbfIsFlushToZeroArithmetic) {
  if (!CpuHasAvx512Bf16()) GTEST_SKIP() << "no AVX512-BF16 here";
  // acc, x_hi, w_hi, x_lo, w_lo; and the expected result.
  struct Case {
    float acc, xh, wh, xl, wl, want;
  };
  const Case cases[] = {
      {0x1p-126f, -0x1p-76f, 0x1p-74f, -0.0f, 1.0f, 0.0f},             // exact 2^-126 - 2^-150
      {0x1p-126f, -0x1p-77f, 0x1p-74f, -0.0f, 1.0f, 0x1p-126f},        // 2^-126 - 2^-151: up
      {-0x1p-126f, 0x1.6p-77f, 0x1p-74f, -0.0f, 1.0f, -0.0f},          // -(2^-126 - 0.69·2^-150)
      {0x1.8p-126f, -0x1p-126f, 1.0f, -0.0f, 1.0f, 0.0f},              // to 2^-127: flushed
      {-0x1.8p-126f, 0x1p-126f, 1.0f, -0.0f, 1.0f, -0.0f},             // sign kept
      {0.0f, 0x1p-63f, 0x1p-63f, 0.0f, 0.0f, 0x1p-126f},               // product 2^-126 kept
      {0.0f, 0x1p-64f, 0x1p-63f, 0.0f, 0.0f, 0.0f},                    // product 2^-127 flushed
      {1.0f, -1.0f, 1.0f, 0.0f, 0.0f, 0.0f},                           // cancellation: +0
      {-0.0f, -0.0f, 1.0f, -0.0f, 1.0f, -0.0f},                        // -0 + -0 + -0
      {0x1p-130f, 0.0f, 0.0f, -0.0f, 1.0f, 0.0f},                      // subnormal acc is zero
      {0.0f, 0x1p-130f, 0x1p100f, 0.0f, 0.0f, 0.0f},                   // subnormal operand is zero
      {0x1p127f, 0x1p100f, 0x1p100f, 0.0f, 0.0f, std::numeric_limits<float>::infinity()},
  };
  for (const Case& c : cases) {
    float acc[16] = {c.acc}, out[16];
    uint16_t a[32] = {}, b[32] = {};
    a[1] = static_cast<uint16_t>(Bits(c.xh) >> 16);
    b[1] = static_cast<uint16_t>(Bits(c.wh) >> 16);
    a[0] = static_cast<uint16_t>(Bits(c.xl) >> 16);
    b[0] = static_cast<uint16_t>(Bits(c.wl) >> 16);
    Dpbf16(acc, a, b, out);
    EXPECT_EQ(Bits(out[0]), Bits(c.want)) << std::hexfloat << "acc " << c.acc << " hi " << c.xh
                                          << "*" << c.wh << " lo " << c.xl << "*" << c.wl
                                          << ": " << out[0];
    EXPECT_EQ(Bits(FtzStep(c.xl, c.wl, FtzStep(c.xh, c.wh, c.acc))), Bits(c.want))
        << std::hexfloat << "the model, acc " << c.acc;
  }
  std::string first;
  EXPECT_EQ(Mismatches(250000, false, FtzStep, &first), 0) << first;
  // For the record: how often these lanes reach the band where rounding
  // subnormals first differs (none of them a kernel's operands).
  std::string band;
  const int64_t differ = Mismatches(250000, false, DefinitionStep, &band);
  std::printf("kernel_args.h's step differs from vdpbf16ps on %lld of 4000000 general lanes%s%s\n",
              static_cast<long long>(differ), differ > 0 ? "; first: " : "", band.c_str());
}

}  // namespace
}  // namespace qlinear
