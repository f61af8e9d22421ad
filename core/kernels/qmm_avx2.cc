// The AVX2 + FMA tile kernel (compiled with -mavx2 -mfma -mf16c; only called
// when the CPU has all three). A tile's 16 outputs are two __m256 halves; each lane
// performs exactly the scalar sequence of kernel_args.h. Codes are decoded
// in registers and shared by up to 4 rows; 1 row x 4 tiles, 2 x 2, 3 x 1 or
// 4 x 1 per call.
#include <immintrin.h>

#include <algorithm>

#include "core/kernels/kernel_args.h"
#include "core/kernels/simd_params.h"

namespace qlinear::kernels {
namespace {

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

// Tile t's outputs are the two halves h = 2t, 2t + 1. With kScaled (x
// pre-scaled by PrescaleAvx2; one row only), integer codes other than a
// word's last are masked in place: q * 2^(B*I), exact, and below 2^31 for
// the signed conversion. One shift fewer per code: one row 4-bit 0.30-0.36
// vs 0.37-0.59 ms, 2-bit 0.32-0.38 vs 0.42-0.74 ms (9 interleaved rounds);
// with several rows the FMAs are the limit and the distinct mask constants
// measured slower, so batches shift.
template <int B, Decode D, bool kScaled, int R, int T, int I>
__attribute__((always_inline)) inline void Step(const __m256i* w, const float* const* x,
                                                int64_t k, __m256 (*acc)[2 * T],
                                                __m256 lut_lo, __m256 lut_hi) {
  if constexpr (I < 32 / B) {
    for (int h = 0; h < 2 * T; ++h) {
      __m256i c;
      if constexpr (kScaled && (I + 1) * B < 32) {
        c = _mm256_and_si256(w[h], _mm256_set1_epi32(static_cast<int>(((1u << B) - 1) << (I * B))));
      } else {
        c = _mm256_srli_epi32(w[h], I * B);
        if constexpr ((I + 1) * B < 32) c = _mm256_and_si256(c, _mm256_set1_epi32((1 << B) - 1));
      }
      const __m256 v = DecodeLane<B, D>(c, lut_lo, lut_hi);
      for (int r = 0; r < R; ++r) {
        acc[r][h] = _mm256_fmadd_ps(_mm256_set1_ps(x[r][k + I]), v, acc[r][h]);
      }
    }
    Step<B, D, kScaled, R, T, I + 1>(w, x, k, acc, lut_lo, lut_hi);
  }
}

// Rows x tiles per call: R * 2T accumulators, 8 of them (6 with 3 rows),
// independent FMA chains enough to cover the FMA latency; the outputs wait
// in memory (the compiler keeps what fits), touched once per group.
template <int B, Decode D, bool kScaled, int R, int T>
void Kernel(const TileArgs& a) {
  constexpr int kCpl = 32 / B;
  const __m256 lut_lo = _mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f);
  const __m256 lut_hi = _mm256_setr_ps(-0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f);
  const float* x[R];
  for (int r = 0; r < R; ++r) x[r] = (kScaled ? a.x_scaled : a.x) + r * a.x_stride;
  __m256 y[R][2 * T];
  for (int r = 0; r < R; ++r) {
    for (int h = 0; h < 2 * T; ++h) y[r][h] = _mm256_setzero_ps();
  }
  const int64_t words_per_group = a.group_size / kCpl;
  const int64_t words_per_tile = a.codes_stride / kTileN;
  for (int64_t g = 0; g < a.groups; ++g) {
    __m256 acc[R][2 * T];
    for (int r = 0; r < R; ++r) {
      for (int h = 0; h < 2 * T; ++h) acc[r][h] = _mm256_setzero_ps();
    }
    int64_t k = g * a.group_size;
    for (int64_t j = 0; j < words_per_group; ++j) {
      const int64_t word = g * words_per_group + j;
      __m256i w[2 * T];
      for (int t = 0; t < T; ++t) {
        const uint32_t* p = a.codes + t * a.codes_stride + word * kTileN;
        w[2 * t] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        w[2 * t + 1] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8));
      }
      // One row prefetches its codes into L2, as the AVX-512 kernel does
      // (its L1 prefetch as well, 6 or 12 words ahead, measured 1-4 %
      // faster cold and up to 4 % slower warm here: not kept).
      if constexpr (R == 1) PrefetchCodes<2>(a, T, words_per_tile, word + kPrefetchAheadWords);
      Step<B, D, kScaled, R, T, 0>(w, x, k, acc, lut_lo, lut_hi);
      k += kCpl;
    }
    for (int h = 0; h < 2 * T; ++h) {
      const int64_t i = g * kBlockStride + h * 8;  // tile h / 2, half h % 2
      const __m256 s = LoadParams(a.scales, a.scale_type, i);
      for (int r = 0; r < R; ++r) y[r][h] = _mm256_fmadd_ps(s, acc[r][h], y[r][h]);
      if (a.biases != nullptr) {
        const __m256 b = LoadParams(a.biases, a.scale_type, i);
        for (int r = 0; r < R; ++r) {
          y[r][h] = _mm256_fmadd_ps(b, _mm256_set1_ps(a.xsum[r * a.xsum_stride + g]), y[r][h]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int h = 0; h < 2 * T; ++h) _mm256_storeu_ps(a.y + r * a.y_stride + h * 8, y[r][h]);
  }
}

// Measured on Zen 4 (N=K=4096, 2 threads), against 1 or 2 rows x 1 tile:
// 4-bit M=1 0.42-0.43 vs 0.54-0.71 ms, M=8 1.74-1.92 vs 2.36-2.58 ms;
// E2M1 codes, whose decode (two permutes and a blend) is the limit, were
// 5-20 % slower with more tiles or rows per call, so they keep 1 tile.
template <int B, Decode D, bool kScaled, int R>
void ByTiles(const TileArgs& a) {
  constexpr int kT = D == Decode::kFp4 ? 1 : R == 1 ? 4 : R == 2 ? 2 : 1;
  int done = 0;
  while (done < a.tiles) {
    const TileArgs part = FromTile(a, done);
    const int left = a.tiles - done;
    if (left >= kT) {
      Kernel<B, D, kScaled && R == 1, R, kT>(part);
      done += kT;
    } else {
      Kernel<B, D, kScaled && R == 1, R, 1>(part);
      done += 1;
    }
  }
}

// One register block of exactly `rows` rows (1 .. R).
template <int B, Decode D, bool kScaled, int R>
void RowBlock(const TileArgs& a, int rows) {
  if constexpr (R > 1) {
    if (rows < R) return RowBlock<B, D, kScaled, R - 1>(a, rows);
  }
  ByTiles<B, D, kScaled, R>(a);
}

// Rows in blocks of 4 (2 for E2M1 codes, see above), then one block of the
// rows left: every row still sees the same per-output sequence, only the
// register blocking changes. (The rest as blocks of 2 and 1: M=3 measured
// 0.91-0.99 against 0.68-0.71 ms, N=K=4096 4-bit on 2 threads of a Xeon.)
template <int B, Decode D, bool kScaled>
void ByRows(const TileArgs& a) {
  constexpr int kMaxRows = D == Decode::kFp4 ? 2 : 4;
  for (int done = 0; done < a.rows;) {
    const int rows = std::min(a.rows - done, kMaxRows);
    RowBlock<B, D, kScaled, kMaxRows>(FromRow(a, done), rows);
    done += rows;
  }
}

template <int B>
void IntCodes(const TileArgs& a) {
  if (a.x_scaled != nullptr) return ByRows<B, Decode::kInt, true>(a);
  return ByRows<B, Decode::kInt, false>(a);
}

}  // namespace

bool PrescaleAvx2(const float* x, int64_t n, int lane_bits, float* x_scaled) {
  const int cpl = 32 / lane_bits;
  float factor[16];
  for (int i = 0; i < 16; ++i) {
    const int code = i % cpl;
    // Powers of two, so every product below is exact for |x| >= 2^-96.
    const int shift = code == cpl - 1 ? 0 : lane_bits * code;
    factor[i] = 1.0f / static_cast<float>(1u << shift);
  }
  const __m256 f0 = _mm256_loadu_ps(factor);
  const __m256 f1 = _mm256_loadu_ps(factor + 8);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256 zero = _mm256_setzero_ps();
  const __m256 tiny_limit = _mm256_set1_ps(0x1p-96f);
  __m256 tiny = zero;
  for (int64_t i = 0; i < n; i += 16) {
    const __m256 v0 = _mm256_loadu_ps(x + i);
    const __m256 v1 = _mm256_loadu_ps(x + i + 8);
    // 0 < |v| < 2^-96 (NaN compares false, and is multiplied through).
    const __m256 a0 = _mm256_and_ps(v0, abs_mask);
    const __m256 a1 = _mm256_and_ps(v1, abs_mask);
    tiny = _mm256_or_ps(tiny, _mm256_and_ps(_mm256_cmp_ps(a0, zero, _CMP_GT_OQ),
                                            _mm256_cmp_ps(a0, tiny_limit, _CMP_LT_OQ)));
    tiny = _mm256_or_ps(tiny, _mm256_and_ps(_mm256_cmp_ps(a1, zero, _CMP_GT_OQ),
                                            _mm256_cmp_ps(a1, tiny_limit, _CMP_LT_OQ)));
    _mm256_storeu_ps(x_scaled + i, _mm256_mul_ps(v0, f0));
    _mm256_storeu_ps(x_scaled + i + 8, _mm256_mul_ps(v1, f1));
  }
  return _mm256_movemask_ps(tiny) == 0;
}

void TileKernelAvx2(const TileArgs& a) {
  if (a.decode == Decode::kFp4) return ByRows<4, Decode::kFp4, false>(a);
  if (a.decode == Decode::kFp8) return ByRows<8, Decode::kFp8, false>(a);
  if (a.lane_bits == 2) return IntCodes<2>(a);
  if (a.lane_bits == 4) return IntCodes<4>(a);
  return IntCodes<8>(a);
}

}  // namespace qlinear::kernels
