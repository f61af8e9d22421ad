// MLX's own properties (python/tests/test_quantized.py) plus packing, E4M3
// and validation checks. The bit-exact comparisons live in golden_test.cc.
#include "core/quantize.h"

#include <cmath>
#include <random>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/half.h"
#include "core/reference.h"

namespace qlinear {
namespace {

using ::testing::HasSubstr;

std::vector<uint8_t> RandomWeights(DType dtype, int64_t count, uint64_t seed,
                                   float stddev = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<uint8_t> w(static_cast<size_t>(count) * DTypeSize(dtype));
  for (int64_t i = 0; i < count; ++i) {
    StoreFloat(dtype, w.data(), static_cast<size_t>(i), normal(rng));
  }
  return w;
}

TEST(QuantParamsTest, AcceptsExactlyMlxCombinations) {
  const std::vector<QuantParams> valid = AllQuantParams();
  for (QuantMode mode : {QuantMode::kAffine, QuantMode::kMxfp4,
                         QuantMode::kMxfp8, QuantMode::kNvfp4}) {
    for (int bits = 0; bits <= 9; ++bits) {
      for (int gs : {0, 8, 16, 32, 48, 64, 96, 128, 256}) {
        const QuantParams p{mode, bits, gs};
        const bool want = std::find(valid.begin(), valid.end(), p) != valid.end();
        const absl::Status status = ValidateQuantParams(p);
        EXPECT_EQ(status.ok(), want) << p.ToString() << ": " << status;
        if (!want) {
          EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
          const float w[256] = {};
          auto q = Quantize(p, DType::kF32, w, 1, 256);
          EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument)
              << p.ToString();
        }
      }
    }
  }
}

TEST(QuantParamsTest, ErrorsNameWhatWasExpectedAndWhatCame) {
  EXPECT_THAT(ValidateQuantParams({QuantMode::kAffine, 7, 64}).message(),
              HasSubstr("2, 3, 4, 5, 6 or 8; got 7"));
  EXPECT_THAT(ValidateQuantParams({QuantMode::kAffine, 4, 16}).message(),
              HasSubstr("32, 64 or 128; got 16"));
  EXPECT_THAT(ValidateQuantParams({QuantMode::kNvfp4, 4, 32}).message(),
              HasSubstr("nvfp4 quantization needs group size 16; got 32"));
  EXPECT_THAT(ParseQuantMode("int4").status().message(), HasSubstr("got 'int4'"));
  auto defaults = MakeQuantParams(QuantMode::kMxfp8, std::nullopt, std::nullopt);
  ASSERT_TRUE(defaults.ok());
  EXPECT_EQ(defaults->bits, 8);
  EXPECT_EQ(defaults->group_size, 32);
}

class AllParamsTest : public ::testing::TestWithParam<std::tuple<QuantParams, DType>> {};

// MLX: |w - dequantize(quantize(w))| <= |scale| per element (affine).
TEST_P(AllParamsTest, RoundTripErrorIsBounded) {
  const auto [params, dtype] = GetParam();
  const int64_t n = 6, k = 256;
  const std::vector<uint8_t> w = RandomWeights(dtype, n * k, 42);
  auto q = Quantize(params, dtype, w.data(), n, k);
  ASSERT_TRUE(q.ok()) << q.status();
  std::vector<float> dq(static_cast<size_t>(n * k));
  Dequantize(*q, DType::kF32, dq.data());
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < k; ++c) {
      const size_t i = static_cast<size_t>(r * k + c);
      const float err = std::abs(dq[i] - LoadFloat(dtype, w.data(), i));
      const float s = std::abs(GroupScale(*q, r, c / params.group_size));
      if (params.mode == QuantMode::kAffine) {
        // MLX's property holds exactly in float32; in f16/bf16 the scale and
        // bias are rounded to T after the codes were chosen, which adds up to
        // half an ulp of T to the bias and to each of up to 255 scale steps.
        const float eps = dtype == DType::kBF16 ? 0x1p-8f
                          : dtype == DType::kF16 ? 0x1p-11f : 0.0f;
        const float b = std::abs(GroupBias(*q, r, c / params.group_size));
        EXPECT_LE(err, s * (1.0f + 255.0f * eps) + b * eps)
            << params.ToString() << " at " << r << "," << c;
      } else {
        // MLX rounds the E8M0 exponent to nearest (not down, as OCP does), so
        // |w|/s reaches maxval·√2 and saturates: up to (6√2 - 6)·s = 2.49·s
        // for fp4 (whose top step is 2·s anyway) and (448√2 - 448)·s for fp8.
        // The quotient w/s is rounded to T first (2^-8 relative in bf16).
        const float w_abs = std::abs(LoadFloat(dtype, w.data(), i));
        EXPECT_LE(err, (params.bits == 4 ? 2.5f : 185.6f) * s + w_abs * 0x1p-8f)
            << params.ToString() << " at " << r << "," << c;
      }
    }
  }
  const ErrorReport report = ComputeErrorReport(*q, dtype, w.data());
  EXPECT_GT(report.rms, 0.0);
  EXPECT_LE(report.rms, report.max_abs);
  // mxfp8's saturation (see above) costs it ~7 % on Gaussian weights.
  const double bound = params.mode == QuantMode::kMxfp8 ? 0.1
                       : params.bits >= 8                ? 0.05
                                                         : 0.6;
  EXPECT_LT(report.rel_fro, bound) << params.ToString();
}

// MLX: all-zero weights round-trip to zeros for every bits, group and mode.
TEST_P(AllParamsTest, ZerosRoundTripToZeros) {
  const auto [params, dtype] = GetParam();
  const int64_t n = 3, k = 256;
  const std::vector<uint8_t> w(static_cast<size_t>(n * k) * DTypeSize(dtype), 0);
  auto q = Quantize(params, dtype, w.data(), n, k);
  ASSERT_TRUE(q.ok()) << q.status();
  for (DType out : {dtype, DType::kF32}) {
    std::vector<uint8_t> dq(static_cast<size_t>(n * k) * DTypeSize(out), 0xAB);
    Dequantize(*q, out, dq.data());
    for (size_t i = 0; i < static_cast<size_t>(n * k); ++i) {
      ASSERT_EQ(LoadFloat(out, dq.data(), i), 0.0f) << params.ToString() << " " << i;
    }
  }
  const ErrorReport report = ComputeErrorReport(*q, dtype, w.data());
  EXPECT_EQ(report.max_abs, 0.0);
  EXPECT_EQ(report.rel_fro, 0.0);
}

// The reference forward equals the double-precision product with the
// dequantized float32 weights.
TEST_P(AllParamsTest, ReferenceForwardMatchesDequantizedProduct) {
  const auto [params, dtype] = GetParam();
  const int64_t n = 5, k = 128 * 2, m = 3;
  const std::vector<uint8_t> w = RandomWeights(dtype, n * k, 7);
  auto q = Quantize(params, dtype, w.data(), n, k);
  ASSERT_TRUE(q.ok());
  std::vector<float> dq(static_cast<size_t>(n * k));
  Dequantize(*q, DType::kF32, dq.data());
  const std::vector<uint8_t> x = RandomWeights(DType::kF32, m * k, 9);
  const std::vector<float> bias = {0.5f, -1.0f, 0.0f, 2.0f, 0.25f};
  std::vector<double> y(static_cast<size_t>(m * n));
  ReferenceForwardDouble(*q, DType::kF32, x.data(), m, bias.data(), y.data());
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double want = bias[static_cast<size_t>(j)], mag = 0;
      for (int64_t c = 0; c < k; ++c) {
        const double term = LoadFloat(DType::kF32, x.data(), static_cast<size_t>(i * k + c)) *
                            static_cast<double>(dq[static_cast<size_t>(j * k + c)]);
        want += term;
        mag += std::abs(term);
      }
      // dq rounds scale*q+bias to float32 once; the reference does not.
      EXPECT_NEAR(y[static_cast<size_t>(i * n + j)], want, 1e-6 * mag + 1e-12);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Formats, AllParamsTest,
    ::testing::Combine(::testing::ValuesIn(AllQuantParams()),
                       ::testing::Values(DType::kF32, DType::kF16, DType::kBF16)),
    [](const auto& info) {
      const QuantParams& p = std::get<0>(info.param);
      return std::string(QuantModeName(p.mode)) + "_b" + std::to_string(p.bits) +
             "_g" + std::to_string(p.group_size) + "_" +
             std::string(ShortDTypeName(std::get<1>(info.param)));
    });

TEST(QuantizeTest, RejectsNonFiniteWeightsNamingRowAndColumn) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (float bad : {NAN, INFINITY, -INFINITY}) {
      std::vector<uint8_t> w = RandomWeights(dtype, 8 * 64, 1);
      StoreFloat(dtype, w.data(), 3 * 64 + 17, bad);
      auto q = Quantize({QuantMode::kAffine, 4, 64}, dtype, w.data(), 8, 64);
      EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(q.status().message(), HasSubstr("row 3, column 17"));
    }
  }
  // A float32 value that overflows float16 is caught where it is stored.
  EXPECT_THAT(CheckFinite(DType::kF32, std::vector<float>{1, 2, NAN}.data(), 1, 3, 40)
                  .message(),
              HasSubstr("row 40, column 2"));
}

TEST(QuantizeTest, RejectsBadShapesAndDtypes) {
  const std::vector<float> w(100 * 4, 0.0f);
  auto q = Quantize({QuantMode::kAffine, 4, 64}, DType::kF32, w.data(), 4, 100);
  EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(q.status().message(), HasSubstr("group size 64"));
  EXPECT_THAT(q.status().message(), HasSubstr("K=100"));
  q = Quantize({QuantMode::kAffine, 4, 64}, DType::kF32, w.data(), 0, 64);
  EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
  q = Quantize({QuantMode::kAffine, 4, 64}, DType::kU32, w.data(), 1, 64);
  EXPECT_THAT(q.status().message(), HasSubstr("got U32"));
}

// Packing is one LSB-first bit stream per row, read as little-endian words.
TEST(QuantizeTest, UnpackReadsTheLsbFirstBitStream) {
  std::mt19937 rng(3);
  for (int bits : {2, 3, 4, 5, 6, 8}) {
    const int64_t k = 64;
    std::vector<uint32_t> codes(k);
    std::vector<uint8_t> bytes(static_cast<size_t>(k * bits / 8), 0);
    for (int64_t j = 0; j < k; ++j) {
      codes[static_cast<size_t>(j)] = rng() & ((1u << bits) - 1);
      for (int b = 0; b < bits; ++b) {
        if ((codes[static_cast<size_t>(j)] >> b) & 1u) {
          const int64_t bit = j * bits + b;
          bytes[static_cast<size_t>(bit / 8)] |= static_cast<uint8_t>(1u << (bit % 8));
        }
      }
    }
    std::vector<uint32_t> words(bytes.size() / 4);
    std::memcpy(words.data(), bytes.data(), bytes.size());
    for (int64_t j = 0; j < k; ++j) {
      ASSERT_EQ(UnpackCode(words.data(), bits, j), codes[static_cast<size_t>(j)])
          << "bits " << bits << " element " << j;
    }
  }
}

TEST(QuantizeTest, AffineCodesPackAsMlxDoes) {
  // One group of 32 with min 0 and max 31*0.1: scale -> codes 0..31 at 5 bits.
  std::vector<float> w(32);
  for (int i = 0; i < 32; ++i) w[static_cast<size_t>(i)] = -0.1f * static_cast<float>(i);
  auto q = Quantize({QuantMode::kAffine, 5, 32}, DType::kF32, w.data(), 1, 32);
  ASSERT_TRUE(q.ok());
  ASSERT_EQ(q->wq.size(), 5u);
  for (int i = 0; i < 32; ++i) {
    // |w_min| > |w_max| so the bias is the minimum and codes count up from it.
    EXPECT_EQ(UnpackCode(q->wq.data(), 5, i), static_cast<uint32_t>(31 - i));
  }
}

TEST(Fp8Test, E4M3RoundTripsAndSaturates) {
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7F) == 0x7F) continue;  // never produced
    const float v = Fp8E4M3ToFloat(static_cast<uint8_t>(code));
    EXPECT_EQ(Fp8E4M3FromFloat(v), code) << "code " << code << " value " << v;
  }
  EXPECT_EQ(Fp8E4M3ToFloat(0x7E), 448.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x01), 0x1p-9f);
  EXPECT_EQ(Fp8E4M3FromFloat(1000.0f), 0x7E);
  EXPECT_EQ(Fp8E4M3FromFloat(-1000.0f), 0xFE);
  EXPECT_EQ(Fp8E4M3FromFloat(INFINITY), 0x7E);
  EXPECT_EQ(Fp8E4M3FromFloat(NAN), 0x7E);
  EXPECT_EQ(Fp8E4M3FromFloat(-0.0f), 0x80);
  EXPECT_EQ(Fp8E4M3FromFloat(0x1p-11f), 0x00);  // below half the smallest
}

TEST(ErrorReportTest, MatchesHandComputedValues) {
  // w = [1, 2, 3, 4], dq = [1, 2.5, 3, 3] -> errors 0, .5, 0, -1.
  const std::vector<float> w = {1, 2, 3, 4};
  const std::vector<float> dq = {1, 2.5f, 3, 3};
  ErrorAccumulator acc;
  acc.Add(DType::kF32, w.data(), dq.data(), 2);
  acc.Add(DType::kF32, w.data() + 2, dq.data() + 2, 2);
  const ErrorReport r = acc.Finish();
  EXPECT_DOUBLE_EQ(r.max_abs, 1.0);
  EXPECT_DOUBLE_EQ(r.rms, std::sqrt(1.25 / 4));
  EXPECT_DOUBLE_EQ(r.rel_fro, std::sqrt(1.25 / 30));
}

TEST(ValidateQuantizedValuesTest, RejectsNonFiniteScalesAndNanE8M0) {
  const std::vector<float> w(2 * 64, 0.5f);
  auto q = Quantize({QuantMode::kAffine, 4, 64}, DType::kF32, w.data(), 2, 64);
  ASSERT_TRUE(q.ok());
  EXPECT_TRUE(ValidateQuantizedValues(*q).ok());
  StoreFloat(DType::kF32, q->scales.data(), 1, NAN);
  EXPECT_THAT(ValidateQuantizedValues(*q).message(), HasSubstr("row 1, group 0"));
  auto mx = Quantize({QuantMode::kMxfp4, 4, 32}, DType::kF32, w.data(), 2, 64);
  ASSERT_TRUE(mx.ok());
  EXPECT_TRUE(ValidateQuantizedValues(*mx).ok());
  mx->scales[3] = 0xFF;
  EXPECT_THAT(ValidateQuantizedValues(*mx).message(), HasSubstr("row 1, group 1"));
}

// Issue 14, defect 2: finite weights whose group range overflows the scale
// dtype ((3e38 - -3e38) / 15 is inf in float32) are refused with the same
// message LoadQuantized gives, naming row and group; fp modes' scales are
// codes that stay finite for any finite input.
TEST(QuantizeTest, RefusesAScaleThatIsNotFiniteInTheScaleDtype) {
  std::vector<float> w(8 * 64, 0.01f);
  w[2 * 64 + 0] = 3e38f;
  w[2 * 64 + 1] = -3e38f;
  auto q = Quantize({QuantMode::kAffine, 4, 64}, DType::kF32, w.data(), 8, 64);
  EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(q.status().message(), HasSubstr("scales and biases must be finite"));
  EXPECT_THAT(q.status().message(), HasSubstr("at row 2, group 0"));

  std::vector<uint8_t> bf(8 * 64 * 2);
  for (size_t i = 0; i < 8 * 64; ++i) StoreFloat(DType::kBF16, bf.data(), i, w[i]);
  EXPECT_EQ(Quantize({QuantMode::kAffine, 8, 64}, DType::kBF16, bf.data(), 8, 64).status().code(),
            absl::StatusCode::kInvalidArgument);

  for (QuantParams p : {QuantParams{QuantMode::kMxfp4, 4, 32}, QuantParams{QuantMode::kMxfp8, 8, 32},
                        QuantParams{QuantMode::kNvfp4, 4, 16}}) {
    auto fp = Quantize(p, DType::kF32, w.data(), 8, 64);
    ASSERT_TRUE(fp.ok()) << p.ToString() << ": " << fp.status();
    EXPECT_TRUE(ValidateQuantizedValues(*fp).ok()) << p.ToString();
    for (int64_t g = 0; g < fp->groups(); ++g) {
      EXPECT_TRUE(std::isfinite(GroupScale(*fp, 2, g))) << p.ToString() << " group " << g;
    }
  }
  // Halving the range keeps it finite: still quantized, as MLX does.
  w[2 * 64 + 0] = 1e38f;
  w[2 * 64 + 1] = -1e38f;
  EXPECT_TRUE(Quantize({QuantMode::kAffine, 4, 64}, DType::kF32, w.data(), 8, 64).ok());
}

}  // namespace
}  // namespace qlinear
