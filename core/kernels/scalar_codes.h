// The scalar values the portable kernels (qmm_portable.cc, qmm_int8.cc,
// qmm_bf16.cc) read: a code's value per Decode, 2·E2M1 as an integer, and a
// packed scale or bias widened exactly to float32. Static, like
// kernel_args.h's helpers: each unit keeps its own copy.
#ifndef QLINEAR_CORE_KERNELS_SCALAR_CODES_H_
#define QLINEAR_CORE_KERNELS_SCALAR_CODES_H_

#include <cstdint>
#include <cstring>

#include "core/half.h"
#include "core/kernels/kernel_args.h"

namespace qlinear::kernels {

// 2·E2M1 for each 4-bit code: an integer in -12..12 (INT8's fp4 codes).
static constexpr int kTwiceFp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// CodeValue: the code itself (kInt), its E2M1 value (kFp4) or its E4M3
// value (kFp8), exactly. For E4M3, (code & 0x7F) << 20 read as float is
// 2^-120 times the value, subnormals included; the multiply by 2^120 is
// exact.
static inline float CodeValue(Decode decode, uint32_t code) {
  switch (decode) {
    case Decode::kFp4:
      return 0.5f * static_cast<float>(kTwiceFp4[code & 15]);
    case Decode::kFp8: {
      const uint32_t bits = (code & 0x7Fu) << 20;
      float v;
      std::memcpy(&v, &bits, 4);
      v *= 0x1p120f;
      return (code & 0x80u) ? -v : v;
    }
    case Decode::kInt:
      break;
  }
  return static_cast<float>(code);
}

// LoadParam: scale or bias i of `type`, widened exactly to float32.
static inline float LoadParam(const void* base, ScaleType type, int64_t i) {
  switch (type) {
    case ScaleType::kF16:
      return HalfBitsToFloat(static_cast<const uint16_t*>(base)[i]);
    case ScaleType::kBF16:
      return BF16BitsToFloat(static_cast<const uint16_t*>(base)[i]);
    case ScaleType::kF32:
      break;
  }
  return static_cast<const float*>(base)[i];
}

}  // namespace qlinear::kernels

#endif  // QLINEAR_CORE_KERNELS_SCALAR_CODES_H_
