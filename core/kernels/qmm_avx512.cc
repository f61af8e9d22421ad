// The AVX-512 tile kernel (compiled with -mavx512f -mavx512bw -mfma; only
// called when the CPU has AVX-512F and BW). One __m512 holds one k of a
// tile's 16 outputs:
// x[k] is broadcast, so there are no horizontal reductions and each lane
// performs exactly the scalar sequence of kernel_args.h.
//
// Codes are decoded in registers and shared by up to 8 rows; up to 4 tiles
// per call keep enough independent FMA chains in flight to hide latency.
// A one-row product is bound by the decode instructions beside each FMA, so
// 4-bit integer codes take the cheapest decode per position: codes in the
// high half of a byte are masked in place and converted (the input was
// pre-scaled to match), codes in the low half are looked up with vpermw
// from a load offset by whole bytes (one instruction instead of two;
// measured 8-10 % faster for one row on Zen 4; several rows mask them).
// Self-contained on purpose: no functions with external linkage shared
// with other translation units (kernel_args.h's helpers are static).
#include <immintrin.h>

#include <algorithm>

#include "core/kernels/kernel_args.h"
#include "core/kernels/simd_params.h"

namespace qlinear::kernels {
namespace {

template <int B, Decode D, bool kScaled, int R, int T, int I>
__attribute__((always_inline)) inline void Step(const uint32_t* const* p, const __m512i* w,
                                                const float* const* x, int64_t k,
                                                __m512 (*acc)[T], __m512 lut) {
  if constexpr (I < 32 / B) {
    for (int t = 0; t < T; ++t) {
      __m512 v;
      if constexpr (kScaled && B == 4 && I % 2 == 0 && R > 1) {
        // The low nibble of byte I/2, from a load that puts that byte at the
        // bottom of each lane, masked and converted: with several rows
        // sharing the decode, the FMA pipes are the limit, and the lookup
        // below costs them more (measured: 4 rows 5-10 %, 8 rows 8 %
        // slower with it).
        const __m512i low = _mm512_loadu_si512(reinterpret_cast<const char*>(p[t]) + I / 2);
        v = _mm512_cvtepi32_ps(_mm512_and_si512(low, _mm512_set1_epi32(0xF)));
      } else if constexpr (kScaled && B == 4 && I % 2 == 0) {
        // The low nibble of byte I/2, in one instruction instead of a mask
        // and a conversion: a load I/2 - 2 bytes off puts that byte at the
        // bottom of each lane's upper 16 bits, vpermw looks up their low 5
        // bits (the code, and a bit of the next) in a table of bfloat16
        // values, and zeroing the lower 16 bits leaves exactly float32(q).
        const __m512i shifted =
            _mm512_loadu_si512(reinterpret_cast<const char*>(p[t]) + (I / 2 - 2));
        v = _mm512_castsi512_ps(
            _mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, shifted, _mm512_castps_si512(lut)));
      } else if constexpr (kScaled) {
        // Mask in place: q * 2^(B*I), converted exactly (unsigned: the top
        // code reaches bit 31); x was pre-scaled by 2^-(B*I).
        v = _mm512_cvtepu32_ps(
            _mm512_and_si512(w[t], _mm512_set1_epi32(static_cast<int>(((1u << B) - 1) << (I * B)))));
      } else if constexpr (D == Decode::kFp4) {
        // vpermps reads only the low 4 bits of each index: no mask needed.
        // (Loading low-half codes from byte offsets instead of shifting
        // measured within noise here.)
        v = DecodeLane<D>(_mm512_srli_epi32(w[t], I * B), lut);
      } else if constexpr (D == Decode::kFp8) {
        // Byte I to the top (a load I - 3 bytes off: cheaper than a shift),
        // then an arithmetic shift by 4 puts the sign at bit 31 and the 7
        // magnitude bits at 26..20: read as float that is 2^-120 times the
        // E4M3 value (subnormals included), and the multiply by 2^120 is
        // exact.
        __m512i c = I == 3 ? w[t]
                           : _mm512_loadu_si512(reinterpret_cast<const char*>(p[t]) + (I - 3));
        c = _mm512_and_si512(_mm512_srai_epi32(c, 4),
                             _mm512_set1_epi32(static_cast<int>(0x87F00000u)));
        v = _mm512_mul_ps(_mm512_castsi512_ps(c), _mm512_set1_ps(0x1p120f));
      } else {
        __m512i c = _mm512_srli_epi32(w[t], I * B);
        if constexpr ((I + 1) * B < 32) c = _mm512_and_si512(c, _mm512_set1_epi32((1 << B) - 1));
        v = DecodeLane<D>(c, lut);
      }
      for (int r = 0; r < R; ++r) {
        acc[r][t] = _mm512_fmadd_ps(_mm512_set1_ps(x[r][k + I]), v, acc[r][t]);
      }
    }
    Step<B, D, kScaled, R, T, I + 1>(p, w, x, k, acc, lut);
  }
}

// One row streams its weights faster than the hardware prefetchers follow
// from DRAM while the core computes (each call starts four code streams
// and two of scales and biases), so it prefetches them into L2: each code
// stream kPrefetchAheadWords words (3 KB, kernel_args.h) ahead, scales and
// biases two groups ahead. Measured on Zen 4 (one row, 2 threads, N=K=4096
// 4-bit, calls alternating in one process with the previous scheme, 8
// words ahead into L1): DRAM-cold calls 3-4 % faster, warm ones unchanged
// (16 or 24 words ahead: less gain). With the codes on huge pages (qmm.h),
// each stream is also prefetched kPrefetchL1AheadWords (6) words ahead
// into L1: cold calls 4-7 % faster with 2 threads and 5-8 % with one, warm
// within 1-2 % (4, 8 or 12 words ahead: about as good; into L1 alone: no
// gain; on 4 KiB pages, before, L1 as well as L2 gained nothing cold).
// Interleaving a block's four tiles word by word, so that a call reads one
// code stream, was 5-12 % slower cold, and 8 rows read that layout slowly.
constexpr int kParamAheadGroups = 2;

template <int B, Decode D, bool kScaled, int R, int T>
void Kernel(const TileArgs& a) {
  constexpr int kCpl = 32 / B;
  // E2M1 values for kFp4; for 4-bit integer codes looked up in 16-bit
  // lanes, the bfloat16 bits of i mod 16 for i < 32.
  const __m512 lut =
      kScaled && B == 4
          ? _mm512_castsi512_ps(_mm512_set_epi16(
                0x4170, 0x4160, 0x4150, 0x4140, 0x4130, 0x4120, 0x4110, 0x4100, 0x40E0, 0x40C0,
                0x40A0, 0x4080, 0x4040, 0x4000, 0x3F80, 0x0000, 0x4170, 0x4160, 0x4150, 0x4140,
                0x4130, 0x4120, 0x4110, 0x4100, 0x40E0, 0x40C0, 0x40A0, 0x4080, 0x4040, 0x4000,
                0x3F80, 0x0000))
          : _mm512_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, -0.0f, -0.5f, -1.0f,
                           -1.5f, -2.0f, -3.0f, -4.0f, -6.0f);
  const float* x[R];
  for (int r = 0; r < R; ++r) x[r] = (kScaled ? a.x_scaled : a.x) + r * a.x_stride;
  const int64_t words_per_group = a.group_size / kCpl;
  const int64_t words_per_tile = a.codes_stride / kTileN;
  __m512 y[R][T];
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) y[r][t] = _mm512_setzero_ps();
  }
  for (int64_t g = 0; g < a.groups; ++g) {
    __m512 acc[R][T];
    for (int r = 0; r < R; ++r) {
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
    }
    const uint32_t* codes = a.codes + g * words_per_group * kTileN;
    int64_t k = g * a.group_size;
    for (int64_t j = 0; j < words_per_group; ++j) {
      __m512i w[T];
      const uint32_t* p[T];
      for (int t = 0; t < T; ++t) {
        p[t] = codes + t * a.codes_stride;
        w[t] = _mm512_loadu_si512(p[t]);
      }
      if constexpr (R == 1) {
        const int64_t word = g * words_per_group + j;
        PrefetchCodes<2>(a, T, words_per_tile, word + kPrefetchAheadWords);
        PrefetchCodes<3>(a, T, words_per_tile, word + kPrefetchL1AheadWords);
      }
      codes += kTileN;
      Step<B, D, kScaled, R, T, 0>(p, w, x, k, acc, lut);
      k += kCpl;
    }
    if constexpr (R == 1) {
      // The scales and biases of the group kParamAheadGroups ahead, into L2
      // (past the block's last group: the next block's first).
      const uintptr_t at =
          static_cast<uintptr_t>((g + kParamAheadGroups) * kBlockStride * a.scale_bytes);
      for (int line = 0; line < T * kTileN * a.scale_bytes; line += 64) {
        const uintptr_t scales = reinterpret_cast<uintptr_t>(a.scales) + at + line;
        _mm_prefetch(reinterpret_cast<const char*>(scales), _MM_HINT_T1);
        if (a.biases != nullptr) {
          const uintptr_t biases = reinterpret_cast<uintptr_t>(a.biases) + at + line;
          _mm_prefetch(reinterpret_cast<const char*>(biases), _MM_HINT_T1);
        }
      }
    }
    // Fold the group into y.
    for (int t = 0; t < T; ++t) {
      const __m512 s = LoadParams(a.scales, a.scale_type, g * kBlockStride + t * kTileN);
      for (int r = 0; r < R; ++r) y[r][t] = _mm512_fmadd_ps(s, acc[r][t], y[r][t]);
      if (a.biases != nullptr) {
        const __m512 b = LoadParams(a.biases, a.scale_type, g * kBlockStride + t * kTileN);
        for (int r = 0; r < R; ++r) {
          y[r][t] = _mm512_fmadd_ps(b, _mm512_set1_ps(a.xsum[r * a.xsum_stride + g]), y[r][t]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) _mm512_storeu_ps(a.y + r * a.y_stride + t * kTileN, y[r][t]);
  }
}

template <int B, Decode D, bool kScaled, int R>
void ByTiles(const TileArgs& a) {
  // Measured on Zen 4 (N=K=4096, 4-bit): 8 rows x 1 tile beat 4 x 2, 4 x 4
  // and 8 x 2 (which spills); one row needs several tiles for independent
  // FMA chains.
  constexpr int kT = R <= 2 ? 4 : R <= 4 ? 2 : 1;
  int done = 0;
  while (done < a.tiles) {
    const TileArgs part = FromTile(a, done);
    const int left = a.tiles - done;
    if (left >= kT) {
      Kernel<B, D, kScaled, R, kT>(part);
      done += kT;
    } else if (left >= 2) {
      Kernel<B, D, kScaled, R, 2>(part);
      done += 2;
    } else {
      Kernel<B, D, kScaled, R, 1>(part);
      done += 1;
    }
  }
}

// One register block of exactly `rows` rows (1 .. R).
template <int B, Decode D, bool kScaled, int R = kMaxRows>
void RowBlock(const TileArgs& a, int rows) {
  if constexpr (R > 1) {
    if (rows < R) return RowBlock<B, D, kScaled, R - 1>(a, rows);
  }
  ByTiles<B, D, kScaled, R>(a);
}

// Rows in blocks of 8, then one block of the 1 to 7 left (with 1 to 4
// rows, several tiles per block): every row still sees the same per-output
// sequence, only the register blocking changes. (The rest as blocks of 4,
// 2, 1: 29 rows on 2 threads measured 5 % slower.)
template <int B, Decode D, bool kScaled>
void ByRows(const TileArgs& a) {
  for (int done = 0; done < a.rows;) {
    const int rows = std::min(a.rows - done, kMaxRows);
    RowBlock<B, D, kScaled>(FromRow(a, done), rows);
    done += rows;
  }
}

template <int B>
void IntCodes(const TileArgs& a) {
  if (a.x_scaled != nullptr) return ByRows<B, Decode::kInt, true>(a);
  return ByRows<B, Decode::kInt, false>(a);
}

}  // namespace

bool PrescaleAvx512(const float* x, int64_t n, int lane_bits, float* x_scaled) {
  const int cpl = 32 / lane_bits;
  float factor[16];
  for (int i = 0; i < 16; ++i) {
    const int code = i % cpl;
    // Powers of two, so every product below is exact for |x| >= 2^-96.
    const int shift = lane_bits == 4 && code % 2 == 0 ? 0 : lane_bits * code;
    factor[i] = 1.0f / static_cast<float>(1u << shift);
  }
  const __m512 f = _mm512_loadu_ps(factor);
  const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
  const __m512i tiny_limit = _mm512_set1_epi32(0x0F800000);  // bits of 2^-96
  __mmask16 tiny = 0;
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __m512i bits = _mm512_and_si512(_mm512_castps_si512(v), abs_mask);
    // 0 < |v| < 2^-96, comparing the bits as integers.
    tiny |= _mm512_mask_cmplt_epi32_mask(_mm512_test_epi32_mask(bits, bits), bits, tiny_limit);
    _mm512_storeu_ps(x_scaled + i, _mm512_mul_ps(v, f));
  }
  return tiny == 0;
}

void TileKernelAvx512(const TileArgs& a) {
  if (a.decode == Decode::kFp4) return ByRows<4, Decode::kFp4, false>(a);
  if (a.decode == Decode::kFp8) return ByRows<8, Decode::kFp8, false>(a);
  if (a.lane_bits == 2) return IntCodes<2>(a);
  if (a.lane_bits == 4) return IntCodes<4>(a);
  return IntCodes<8>(a);
}

}  // namespace qlinear::kernels
