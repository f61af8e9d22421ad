// The portable tile kernel: plain C++ with std::fma, the same per-output
// operation order as the SIMD kernels (see kernel_args.h), so that all
// targets agree bit for bit.
#include <cmath>
#include <cstring>

#include "core/half.h"
#include "core/kernels/kernel_args.h"
#include "core/kernels/scalar_codes.h"

namespace qlinear::kernels {

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
          acc = std::fma(x[k], CodeValue(a.decode, code), acc);
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
