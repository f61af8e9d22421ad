// The AVX2 + FMA tile kernel (compiled with -mavx2 -mfma -mf16c; only called
// when the CPU has all three). A tile's 16 outputs are two __m256 halves; each lane
// performs exactly the scalar sequence of kernel_args.h. With 16 vector
// registers, rows are processed two at a time.
#include <immintrin.h>

#include "core/kernels/kernel_args.h"

namespace qlinear::kernels {
namespace {

// 8 scales or biases starting at element i, widened exactly to float32.
__attribute__((always_inline)) inline __m256 LoadParams(const void* base, ScaleType type,
                                                        int64_t i) {
  if (type == ScaleType::kF32) return _mm256_loadu_ps(static_cast<const float*>(base) + i);
  const __m128i h = _mm_loadu_si128(
      reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i));
  if (type == ScaleType::kF16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

template <int B, Decode D>
__attribute__((always_inline)) inline __m256 DecodeLane(__m256i c, __m256 lut_lo,
                                                        __m256 lut_hi) {
  if constexpr (D == Decode::kInt) {
    (void)lut_lo;
    (void)lut_hi;
    return _mm256_cvtepi32_ps(c);
  } else if constexpr (D == Decode::kFp4) {
    const __m256 lo = _mm256_permutevar8x32_ps(lut_lo, c);
    const __m256 hi = _mm256_permutevar8x32_ps(lut_hi, c);
    // Bit 3 of the code (the sign) picks the negative half of the table.
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(c, 28)));
  } else {
    (void)lut_lo;
    (void)lut_hi;
    const __m256i mag = _mm256_slli_epi32(_mm256_and_si256(c, _mm256_set1_epi32(0x7F)), 20);
    const __m256 v = _mm256_mul_ps(_mm256_castsi256_ps(mag), _mm256_set1_ps(0x1p120f));
    const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(c, _mm256_set1_epi32(0x80)), 24);
    return _mm256_castsi256_ps(_mm256_or_si256(_mm256_castps_si256(v), sign));
  }
}

template <int B, Decode D, int R, int I>
__attribute__((always_inline)) inline void Step(__m256i w0, __m256i w1, const float* const* x,
                                                int64_t k, __m256* acc0, __m256* acc1,
                                                __m256 lut_lo, __m256 lut_hi) {
  if constexpr (I < 32 / B) {
    __m256i c0 = _mm256_srli_epi32(w0, I * B);
    __m256i c1 = _mm256_srli_epi32(w1, I * B);
    if constexpr ((I + 1) * B < 32) {
      const __m256i mask = _mm256_set1_epi32((1 << B) - 1);
      c0 = _mm256_and_si256(c0, mask);
      c1 = _mm256_and_si256(c1, mask);
    }
    const __m256 v0 = DecodeLane<B, D>(c0, lut_lo, lut_hi);
    const __m256 v1 = DecodeLane<B, D>(c1, lut_lo, lut_hi);
    for (int r = 0; r < R; ++r) {
      const __m256 xb = _mm256_set1_ps(x[r][k + I]);
      acc0[r] = _mm256_fmadd_ps(xb, v0, acc0[r]);
      acc1[r] = _mm256_fmadd_ps(xb, v1, acc1[r]);
    }
    Step<B, D, R, I + 1>(w0, w1, x, k, acc0, acc1, lut_lo, lut_hi);
  }
}

template <int B, Decode D, int R>
void Kernel(const TileArgs& a, int row0) {
  constexpr int kCpl = 32 / B;
  const __m256 lut_lo = _mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f);
  const __m256 lut_hi = _mm256_setr_ps(-0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f);
  const float* x[R];
  for (int r = 0; r < R; ++r) x[r] = a.x + (row0 + r) * a.x_stride;
  __m256 y0[R], y1[R];
  for (int r = 0; r < R; ++r) y0[r] = y1[r] = _mm256_setzero_ps();
  const uint32_t* codes = a.codes;
  const int64_t words_per_group = a.group_size / kCpl;
  for (int64_t g = 0; g < a.groups; ++g) {
    __m256 acc0[R], acc1[R];
    for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
    int64_t k = g * a.group_size;
    for (int64_t j = 0; j < words_per_group; ++j) {
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes));
      const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + 8));
      codes += kTileN;
      Step<B, D, R, 0>(w0, w1, x, k, acc0, acc1, lut_lo, lut_hi);
      k += kCpl;
    }
    const __m256 s0 = LoadParams(a.scales, a.scale_type, g * kBlockStride);
    const __m256 s1 = LoadParams(a.scales, a.scale_type, g * kBlockStride + 8);
    for (int r = 0; r < R; ++r) {
      y0[r] = _mm256_fmadd_ps(s0, acc0[r], y0[r]);
      y1[r] = _mm256_fmadd_ps(s1, acc1[r], y1[r]);
    }
    if (a.biases != nullptr) {
      const __m256 b0 = LoadParams(a.biases, a.scale_type, g * kBlockStride);
      const __m256 b1 = LoadParams(a.biases, a.scale_type, g * kBlockStride + 8);
      for (int r = 0; r < R; ++r) {
        const __m256 xs = _mm256_set1_ps(a.xsum[(row0 + r) * a.xsum_stride + g]);
        y0[r] = _mm256_fmadd_ps(b0, xs, y0[r]);
        y1[r] = _mm256_fmadd_ps(b1, xs, y1[r]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm256_storeu_ps(a.y + (row0 + r) * a.y_stride, y0[r]);
    _mm256_storeu_ps(a.y + (row0 + r) * a.y_stride + 8, y1[r]);
  }
}

template <int B, Decode D>
void ByRows(const TileArgs& a) {
  for (int t = 0; t < a.tiles; ++t) {
    TileArgs one = a;
    one.codes = a.codes + t * a.codes_stride;
    const int64_t offset = t * kTileN * a.scale_bytes;
    one.scales = static_cast<const char*>(a.scales) + offset;
    one.biases = a.biases == nullptr ? nullptr : static_cast<const char*>(a.biases) + offset;
    one.y = a.y + t * kTileN;
    int r = 0;
    for (; r + 2 <= a.rows; r += 2) Kernel<B, D, 2>(one, r);
    if (r < a.rows) Kernel<B, D, 1>(one, r);
  }
}

}  // namespace

void TileKernelAvx2(const TileArgs& a) {
  if (a.decode == Decode::kFp4) return ByRows<4, Decode::kFp4>(a);
  if (a.decode == Decode::kFp8) return ByRows<8, Decode::kFp8>(a);
  if (a.lane_bits == 2) return ByRows<2, Decode::kInt>(a);
  if (a.lane_bits == 4) return ByRows<4, Decode::kInt>(a);
  return ByRows<8, Decode::kInt>(a);
}

}  // namespace qlinear::kernels
