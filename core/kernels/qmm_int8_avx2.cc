// The INT8 tile kernel for AVX2 (compiled with -mavx2 -mfma -mf16c; only
// called when the CPU has all three; also the INT8 kernel of AVX-512 CPUs
// without VNNI). It computes exactly the INT8 sequence of kernel_args.h,
// bit for bit as TileKernelInt8Portable (qmm_int8.cc).
//
// A tile's 16 outputs are two __m256i halves of one word each. For
// sub-position i of a word, the 4 bytes of each lane hold the lane's codes
// for the 4 inputs the prepared input keeps side by side (kernel_args.h).
// vpmaddubsw multiplies unsigned codes by the broadcast signed int8 inputs
// and adds adjacent pairs into int16, saturating: so every code it sees is
// at most 24 (2·127·24 < 2^15), and 8-bit codes go in two nibbles, c = 16h
// + l, each multiplied on its own. The int16 sums are added in int16 over
// one 16-input block (no sum can pass 2^15: kFlushWords), then widened
// exactly with vpmaddwd (by 1, and by 16 for the high nibbles) into int32
// (fp4: plus -12·qsum). Integer sums are exact and associative, so this
// gives the same P as the definition; the float folds (per block acc =
// fma(d, float(P), acc), per group the two fmas into y) are performed per
// lane exactly as the definition states.
// Self-contained on purpose: no functions with external linkage shared
// with other translation units (kernel_args.h's helpers are static).
#include <immintrin.h>

#include <cstring>

#include "core/kernels/kernel_args.h"
#include "core/kernels/simd_params.h"

namespace qlinear::kernels {
namespace {

// The four int8 inputs of one sub-position, as one int32 in every lane.
__attribute__((always_inline)) inline __m256i Broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// Digits per code: 8-bit codes are split into two nibbles.
template <int B>
constexpr int kDigits = B == 8 ? 2 : 1;

// Words whose int16 pair sums may be added before they could pass 2^15:
// each vpmaddubsw pair is at most 2·127·c_max (c_max 3, 15 for codes and
// nibbles, 24 for E2M1), and a word brings 8 / B of them per digit.
template <int B, bool kFp4>
constexpr int kFlushWords = kFp4 ? 2 : B == 2 ? 8 : B == 4 ? 4 : 8;

// R rows x T tiles (2T halves): int16 sums per row, half and digit (one
// block), float sums per row and half (one group).
template <int B, bool kFp4, int R, int T>
struct Acc {
  __m256i s16[R][2 * T][kDigits<B>];
  __m256 f[R][2 * T];
};

// Sub-position I of the words w (one per half): add each row's products
// to the int16 sums.
template <int B, bool kFp4, int R, int T, int I>
__attribute__((always_inline)) inline void Step(const __m256i* w, const int8_t* const* xq,
                                                int64_t at, Acc<B, kFp4, R, T>& acc,
                                                __m256i lut) {
  constexpr int kNpos = 8 / B;
  if constexpr (I < kNpos) {
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    __m256i c[2 * T][kDigits<B>];
    for (int h = 0; h < 2 * T; ++h) {
      if constexpr (B == 8) {
        c[h][0] = _mm256_and_si256(w[h], low4);
        c[h][1] = _mm256_and_si256(_mm256_srli_epi16(w[h], 4), low4);
      } else {
        const __m256i mask = _mm256_set1_epi8(static_cast<char>((1 << B) - 1));
        const __m256i v = _mm256_and_si256(I == 0 ? w[h] : _mm256_srli_epi32(w[h], I * B), mask);
        c[h][0] = kFp4 ? _mm256_shuffle_epi8(lut, v) : v;
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m256i xb = Broadcast4(xq[r] + at + I * 4);
      for (int h = 0; h < 2 * T; ++h) {
        for (int e = 0; e < kDigits<B>; ++e) {
          acc.s16[r][h][e] = _mm256_add_epi16(acc.s16[r][h][e], _mm256_maddubs_epi16(c[h][e], xb));
        }
      }
    }
    Step<B, kFp4, R, T, I + 1>(w, xq, at, acc, lut);
  }
}

// kBpg: blocks per group when known at compile time (0: any). A block is
// kInt8Block / cpl words, at most kFlushWords: its int16 sums cannot pass
// 2^15, and are widened once, at its end.
template <int B, bool kFp4, int R, int T, int kBpg>
void Kernel(const TileArgs& a) {
  constexpr int kCpl = 32 / B;
  constexpr int kWpb = kInt8Block / kCpl;
  static_assert(kWpb <= kFlushWords<B, kFp4>);
  // 2·E2M1 + 12 for each 4-bit code, in both 128-bit lanes.
  const __m256i lut = _mm256_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0,
                                       12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0);
  const __m256i one = _mm256_set1_epi16(1), sixteen = _mm256_set1_epi16(16);
  const int8_t* xq[R];
  const float* xd[R];
  const int32_t* xqsum[R];
  for (int r = 0; r < R; ++r) {
    xq[r] = static_cast<const int8_t*>(a.xp) + r * a.xp_stride;
    xd[r] = a.xd + r * a.xd_stride;
    xqsum[r] = a.xqsum + r * a.xd_stride;
  }
  const int64_t blocks_per_group = kBpg > 0 ? kBpg : a.group_size / kInt8Block;
  const int64_t words_per_tile = a.codes_stride / kTileN;
  __m256 y[R][2 * T];
  for (int r = 0; r < R; ++r) {
    for (int h = 0; h < 2 * T; ++h) y[r][h] = _mm256_setzero_ps();
  }
  for (int64_t g = 0; g < a.groups; ++g) {
    Acc<B, kFp4, R, T> acc;
    for (int r = 0; r < R; ++r) {
      for (int h = 0; h < 2 * T; ++h) acc.f[r][h] = _mm256_setzero_ps();
    }
    // Block blk: P = the widened int16 sums (minus 12·qsum for fp4), then
    // f = fma(d, float(P), f).
    auto block = [&](int64_t blk) __attribute__((always_inline)) {
      for (int r = 0; r < R; ++r) {
        for (int h = 0; h < 2 * T; ++h) {
          for (int e = 0; e < kDigits<B>; ++e) acc.s16[r][h][e] = _mm256_setzero_si256();
        }
      }
#pragma GCC unroll 4
      for (int j = 0; j < kWpb; ++j) {
        const int64_t word = blk * kWpb + j;
        __m256i w[2 * T];
        for (int t = 0; t < T; ++t) {
          const uint32_t* p = a.codes + t * a.codes_stride + word * kTileN;
          w[2 * t] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
          w[2 * t + 1] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8));
        }
        if constexpr (R == 1) PrefetchCodes<2>(a, T, words_per_tile, word + kPrefetchAheadWords);
        Step<B, kFp4, R, T, 0>(w, xq, word * kCpl, acc, lut);
      }
      for (int r = 0; r < R; ++r) {
        const __m256 d = _mm256_set1_ps(xd[r][blk]);
        const __m256i init = _mm256_set1_epi32(-12 * xqsum[r][blk]);
        for (int h = 0; h < 2 * T; ++h) {
          __m256i p = _mm256_madd_epi16(acc.s16[r][h][0], one);
          if constexpr (B == 8) {
            p = _mm256_add_epi32(p, _mm256_madd_epi16(acc.s16[r][h][1], sixteen));
          }
          if constexpr (kFp4) p = _mm256_add_epi32(p, init);
          acc.f[r][h] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc.f[r][h]);
        }
      }
    };
    const int64_t first = g * blocks_per_group;
    if constexpr (kBpg > 0) {
#pragma GCC unroll 8
      for (int u = 0; u < kBpg; ++u) block(first + u);
    } else {
      for (int64_t u = 0; u < blocks_per_group; ++u) block(first + u);
    }
    // Fold the group: [f · 0.5,] y = fma(scale, f, y), then (affine)
    // y = fma(bias, xsum, y).
    for (int h = 0; h < 2 * T; ++h) {
      const int64_t i = g * kBlockStride + h * 8;  // tile h / 2, half h % 2
      const __m256 s = LoadParams(a.scales, a.scale_type, i);
      for (int r = 0; r < R; ++r) {
        __m256 v = acc.f[r][h];
        if constexpr (kFp4) v = _mm256_mul_ps(v, _mm256_set1_ps(0.5f));
        y[r][h] = _mm256_fmadd_ps(s, v, y[r][h]);
      }
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

template <int B, bool kFp4, int R, int T>
void ByGroup(const TileArgs& a) {
  switch (a.group_size / kInt8Block) {
    case 1:
      return Kernel<B, kFp4, R, T, 1>(a);
    case 2:
      return Kernel<B, kFp4, R, T, 2>(a);
    case 4:
      return Kernel<B, kFp4, R, T, 4>(a);
    case 8:
      return Kernel<B, kFp4, R, T, 8>(a);
    default:
      break;
  }
  return Kernel<B, kFp4, R, T, 0>(a);
}

// 16 ymm registers: one row takes 2 tiles (4 halves), 2 rows 1 tile;
// 8-bit codes, with two int16 sums per output, one row and one tile.
template <int B, bool kFp4, int R>
void ByTiles(const TileArgs& a) {
  constexpr int kT = R == 1 && B != 8 ? 2 : 1;
  int done = 0;
  while (done < a.tiles) {
    const TileArgs part = FromTile(a, done);
    if (a.tiles - done >= kT) {
      ByGroup<B, kFp4, R, kT>(part);
      done += kT;
    } else {
      ByGroup<B, kFp4, R, 1>(part);
      done += 1;
    }
  }
}

// Rows in blocks of 2, then 1: every row still sees the same per-output
// sequence, only the register blocking changes.
template <int B, bool kFp4>
void ByRows(const TileArgs& a) {
  int done = 0;
  while (done < a.rows) {
    const TileArgs part = FromRow(a, done);
    if (a.rows - done >= 2 && B != 8) {
      ByTiles<B, kFp4, 2>(part);
      done += 2;
    } else {
      ByTiles<B, kFp4, 1>(part);
      done += 1;
    }
  }
}

// Byte order of a 16-code chunk in the prepared input (kernel_args.h):
// output byte i*4 + b of each word takes code b*npos + i.
__m128i PrepareOrder(int lane_bits) {
  if (lane_bits == 4) return _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
  if (lane_bits == 2) return _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

int32_t HorizontalMax(__m256i v) {
  __m128i m = _mm_max_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0x4E));
  m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0xB1));
  return _mm_cvtsi128_si32(m);
}

int32_t HorizontalSum(__m256i v) {
  __m128i m = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  m = _mm_add_epi32(m, _mm_shuffle_epi32(m, 0x4E));
  m = _mm_add_epi32(m, _mm_shuffle_epi32(m, 0xB1));
  return _mm_cvtsi128_si32(m);
}

}  // namespace

// PrepareInt8 (qmm_int8.cc) 16 inputs at a time, with the same IEEE
// operations: the maximum of |x| is exact in any order (compared as
// integers), the division is vdivps (correctly rounded, as divss), the
// clamps take the same operand for NaN as std::max / std::min there
// (vmaxps / vminps return their second operand when either is NaN), and
// vcvtps2dq rounds half to even (the default rounding mode) as the
// 1.5·2^23 trick does for |v| <= 127.
void PrepareInt8Avx2(const float* x, int64_t rows, int64_t k, int64_t group_size, int lane_bits,
                     int8_t* xq, float* xd, int32_t* xqsum) {
  if (group_size % 16 != 0) return PrepareInt8(x, rows, k, group_size, lane_bits, xq, xd, xqsum);
  const int64_t groups = k / group_size;
  const __m128i order = PrepareOrder(lane_bits);
  const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
  const __m256i below_inf = _mm256_set1_epi32(0x7F7FFFFF);
  const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  for (int64_t m = 0; m < rows; ++m) {
    const float* row = x + m * k;
    int8_t* q = xq + m * k;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t k0 = g * group_size;
      __m256i amax = _mm256_setzero_si256();
      __m256i nonfinite = _mm256_setzero_si256();
      for (int64_t i = k0; i < k0 + group_size; i += 8) {
        // |x| as integers: ordered as the floats for non-negative values.
        const __m256i bits = _mm256_and_si256(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + i)), abs_mask);
        nonfinite = _mm256_or_si256(nonfinite, _mm256_cmpgt_epi32(bits, below_inf));
        amax = _mm256_max_epi32(amax, bits);
      }
      int32_t sum = 0;
      float d;
      const int32_t amax_bits = HorizontalMax(amax);
      const bool finite = _mm256_testz_si256(nonfinite, nonfinite) != 0;
      if (!finite || amax_bits == 0) {
        d = !finite ? __builtin_nanf("") : 0.0f;
        for (int64_t i = k0; i < k0 + group_size; i += 16) {
          _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm_setzero_si128());
        }
      } else {
        float amax_f;
        std::memcpy(&amax_f, &amax_bits, 4);
        d = amax_f / 127.0f;
        const __m256 dv = _mm256_set1_ps(d);
        __m256i sums = _mm256_setzero_si256();
        for (int64_t i = k0; i < k0 + group_size; i += 16) {
          const __m256 r0 = _mm256_div_ps(_mm256_loadu_ps(row + i), dv);
          const __m256 r1 = _mm256_div_ps(_mm256_loadu_ps(row + i + 8), dv);
          const __m256i c0 = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r0, lo), hi));
          const __m256i c1 = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r1, lo), hi));
          sums = _mm256_add_epi32(sums, _mm256_add_epi32(c0, c1));
          // int32 -> int16 -> int8 (no saturation: |c| <= 127), in order.
          const __m256i c16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(c0, c1), 0xD8);
          const __m128i c8 =
              _mm_packs_epi16(_mm256_castsi256_si128(c16), _mm256_extracti128_si256(c16, 1));
          _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm_shuffle_epi8(c8, order));
        }
        sum = HorizontalSum(sums);
      }
      xd[m * groups + g] = d;
      if (xqsum != nullptr) xqsum[m * groups + g] = sum;
    }
  }
}

void TileKernelInt8Avx2(const TileArgs& a) {
  if (a.decode == Decode::kFp4) return ByRows<4, true>(a);
  if (a.lane_bits == 2) return ByRows<2, false>(a);
  if (a.lane_bits == 4) return ByRows<4, false>(a);
  return ByRows<8, false>(a);
}

}  // namespace qlinear::kernels
