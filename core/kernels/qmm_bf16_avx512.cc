// The BF16 precision's AVX-512 tile kernel (compiled with -mavx512f
// -mavx512bw -mavx512bf16; only called when the CPU has AVX512-BF16). One
// __m512 holds a tile's 16 outputs; vdpbf16ps performs, on each 32-bit
// lane, exactly the two steps of kernel_args.h's BF16 sequence for one
// pair of codes (hi first), so every lane computes the scalar sequence.
// (The instruction rounds as if the exponent were unbounded and then
// flushes results below 2^-126, x86's flush-to-zero; kernel_args.h rounds
// subnormals first. The two differ only for exact sums within 2^-150 below
// 2^-126 that are not multiples of 2^-149, and here every product of a
// bfloat16 input and a code value is a multiple of 2^-142, every sum of
// 2^-149. qmm_bf16_test checks the instruction on both kinds of operands,
// on Zen 5 and on an Intel Xeon with AMX.)
//
// A word's pairs (code i, code i + cpl/2) are decoded into vectors of
// bfloat16 pairs once and shared by every row of the call; each row's
// prepared input pair is broadcast from memory into the instruction. So a
// 4-bit word costs per tile 4 lookups (vpermw on the word shifted by 4i: the
// low 5 bits of each 16-bit half index a 32-entry table of bfloat16 values
// whose entry e is v(e mod 16), so the pair comes out in one instruction,
// lo in the low half) and per row 4 vdpbf16ps, where the EXACT kernel
// spends 8 FMAs. 2-bit codes: 8 lookups (entry e = e mod 4), 8 dot steps.
// Byte codes (affine 3/5/6/8 bits, E4M3) decode each byte to float32 (exact
// in bfloat16: at most 8 significant bits, so the low 16 bits are zero) and
// join two as (f(hi) | f(lo) >> 16).
// Self-contained on purpose: no functions with external linkage shared
// with other translation units (kernel_args.h's helpers are static).
#include <immintrin.h>

#include "core/kernels/kernel_args.h"
#include "core/kernels/simd_params.h"

namespace qlinear::kernels {
namespace {

// The 32-entry bfloat16 table of 16-bit-lane lookups: entry e holds
// v(e mod 2^B) (the code in the low B bits; the bits above belong to the
// next code).
template <int B, Decode D>
__m512i PairTable() {
  alignas(64) uint16_t t[32];
  for (int e = 0; e < 32; ++e) {
    const int code = e & ((1 << B) - 1);
    float v = static_cast<float>(code);
    if constexpr (D == Decode::kFp4) {
      constexpr float kE2m1[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
      v = (code & 8) ? -kE2m1[code & 7] : kE2m1[code & 7];
    }
    uint32_t bits;
    __builtin_memcpy(&bits, &v, 4);
    t[e] = static_cast<uint16_t>(bits >> 16);  // exact: at most 4 significant bits
  }
  return _mm512_load_si512(t);
}

// E4M3 byte `I` of each lane to float32, from a load that puts that byte at
// the top of each lane (w itself for byte 3): an arithmetic shift by 4 puts
// the sign at bit 31 and the 7 magnitude bits at 26..20, read as float that
// is 2^-120 times the value (subnormals included), and the multiply by
// 2^120 is exact (the EXACT kernel's decode).
template <int I>
__attribute__((always_inline)) inline __m512i Fp8Byte(const uint32_t* p, __m512i w) {
  __m512i c = I == 3 ? w : _mm512_loadu_si512(reinterpret_cast<const char*>(p) + (I - 3));
  c = _mm512_and_si512(_mm512_srai_epi32(c, 4), _mm512_set1_epi32(static_cast<int>(0x87F00000u)));
  return _mm512_castps_si512(_mm512_mul_ps(_mm512_castsi512_ps(c), _mm512_set1_ps(0x1p120f)));
}

// Unsigned byte `I` of each lane to float32: bytes 1 and 2 from loads that
// put them at the bottom of each lane (a load instead of a shift), byte 3
// shifted down.
template <int I>
__attribute__((always_inline)) inline __m512i IntByte(const uint32_t* p, __m512i w) {
  __m512i c;
  if constexpr (I == 0) {
    c = w;
  } else if constexpr (I == 3) {
    c = _mm512_srli_epi32(w, 24);
  } else {
    c = _mm512_loadu_si512(reinterpret_cast<const char*>(p) + I);
  }
  if constexpr (I < 3) c = _mm512_and_si512(c, _mm512_set1_epi32(0xFF));
  return _mm512_castps_si512(_mm512_cvtepi32_ps(c));
}

// Pair I of a word (codes I and I + cpl/2) as bfloat16 pairs, lo in the
// low 16 bits of each lane.
template <int B, Decode D, int I>
__attribute__((always_inline)) inline __m512i DecodePair(const uint32_t* p, __m512i w,
                                                         __m512i table) {
  if constexpr (B == 8) {
    __m512i lo, hi;
    if constexpr (D == Decode::kFp8) {
      lo = Fp8Byte<I>(p, w);
      hi = Fp8Byte<I + 2>(p, w);
    } else {
      lo = IntByte<I>(p, w);
      hi = IntByte<I + 2>(p, w);
    }
    return _mm512_or_si512(hi, _mm512_srli_epi32(lo, 16));
  } else {
    const __m512i idx = I == 0 ? w : _mm512_srli_epi32(w, I * B);
    return _mm512_permutexvar_epi16(idx, table);
  }
}

template <int B, Decode D, int R, int T, int I>
__attribute__((always_inline)) inline void Step(const uint32_t* const* p, const __m512i* w,
                                                const uint32_t* const* x, int64_t pair,
                                                __m512 (*acc)[T], __m512i table) {
  if constexpr (I < 16 / B) {
    __m512i v[T];
    for (int t = 0; t < T; ++t) v[t] = DecodePair<B, D, I>(p[t], w[t], table);
    for (int r = 0; r < R; ++r) {
      const __m512bh xb = (__m512bh)_mm512_set1_epi32(static_cast<int>(x[r][pair + I]));
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], xb, (__m512bh)v[t]);
    }
    Step<B, D, R, T, I + 1>(p, w, x, pair, acc, table);
  }
}

// Prefetching for one row as the EXACT kernel does (qmm_avx512.cc).
constexpr int kParamAheadGroups = 2;

template <int B, Decode D, int R, int T>
void Kernel(const TileArgs& a) {
  constexpr int kCpl = 32 / B;
  constexpr int kHalf = kCpl / 2;
  const __m512i table = B == 8 ? _mm512_setzero_si512() : PairTable<B, D>();
  const uint32_t* x[R];
  for (int r = 0; r < R; ++r) {
    x[r] = reinterpret_cast<const uint32_t*>(static_cast<const char*>(a.xp) + r * a.xp_stride);
  }
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
    int64_t pair = g * words_per_group * kHalf;
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
      Step<B, D, R, T, 0>(p, w, x, pair, acc, table);
      pair += kHalf;
    }
    if constexpr (R == 1) {
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
    // Fold the group into y (plain FMAs: no flush here).
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

template <int B, Decode D, int R>
void ByTiles(const TileArgs& a) {
  constexpr int kT = R == 8 ? 2 : 4;
  int done = 0;
  while (done < a.tiles) {
    const TileArgs part = FromTile(a, done);
    const int left = a.tiles - done;
    if (left >= kT) {
      Kernel<B, D, R, kT>(part);
      done += kT;
    } else if (left >= 2) {
      Kernel<B, D, R, 2>(part);
      done += 2;
    } else {
      Kernel<B, D, R, 1>(part);
      done += 1;
    }
  }
}

// Rows in blocks of 8, then 4, 2, 1: every row still sees the same per-output
// sequence, only the register blocking changes.
template <int B, Decode D>
void ByRows(const TileArgs& a) {
  int done = 0;
  while (done < a.rows) {
    const TileArgs part = FromRow(a, done);
    const int left = a.rows - done;
    if (left >= 8) {
      ByTiles<B, D, 8>(part);
      done += 8;
    } else if (left >= 4) {
      ByTiles<B, D, 4>(part);
      done += 4;
    } else if (left >= 2) {
      ByTiles<B, D, 2>(part);
      done += 2;
    } else {
      ByTiles<B, D, 1>(part);
      done += 1;
    }
  }
}

}  // namespace

void TileKernelBf16Avx512Bf16(const TileArgs& a) {
  if (a.decode == Decode::kFp4) return ByRows<4, Decode::kFp4>(a);
  if (a.decode == Decode::kFp8) return ByRows<8, Decode::kFp8>(a);
  if (a.lane_bits == 2) return ByRows<2, Decode::kInt>(a);
  if (a.lane_bits == 4) return ByRows<4, Decode::kInt>(a);
  return ByRows<8, Decode::kInt>(a);
}

}  // namespace qlinear::kernels
