// float16 and bfloat16 conversions with round-to-nearest-even, written out
// because GCC 12 has no usable __bf16 arithmetic and MLX's results depend on
// the exact rounding (fp16 overflows to inf and keeps subnormals; bf16 adds
// 0x7FFF plus the lowest kept bit, then truncates; NaN stays NaN).
//
// RoundTo(dtype, v) is R_T(v) of ../shared/mlx-formats.md: v rounded to the
// dtype and widened back to float32 (exact), for F32/F16/BF16.
#ifndef QLINEAR_CORE_HALF_H_
#define QLINEAR_CORE_HALF_H_

#include <cstdint>
#include <cstring>

#include "core/dtype.h"

namespace qlinear {

uint16_t FloatToHalfBits(float v);
float HalfBitsToFloat(uint16_t h);

inline uint16_t FloatToBF16Bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float BF16BitsToFloat(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float v;
  std::memcpy(&v, &u, 4);
  return v;
}

// RoundTo returns v rounded to `dtype` (F32, F16 or BF16) as a float32.
inline float RoundTo(DType dtype, float v) {
  switch (dtype) {
    case DType::kF16:
      return HalfBitsToFloat(FloatToHalfBits(v));
    case DType::kBF16:
      return BF16BitsToFloat(FloatToBF16Bits(v));
    default:
      return v;
  }
}

// LoadFloat reads element i of a F32/F16/BF16 buffer as float32 (exact).
inline float LoadFloat(DType dtype, const void* data, size_t i) {
  switch (dtype) {
    case DType::kF16: {
      uint16_t h;
      std::memcpy(&h, static_cast<const uint8_t*>(data) + 2 * i, 2);
      return HalfBitsToFloat(h);
    }
    case DType::kBF16: {
      uint16_t h;
      std::memcpy(&h, static_cast<const uint8_t*>(data) + 2 * i, 2);
      return BF16BitsToFloat(h);
    }
    default: {
      float v;
      std::memcpy(&v, static_cast<const uint8_t*>(data) + 4 * i, 4);
      return v;
    }
  }
}

// StoreFloat writes v rounded to `dtype` as element i of a F32/F16/BF16 buffer.
inline void StoreFloat(DType dtype, void* data, size_t i, float v) {
  switch (dtype) {
    case DType::kF16: {
      const uint16_t h = FloatToHalfBits(v);
      std::memcpy(static_cast<uint8_t*>(data) + 2 * i, &h, 2);
      break;
    }
    case DType::kBF16: {
      const uint16_t h = FloatToBF16Bits(v);
      std::memcpy(static_cast<uint8_t*>(data) + 2 * i, &h, 2);
      break;
    }
    default:
      std::memcpy(static_cast<uint8_t*>(data) + 4 * i, &v, 4);
      break;
  }
}

}  // namespace qlinear

#endif  // QLINEAR_CORE_HALF_H_
