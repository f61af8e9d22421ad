#include "core/half.h"

#include <cmath>
#include <cstring>

#include <gtest/gtest.h>

namespace qlinear {
namespace {

TEST(HalfTest, EveryF16RoundTrips) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = HalfBitsToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(HalfBitsToFloat(FloatToHalfBits(f)))) << h;
      continue;
    }
    EXPECT_EQ(FloatToHalfBits(f), h) << "bits " << h << " value " << f;
  }
}

TEST(HalfTest, F16RoundsToNearestEven) {
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties go to the even, 1.
  EXPECT_EQ(HalfBitsToFloat(FloatToHalfBits(1.0f + 0x1p-11f)), 1.0f);
  // 1 + 3*2^-11 is halfway between 1+2^-10 (odd) and 1+2^-9 (even).
  EXPECT_EQ(HalfBitsToFloat(FloatToHalfBits(1.0f + 3 * 0x1p-11f)), 1.0f + 0x1p-9f);
  EXPECT_EQ(HalfBitsToFloat(FloatToHalfBits(1.0f + 0x1p-11f + 0x1p-20f)),
            1.0f + 0x1p-10f);
  // Overflow: 65504 is the largest finite; 65520 is the midpoint to inf.
  EXPECT_EQ(HalfBitsToFloat(FloatToHalfBits(65519.0f)), 65504.0f);
  EXPECT_TRUE(std::isinf(HalfBitsToFloat(FloatToHalfBits(65520.0f))));
  EXPECT_TRUE(std::isinf(HalfBitsToFloat(FloatToHalfBits(1e30f))));
  EXPECT_EQ(FloatToHalfBits(-INFINITY), 0xFC00);
  // Subnormals: 2^-24 is the smallest; 2^-25 ties to even (zero).
  EXPECT_EQ(FloatToHalfBits(0x1p-24f), 0x0001);
  EXPECT_EQ(FloatToHalfBits(0x1p-25f), 0x0000);
  EXPECT_EQ(FloatToHalfBits(3 * 0x1p-26f), 0x0001);
  EXPECT_EQ(FloatToHalfBits(3 * 0x1p-25f), 0x0002);
  EXPECT_EQ(FloatToHalfBits(-0.0f), 0x8000);
  EXPECT_TRUE(std::isnan(HalfBitsToFloat(FloatToHalfBits(NAN))));
}

TEST(HalfTest, EveryBF16RoundTrips) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const float f = BF16BitsToFloat(static_cast<uint16_t>(b));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(BF16BitsToFloat(FloatToBF16Bits(f)))) << b;
      continue;
    }
    EXPECT_EQ(FloatToBF16Bits(f), b) << b;
  }
}

TEST(HalfTest, BF16RoundsToNearestEven) {
  EXPECT_EQ(BF16BitsToFloat(FloatToBF16Bits(1.0f + 0x1p-8f)), 1.0f);
  EXPECT_EQ(BF16BitsToFloat(FloatToBF16Bits(1.0f + 3 * 0x1p-8f)), 1.0f + 0x1p-6f);
  EXPECT_EQ(BF16BitsToFloat(FloatToBF16Bits(1.0f + 0x1p-8f + 0x1p-20f)),
            1.0f + 0x1p-7f);
  EXPECT_TRUE(std::isinf(BF16BitsToFloat(FloatToBF16Bits(3.4028235e38f))));
  // A NaN whose payload sits in the dropped bits must stay NaN, not become inf.
  uint32_t u = 0x7F800001u;
  float nan;
  std::memcpy(&nan, &u, 4);
  EXPECT_TRUE(std::isnan(BF16BitsToFloat(FloatToBF16Bits(nan))));
}

TEST(HalfTest, LoadStoreAndRoundTo) {
  uint8_t buf[8] = {};
  StoreFloat(DType::kF16, buf, 1, 0.1f);
  EXPECT_EQ(LoadFloat(DType::kF16, buf, 1), RoundTo(DType::kF16, 0.1f));
  EXPECT_NE(RoundTo(DType::kF16, 0.1f), 0.1f);
  StoreFloat(DType::kBF16, buf, 0, 0.1f);
  EXPECT_EQ(LoadFloat(DType::kBF16, buf, 0), RoundTo(DType::kBF16, 0.1f));
  StoreFloat(DType::kF32, buf, 1, 0.1f);
  EXPECT_EQ(LoadFloat(DType::kF32, buf, 1), 0.1f);
  EXPECT_EQ(RoundTo(DType::kF32, 0.1f), 0.1f);
}

}  // namespace
}  // namespace qlinear
