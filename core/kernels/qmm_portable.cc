// The portable tile kernel: plain C++ with std::fma, the same per-output
// operation order as the SIMD kernels (see kernel_args.h), so that all
// targets agree bit for bit.
#include <cmath>
#include <cstring>

#include "core/half.h"
#include "core/kernels/kernel_args.h"

namespace qlinear::kernels {
namespace {

float DecodeValue(Decode decode, uint32_t code) {
  static const float kFp4[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,
                                 4.0f,  6.0f,  -0.0f, -0.5f, -1.0f, -1.5f,
                                 -2.0f, -3.0f, -4.0f, -6.0f};
  switch (decode) {
    case Decode::kFp4:
      return kFp4[code & 15];
    case Decode::kFp8: {
      // (code & 0x7F) << 20 read as float is 2^-120 times the E4M3 value,
      // subnormals included; the multiply by 2^120 is exact.
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

// Scale or bias i, widened exactly to float32.
float LoadParam(const void* base, ScaleType type, int64_t i) {
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

}  // namespace

static void OneTile(const TileArgs& a) {
  const int cpl = 32 / a.lane_bits;
  const uint32_t mask = (1u << a.lane_bits) - 1u;
  for (int r = 0; r < a.rows; ++r) {
    const float* x = a.x + r * a.x_stride;
    const float* xsum = a.xsum + r * a.xsum_stride;
    for (int lane = 0; lane < kTileN; ++lane) {
      float y = 0.0f;
      for (int64_t g = 0; g < a.groups; ++g) {
        float acc = 0.0f;
        for (int64_t k = g * a.group_size; k < (g + 1) * a.group_size; ++k) {
          const uint32_t word = a.codes[(k / cpl) * kTileN + lane];
          const uint32_t code = (word >> ((k % cpl) * a.lane_bits)) & mask;
          acc = std::fma(x[k], DecodeValue(a.decode, code), acc);
        }
        y = std::fma(LoadParam(a.scales, a.scale_type, g * kBlockStride + lane), acc, y);
        if (a.biases != nullptr) {
          y = std::fma(LoadParam(a.biases, a.scale_type, g * kBlockStride + lane), xsum[g], y);
        }
      }
      a.y[r * a.y_stride + lane] = y;
    }
  }
}

void TileKernelPortable(const TileArgs& a) {
  for (int t = 0; t < a.tiles; ++t) OneTile(FromTile(a, t));
}

}  // namespace qlinear::kernels
