// The BF16 precision's input preparation and portable tile kernel: plain
// C++, the definition every SIMD kernel matches bit for bit (kernel_args.h
// states the arithmetic; docs/formats.md explains it).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/half.h"
#include "core/kernels/kernel_args.h"
#include "core/kernels/scalar_codes.h"

namespace qlinear::kernels {
namespace {

// F: a subnormal becomes zero of its sign (vdpbf16ps's denormal rule).
float FlushSubnormal(float v) {
  return std::fabs(v) < std::numeric_limits<float>::min() ? std::copysign(0.0f, v) : v;
}

// bfloat16 bits of a float32 (FloatToBF16Bits: nearest even, NaN kept
// quiet), a subnormal result zero of its sign. Branch-free integer code,
// so that the loops below vectorize.
inline uint32_t Bf16Flushed(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  const int32_t abs = static_cast<int32_t>(u & 0x7FFFFFFFu);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const uint32_t h = abs > 0x7F800000 ? ((u >> 16) | 0x40u) : rounded;
  return (h & 0x7F80u) == 0 ? (h & 0x8000u) : h;
}

// One row: word j's pair i (codes j*cpl + i and j*cpl + i + cpl/2) at
// j * kHalf + i.
template <int kHalf>
void PrepareRow(const float* row, int64_t k, uint32_t* out) {
  constexpr int kCpl = 2 * kHalf;
  for (int64_t j = 0; j < k / kCpl; ++j) {
    for (int i = 0; i < kHalf; ++i) {
      out[j * kHalf + i] = Bf16Flushed(row[j * kCpl + i]) | Bf16Flushed(row[j * kCpl + kHalf + i]) << 16;
    }
  }
}

}  // namespace

void PrepareBf16(const float* x, int64_t rows, int64_t k, int lane_bits, uint32_t* xb) {
  const int64_t pairs = k / 2;
  for (int64_t m = 0; m < rows; ++m) {
    const float* row = x + m * k;
    uint32_t* out = xb + m * pairs;
    switch (32 / lane_bits / 2) {
      case 2:
        PrepareRow<2>(row, k, out);
        break;
      case 4:
        PrepareRow<4>(row, k, out);
        break;
      default:
        PrepareRow<8>(row, k, out);
        break;
    }
  }
}

void Bf16GroupSums(const float* x, int64_t rows, int64_t k, int64_t group_size, float* xsum) {
  const int64_t groups = k / group_size;
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t g = 0; g < groups; ++g) {
      double s = 0;
      for (int64_t i = g * group_size; i < (g + 1) * group_size; ++i) {
        const uint32_t bits = Bf16Flushed(x[m * k + i]) << 16;
        float v;
        std::memcpy(&v, &bits, 4);
        s += v;
      }
      xsum[m * groups + g] = static_cast<float>(s);
    }
  }
}

void TileKernelBf16Portable(const TileArgs& a) {
  const int cpl = 32 / a.lane_bits;
  const int half = cpl / 2;
  const uint32_t mask = (1u << a.lane_bits) - 1u;
  const int64_t words_per_group = a.group_size / cpl;
  for (int t = 0; t < a.tiles; ++t) {
    const TileArgs tile = FromTile(a, t);
    for (int r = 0; r < a.rows; ++r) {
      const uint32_t* xb =
          reinterpret_cast<const uint32_t*>(static_cast<const char*>(a.xp) + r * a.xp_stride);
      const float* xsum = a.xsum + r * a.xsum_stride;
      for (int lane = 0; lane < kTileN; ++lane) {
        float y = 0.0f;
        for (int64_t g = 0; g < a.groups; ++g) {
          float acc = 0.0f;
          for (int64_t j = g * words_per_group; j < (g + 1) * words_per_group; ++j) {
            const uint32_t word = tile.codes[j * kTileN + lane];
            for (int i = 0; i < half; ++i) {
              const uint32_t pair = xb[j * half + i];
              const float x_lo = BF16BitsToFloat(static_cast<uint16_t>(pair & 0xFFFFu));
              const float x_hi = BF16BitsToFloat(static_cast<uint16_t>(pair >> 16));
              const float w_lo = CodeValue(a.decode, (word >> (i * a.lane_bits)) & mask);
              const float w_hi = CodeValue(a.decode, (word >> (16 + i * a.lane_bits)) & mask);
              acc = FlushSubnormal(std::fma(x_hi, w_hi, acc));
              acc = FlushSubnormal(std::fma(x_lo, w_lo, acc));
            }
          }
          y = std::fma(LoadParam(tile.scales, a.scale_type, g * kBlockStride + lane), acc, y);
          if (tile.biases != nullptr) {
            y = std::fma(LoadParam(tile.biases, a.scale_type, g * kBlockStride + lane), xsum[g], y);
          }
        }
        tile.y[r * a.y_stride + lane] = y;
      }
    }
  }
}

}  // namespace qlinear::kernels
