// The INT8 tile kernel for AVX-512 with VNNI (compiled with -mavx512f
// -mavx512bw -mavx512vnni; only called when the CPU has AVX512-VNNI). It
// computes exactly the INT8 sequence of kernel_args.h, bit for bit as
// TileKernelInt8Portable (qmm_int8.cc):
//
// One __m512i holds one word of a tile's 16 outputs. For sub-position i of
// the word, the 4 bytes of each lane hold the lane's codes for the 4
// inputs j*cpl + b*npos + i (b = 0..3), which the prepared input keeps
// side by side at j*cpl + i*4: vpdpbusd multiplies the 4 unsigned codes by
// the 4 broadcast signed int8 inputs and adds the 4 products to the lane's
// int32 sum, exactly (|sum| < 2^24, no saturation in the non-"s" form).
// Integer sums are exact and associative, so any order or split of them
// gives the same P; only the float folds are fixed, and they are performed
// per lane exactly as the definition states: at each 16-input block's end
// acc = fma(d, float(P), acc), at each group's end (times 0.5 for fp4)
// the two fmas into y.
//
// Codes are decoded once per word and shared by up to 8 rows: integer
// codes of 2 or 4 bits are shifted and masked within bytes, 8-bit lanes
// are the codes themselves, and E2M1 codes go through a vpshufb table of
// 2·E2M1 + 12 (0..24; the definition subtracts 12·qsum, here by starting
// each block's integer sum at -12·qsum).
// Self-contained on purpose: no functions with external linkage shared
// with other translation units (kernel_args.h's helpers are static).
#include <immintrin.h>

#include <cstring>
#include <utility>

#include "core/kernels/kernel_args.h"
#include "core/kernels/simd_params.h"

namespace qlinear::kernels {
namespace {

// The four int8 inputs of one sub-position, as one int32 in every lane.
__attribute__((always_inline)) inline __m512i Broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// Sub-position I of word w: each byte's code, as an unsigned byte.
template <int B, bool kFp4, int I>
__attribute__((always_inline)) inline __m512i Codes(__m512i w, __m512i lut) {
  if constexpr (B == 8) {
    (void)lut;
    return w;
  } else {
    const __m512i mask = _mm512_set1_epi8(static_cast<char>((1 << B) - 1));
    const __m512i c = _mm512_and_si512(I == 0 ? w : _mm512_srli_epi32(w, I * B), mask);
    if constexpr (kFp4) {
      return _mm512_shuffle_epi8(lut, c);
    } else {
      (void)lut;
      return c;
    }
  }
}

// Integer sums per row and tile of one block (restarted per block, so a
// chain is the block's 4 vpdpbusd at most; consecutive blocks are
// independent and overlap out of order).
template <int B, bool kFp4, int R, int T, int I>
__attribute__((always_inline)) inline void Step(const __m512i* w, const int8_t* const* xq,
                                                int64_t at, __m512i (*iacc)[T], __m512i lut) {
  constexpr int kNpos = 8 / B;
  if constexpr (I < kNpos) {
    __m512i c[T];
    for (int t = 0; t < T; ++t) c[t] = Codes<B, kFp4, I>(w[t], lut);
    for (int r = 0; r < R; ++r) {
      const __m512i xb = Broadcast4(xq[r] + at + I * 4);
      for (int t = 0; t < T; ++t) iacc[r][t] = _mm512_dpbusd_epi32(iacc[r][t], c[t], xb);
    }
    Step<B, kFp4, R, T, I + 1>(w, xq, at, iacc, lut);
  }
}

// Scales and biases of the group this many ahead are prefetched by one
// row, as the EXACT kernel does (qmm_avx512.cc).
constexpr int kParamAheadGroups = 2;

// R rows x T tiles: per row and tile an int32 sum (one block), a float
// sum (one group) and the output, all in registers (R·T <= 8: 24 of the
// 32 zmm). kBpg: blocks per group when known at compile time (every
// format's group sizes; the group's blocks are then unrolled), 0 for any.
// A block is always kInt8Block / cpl words (2, 1, 4 for 4-, 2-, 8-bit
// lanes), unrolled.
template <int B, bool kFp4, int R, int T, int kBpg>
void Kernel(const TileArgs& a) {
  constexpr int kCpl = 32 / B;
  constexpr int kWpb = kInt8Block / kCpl;
  // 2·E2M1 + 12 for each 4-bit code (the table repeats per 128-bit lane).
  alignas(64) static constexpr int8_t kLut[64] = {
      12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0,
      12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0,
      12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0,
      12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0};
  const __m512i lut = _mm512_load_si512(kLut);
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
  __m512 y[R][T];
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) y[r][t] = _mm512_setzero_ps();
  }
  for (int64_t g = 0; g < a.groups; ++g) {
    __m512 facc[R][T];
    for (int r = 0; r < R; ++r) {
      for (int t = 0; t < T; ++t) facc[r][t] = _mm512_setzero_ps();
    }
    // Block blk: P from -12·qsum (fp4) or 0, then acc = fma(d, float(P), acc).
    auto block = [&](int64_t blk) __attribute__((always_inline)) {
      __m512i iacc[R][T];
      for (int r = 0; r < R; ++r) {
        const __m512i init =
            kFp4 ? _mm512_set1_epi32(-12 * xqsum[r][blk]) : _mm512_setzero_si512();
        for (int t = 0; t < T; ++t) iacc[r][t] = init;
      }
#pragma GCC unroll 4
      for (int j = 0; j < kWpb; ++j) {
        const int64_t word = blk * kWpb + j;
        __m512i w[T];
        for (int t = 0; t < T; ++t) {
          w[t] = _mm512_loadu_si512(a.codes + t * a.codes_stride + word * kTileN);
        }
        if constexpr (R == 1) {
          PrefetchCodes<2>(a, T, words_per_tile, word + kPrefetchAheadWords);
          PrefetchCodes<3>(a, T, words_per_tile, word + kPrefetchL1AheadWords);
        }
        Step<B, kFp4, R, T, 0>(w, xq, word * kCpl, iacc, lut);
      }
      for (int r = 0; r < R; ++r) {
        const __m512 d = _mm512_set1_ps(xd[r][blk]);
        for (int t = 0; t < T; ++t) {
          facc[r][t] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(iacc[r][t]), facc[r][t]);
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
    if constexpr (R == 1) {
      const uintptr_t ahead =
          static_cast<uintptr_t>((g + kParamAheadGroups) * kBlockStride * a.scale_bytes);
      for (int line = 0; line < T * kTileN * a.scale_bytes; line += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(a.scales) +
                                                   ahead + line),
                     _MM_HINT_T1);
        if (a.biases != nullptr) {
          _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(a.biases) +
                                                     ahead + line),
                       _MM_HINT_T1);
        }
      }
    }
    // Fold the group: [acc · 0.5,] y = fma(scale, acc, y), then (affine)
    // y = fma(bias, xsum, y).
    for (int t = 0; t < T; ++t) {
      const __m512 s = LoadParams(a.scales, a.scale_type, g * kBlockStride + t * kTileN);
      __m512 b = _mm512_setzero_ps();
      if (a.biases != nullptr) b = LoadParams(a.biases, a.scale_type, g * kBlockStride + t * kTileN);
      for (int r = 0; r < R; ++r) {
        __m512 acc = facc[r][t];
        if constexpr (kFp4) acc = _mm512_mul_ps(acc, _mm512_set1_ps(0.5f));
        y[r][t] = _mm512_fmadd_ps(s, acc, y[r][t]);
        if (a.biases != nullptr) {
          y[r][t] = _mm512_fmadd_ps(b, _mm512_set1_ps(a.xsum[r * a.xsum_stride + g]), y[r][t]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) _mm512_storeu_ps(a.y + r * a.y_stride + t * kTileN, y[r][t]);
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

// kT tiles at a time, then 2, then 1.
template <int B, bool kFp4, int R, int kT>
void ByTilesT(const TileArgs& a) {
  int done = 0;
  while (done < a.tiles) {
    const TileArgs part = FromTile(a, done);
    const int left = a.tiles - done;
    if (left >= kT) {
      ByGroup<B, kFp4, R, kT>(part);
      done += kT;
    } else if (left >= 2 && kT > 2) {
      ByGroup<B, kFp4, R, 2>(part);
      done += 2;
    } else {
      ByGroup<B, kFp4, R, 1>(part);
      done += 1;
    }
  }
}

// 4 and 2 rows take 2 tiles (R·T <= 8: the block and group sums and the
// outputs stay in registers); one row 4 tiles, for independent chains and
// code streams. No 8-row block: 8 x 1 (each x broadcast feeding one
// vpdpbusd; GCC spilled row pointers and the code word) measured
// on this host's Zen (N=K=4096, 2 threads, M=128, alternating with EXACT)
// 5.4 ms affine b4 g64 and 7.5-8.7 ms mxfp4, against 4.7-5.0 and 5.0-8.0
// for 4 x 2.
template <int B, bool kFp4, int R>
void ByTiles(const TileArgs& a) {
  ByTilesT<B, kFp4, R, R == 1 ? 4 : 2>(a);
}

// Rows in blocks of 4, then 2, 1: every row still sees the same
// per-output sequence, only the register blocking changes.
template <int B, bool kFp4>
void ByRows(const TileArgs& a) {
  int done = 0;
  while (done < a.rows) {
    const TileArgs part = FromRow(a, done);
    const int left = a.rows - done;
    if (left >= 4) {
      ByTiles<B, kFp4, 4>(part);
      done += 4;
    } else if (left >= 2) {
      ByTiles<B, kFp4, 2>(part);
      done += 2;
    } else {
      ByTiles<B, kFp4, 1>(part);
      done += 1;
    }
  }
}

}  // namespace

void TileKernelInt8Avx512Vnni(const TileArgs& a) {
  if (a.decode == Decode::kFp4) return ByRows<4, true>(a);
  if (a.lane_bits == 2) return ByRows<2, false>(a);
  if (a.lane_bits == 4) return ByRows<4, false>(a);
  return ByRows<8, false>(a);
}

}  // namespace qlinear::kernels
