// The INT8 precision's input preparation and portable tile kernel: plain
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

// Round half to even for |v| <= 127 (the caller clamps first): adding and
// subtracting 1.5·2^23 leaves the nearest integer in the default rounding
// mode (this file is compiled without floating-point contraction).
float RoundHalfEven(float v) {
  const float t = v + 0x1.8p23f;
  return t - 0x1.8p23f;
}

}  // namespace


void PrepareInt8(const float* x, int64_t rows, int64_t k, int64_t group_size, int lane_bits,
                 int8_t* xq, float* xd, int32_t* xqsum) {
  const int cpl = 32 / lane_bits;
  const int npos = 8 / lane_bits;
  const int64_t groups = k / group_size;
  for (int64_t m = 0; m < rows; ++m) {
    const float* row = x + m * k;
    int8_t* q = xq + m * k;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t k0 = g * group_size;
      float amax = 0.0f;
      bool finite = true;
      for (int64_t i = k0; i < k0 + group_size; ++i) {
        if (!std::isfinite(row[i])) finite = false;
        amax = std::max(amax, std::fabs(row[i]));
      }
      const float d = !finite ? std::numeric_limits<float>::quiet_NaN() : amax / 127.0f;
      int32_t sum = 0;
      for (int64_t kk = k0; kk < k0 + group_size; ++kk) {
        int code = 0;
        if (finite && amax != 0.0f) {
          const float r = std::min(127.0f, std::max(-127.0f, row[kk] / d));
          code = static_cast<int>(RoundHalfEven(r));
        }
        sum += code;
        // Code kk is byte b, sub-position i of word j (kernel_args.h).
        const int64_t j = kk / cpl;
        const int within = static_cast<int>(kk % cpl);
        const int b = within / npos;
        const int i = within % npos;
        q[j * cpl + i * 4 + b] = static_cast<int8_t>(code);
      }
      xd[m * groups + g] = d;
      if (xqsum != nullptr) xqsum[m * groups + g] = sum;
    }
  }
}

void Int8GroupSums(const float* xd, const int32_t* xqsum, int64_t rows, int64_t k,
                   int64_t group_size, float* xsum) {
  const int64_t per_group = group_size / kInt8Block;
  const int64_t groups = rows * (k / group_size);
  for (int64_t i = 0; i < groups; ++i) {
    float s = 0.0f;
    for (int64_t b = i * per_group; b < (i + 1) * per_group; ++b) {
      s = std::fma(xd[b], static_cast<float>(xqsum[b]), s);
    }
    xsum[i] = s;
  }
}

void TileKernelInt8Portable(const TileArgs& a) {
  const int cpl = 32 / a.lane_bits;
  const int npos = 8 / a.lane_bits;
  const uint32_t mask = (1u << a.lane_bits) - 1u;
  const bool fp4 = a.decode == Decode::kFp4;
  const int64_t words_per_block = kInt8Block / cpl;
  const int64_t blocks_per_group = a.group_size / kInt8Block;
  for (int t = 0; t < a.tiles; ++t) {
    const TileArgs tile = FromTile(a, t);
    for (int r = 0; r < a.rows; ++r) {
      const int8_t* q = static_cast<const int8_t*>(a.xp) + r * a.xp_stride;
      const float* xsum = a.xsum + r * a.xsum_stride;
      const float* xd = a.xd + r * a.xd_stride;
      const int32_t* xqsum = a.xqsum + r * a.xd_stride;
      for (int lane = 0; lane < kTileN; ++lane) {
        float y = 0.0f;
        for (int64_t g = 0; g < a.groups; ++g) {
          float acc = 0.0f;
          for (int64_t blk = g * blocks_per_group; blk < (g + 1) * blocks_per_group; ++blk) {
            int32_t p = fp4 ? -12 * xqsum[blk] : 0;
            for (int64_t j = blk * words_per_block; j < (blk + 1) * words_per_block; ++j) {
              const uint32_t word = tile.codes[j * kTileN + lane];
              for (int i = 0; i < npos; ++i) {
                for (int b = 0; b < 4; ++b) {
                  const uint32_t code = (word >> (b * 8 + i * a.lane_bits)) & mask;
                  const int32_t c = fp4 ? kTwiceFp4[code] + 12 : static_cast<int32_t>(code);
                  p += static_cast<int32_t>(q[j * cpl + i * 4 + b]) * c;
                }
              }
            }
            acc = std::fma(xd[blk], static_cast<float>(p), acc);
          }
          // fp4 codes were doubled: halve once per group (exact but for
          // subnormals, which it rounds like any float32 multiply).
          if (fp4) acc *= 0.5f;
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
