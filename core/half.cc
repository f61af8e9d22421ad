#include "core/half.h"

namespace qlinear {

uint16_t FloatToHalfBits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7FFFFFFFu;
  if (abs > 0x7F800000u) return sign | 0x7E00u;          // NaN
  if (abs >= 0x47800000u) {                              // >= 65536: inf
    return sign | 0x7C00u;
  }
  if (abs < 0x38800000u) {                               // below 2^-14: subnormal
    // Adding 0.5 makes the FPU round to nearest even at 2^-24 granularity.
    float f;
    std::memcpy(&f, &abs, 4);
    f += 0.5f;
    uint32_t r;
    std::memcpy(&r, &f, 4);
    return sign | static_cast<uint16_t>(r - 0x3F000000u);
  }
  // Normal: rebias the exponent and round the 13 dropped mantissa bits.
  const uint32_t odd = (abs >> 13) & 1u;
  const uint32_t rounded = abs + 0xC8000FFFu + odd;  // -(112 << 23) + 0xFFF
  return sign | static_cast<uint16_t>(rounded >> 13);
}

float HalfBitsToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t mant = h & 0x3FFu;
  uint32_t u;
  if (exp == 0x1F) {
    u = sign | 0x7F800000u | (mant << 13);
  } else if (exp != 0) {
    u = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    u = sign;
  } else {
    float f = static_cast<float>(mant) * 5.9604644775390625e-8f;  // 2^-24
    std::memcpy(&u, &f, 4);
    u |= sign;
  }
  float out;
  std::memcpy(&out, &u, 4);
  return out;
}

}  // namespace qlinear
