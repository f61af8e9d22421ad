// core/precision.h: the mode names, the --precisions list and the mode that
// really runs for each quantization mode.
#include "core/precision.h"

#include <gtest/gtest.h>

#include <string>

#include "absl/status/status.h"
#include "core/quant_params.h"

namespace qlinear {
namespace {

constexpr Precision kAll[] = {Precision::kExact, Precision::kInt8,
                              Precision::kBf16};

TEST(PrecisionTest, NamesRoundTrip) {
  EXPECT_EQ(PrecisionName(Precision::kExact), "exact");
  EXPECT_EQ(PrecisionName(Precision::kInt8), "int8");
  EXPECT_EQ(PrecisionName(Precision::kBf16), "bf16");
  for (Precision p : kAll) {
    auto parsed = ParsePrecision(PrecisionName(p));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, p);
  }
}

TEST(PrecisionTest, ParseRejectsOtherSpellings) {
  for (const char* bad :
       {"", "EXACT", "Int8", "fp32", "bf16 ", " int8", "int4", "bfloat16"}) {
    auto parsed = ParsePrecision(bad);
    ASSERT_FALSE(parsed.ok()) << "'" << bad << "'";
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(parsed.status().message().find("exact, int8 or bf16"),
              std::string::npos)
        << parsed.status();
  }
}

TEST(PrecisionTest, AllHoldsEveryMode) {
  const PrecisionSet all = PrecisionSet::All();
  for (Precision p : kAll) EXPECT_TRUE(all.contains(p)) << PrecisionName(p);
  EXPECT_EQ(all.ToString(), "exact,int8,bf16");
}

TEST(PrecisionTest, SetParsesListsInAnyOrder) {
  auto one = PrecisionSet::Parse("int8");
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_FALSE(one->contains(Precision::kExact));
  EXPECT_TRUE(one->contains(Precision::kInt8));
  EXPECT_FALSE(one->contains(Precision::kBf16));
  EXPECT_EQ(one->ToString(), "int8");

  // ToString lists in enum order whatever order the list had.
  auto two = PrecisionSet::Parse("bf16,exact");
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_TRUE(two->contains(Precision::kExact));
  EXPECT_FALSE(two->contains(Precision::kInt8));
  EXPECT_TRUE(two->contains(Precision::kBf16));
  EXPECT_EQ(two->ToString(), "exact,bf16");

  auto three = PrecisionSet::Parse("bf16,int8,exact");
  ASSERT_TRUE(three.ok()) << three.status();
  EXPECT_EQ(three->ToString(), "exact,int8,bf16");
}

TEST(PrecisionTest, SetRejectsEmptyListAndEmptyEntries) {
  for (const char* bad : {"", ",", "exact,", ",int8", "exact,,bf16"}) {
    auto set = PrecisionSet::Parse(bad);
    ASSERT_FALSE(set.ok()) << "'" << bad << "'";
    EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(set.status().message().find("comma-separated list"),
              std::string::npos)
        << set.status();
  }
}

TEST(PrecisionTest, SetRejectsRepeats) {
  for (const char* bad : {"exact,exact", "int8,bf16,int8", "bf16,bf16"}) {
    auto set = PrecisionSet::Parse(bad);
    ASSERT_FALSE(set.ok()) << bad;
    EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(set.status().message().find("twice"), std::string::npos)
        << set.status();
  }
}

TEST(PrecisionTest, SetRejectsUnknownNamesNamingThem) {
  auto set = PrecisionSet::Parse("exact,fp16");
  ASSERT_FALSE(set.ok());
  EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(set.status().message().find("'fp16'"), std::string::npos)
      << set.status();
  EXPECT_NE(set.status().message().find("exact,fp16"), std::string::npos)
      << set.status();
  EXPECT_FALSE(PrecisionSet::Parse("EXACT").ok());
  EXPECT_FALSE(PrecisionSet::Parse("exact, int8").ok());  // no spaces
}

TEST(PrecisionTest, EffectivePrecisionOnlyMovesInt8OnMxfp8) {
  for (QuantMode mode : {QuantMode::kAffine, QuantMode::kMxfp4,
                         QuantMode::kMxfp8, QuantMode::kNvfp4}) {
    QuantParams params;
    params.mode = mode;
    for (Precision p : kAll) {
      const Precision want = mode == QuantMode::kMxfp8 && p == Precision::kInt8
                                 ? Precision::kBf16
                                 : p;
      EXPECT_EQ(EffectivePrecision(params, p), want)
          << QuantModeName(mode) << " " << PrecisionName(p);
    }
  }
  // Every affine width keeps INT8.
  for (int bits : {2, 3, 4, 5, 6, 8}) {
    QuantParams params;
    params.bits = bits;
    EXPECT_EQ(EffectivePrecision(params, Precision::kInt8), Precision::kInt8)
        << bits;
  }
}

}  // namespace
}  // namespace qlinear
