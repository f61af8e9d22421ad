// The AVX-512 panel kernel for EXACT products of many rows (compiled with
// -mavx512f -mavx512bw -mfma; only called when the CPU has AVX-512F and BW).
//
// The tile kernel (qmm_avx512.cc) decodes codes in registers and shares
// each decoded vector among at most 8 rows: on a core where the vector
// ALU work of the decode competes with the FMAs for the same ports (Intel's
// 512-bit pipes), that costs many-row products a fifth of their speed.
// Here a pair of tiles (32 outputs) has one group of codes decoded once
// into a small panel of float32 values, [group_size][32], which stays in
// L1, and a register-blocked micro-kernel (12 rows x 32 outputs of
// accumulators) runs every row of the call over it.
//
// The arithmetic is kernel_args.h's sequence, operation for operation:
// each group is summed from a fresh accumulator over the exact code values
// (the products x[k] * v(code) are those of the tile kernel, whose
// pre-scaled x times a code masked in place is the same exact product),
// k ascending, then folded in with the same two fused multiply-adds. Only
// the order of the loops over rows, groups and outputs differs, and no
// output's operations depend on it: the two kernels give the same bits
// (qmm_test checks every format against the scalar oracle through both).
// The outputs' partial sums live in y between groups.
//
// Measured (docs/performance.md): 13-14 % slower than the tile kernel at
// M = 128 on a 16-core Xeon, more at fewer rows, and no clear win on Zen 5,
// so it runs only when asked for (qmm.h's KernelStrategy). What it costs beyond the
// micro-kernel, which alone reaches the FMA peak here: a fold of 24
// accumulators through memory per group of 64 inputs, the panel decode and
// the copy of each row block's inputs.
// Self-contained: no functions with external linkage shared with other
// translation units.
#include <immintrin.h>

#include "core/kernels/kernel_args.h"
#include "core/kernels/simd_params.h"

namespace qlinear::kernels {
namespace {

constexpr int kPanelTiles = 2;
constexpr int kPanelN = kPanelTiles * kTileN;
constexpr int kPanelRows = 12;
// The largest group (kernel_args.h's formats: 32, 64 or 128 inputs).
constexpr int kMaxGroup = 128;

// The code in bits [I*B, I*B+B) of each lane of w, as its float32 value.
template <int B, Decode D, int I>
__attribute__((always_inline)) inline __m512 DecodeCode(__m512i w, __m512 lut) {
  __m512i c = _mm512_srli_epi32(w, I * B);
  if constexpr ((I + 1) * B < 32) c = _mm512_and_si512(c, _mm512_set1_epi32((1 << B) - 1));
  // (Codes of 8-bit lanes reach 255 at most: the signed conversion in
  // DecodeLane is exact.)
  return DecodeLane<D>(c, lut);
}

template <int B, Decode D, int I>
__attribute__((always_inline)) inline void DecodeWord(__m512i w, __m512 lut, float* out) {
  if constexpr (I < 32 / B) {
    _mm512_store_ps(out + I * kPanelN, DecodeCode<B, D, I>(w, lut));
    DecodeWord<B, D, I + 1>(w, lut, out);
  }
}

// Decodes group g of the pair of tiles starting at `codes` into
// panel[k][32]: k within the group, the first tile's 16 outputs, then the
// second's.
template <int B, Decode D>
void DecodePanel(const TileArgs& a, const uint32_t* codes, int64_t g, __m512 lut,
                 float* panel) {
  constexpr int kCpl = 32 / B;
  const int64_t words = a.group_size / kCpl;
  for (int t = 0; t < kPanelTiles; ++t) {
    const uint32_t* p = codes + t * a.codes_stride + g * words * kTileN;
    for (int64_t j = 0; j < words; ++j) {
      DecodeWord<B, D, 0>(_mm512_loadu_si512(p + j * kTileN), lut,
                          panel + j * kCpl * kPanelN + t * kTileN);
    }
  }
}

// R rows (R <= kPanelRows) x 32 outputs over one group's panel, folded
// into y (zero before the first group). x holds the R rows' inputs of the
// group, row r at x + r * group_size.
template <int R>
__attribute__((always_inline)) inline void Micro(const float* panel, int64_t group_size,
                                                 const float* x, float* y, int64_t y_stride,
                                                 const __m512* s, const __m512* b,
                                                 const float* xsum, int64_t xsum_stride,
                                                 bool first) {
  __m512 acc[R][kPanelTiles];
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < kPanelTiles; ++t) acc[r][t] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < group_size; ++k) {
    const __m512 p0 = _mm512_load_ps(panel + k * kPanelN);
    const __m512 p1 = _mm512_load_ps(panel + k * kPanelN + kTileN);
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_set1_ps(x[r * group_size + k]);
      acc[r][0] = _mm512_fmadd_ps(xv, p0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(xv, p1, acc[r][1]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < kPanelTiles; ++t) {
      float* out = y + r * y_stride + t * kTileN;
      __m512 v = first ? _mm512_setzero_ps() : _mm512_loadu_ps(out);
      v = _mm512_fmadd_ps(s[t], acc[r][t], v);
      if (b != nullptr) v = _mm512_fmadd_ps(b[t], _mm512_set1_ps(xsum[r * xsum_stride]), v);
      _mm512_storeu_ps(out, v);
    }
  }
}

// The R rows of one row block over both panels of the block.
template <int R>
__attribute__((always_inline)) inline void RowBlock(const TileArgs& a, const float* panels,
                                                    const float* x, float* y, const __m512* s,
                                                    const __m512* b, const float* xsum,
                                                    bool first) {
  for (int pair = 0; pair < kBlockTiles / kPanelTiles; ++pair) {
    Micro<R>(panels + pair * kMaxGroup * kPanelN, a.group_size, x, y + pair * kPanelN,
             a.y_stride, s + pair * kPanelTiles, b == nullptr ? nullptr : b + pair * kPanelTiles,
             xsum, a.xsum_stride, first);
  }
}

template <int B, Decode D>
void Panel(const TileArgs& a) {
  static_assert(kBlockTiles % kPanelTiles == 0);
  const __m512 lut = _mm512_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, -0.0f, -0.5f,
                                    -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f);
  constexpr int kPairs = kBlockTiles / kPanelTiles;
  alignas(64) float panels[kPairs * kMaxGroup * kPanelN];
  // A row block's inputs of one group, copied together: rows k floats
  // apart fall into the same few L1 sets (k = 4096: 16 KiB apart), and a
  // 12-row micro-kernel then loses its lines to conflicts.
  alignas(64) float xg[kPanelRows * kMaxGroup];
  const int64_t gs = a.group_size;
  for (int64_t g = 0; g < a.groups; ++g) {
    __m512 s[kBlockTiles], b[kBlockTiles];
    for (int t = 0; t < kBlockTiles; ++t) {
      s[t] = LoadParams(a.scales, a.scale_type, g * kBlockStride + t * kTileN);
      if (a.biases != nullptr) {
        b[t] = LoadParams(a.biases, a.scale_type, g * kBlockStride + t * kTileN);
      }
    }
    for (int pair = 0; pair < kPairs; ++pair) {
      DecodePanel<B, D>(a, a.codes + pair * kPanelTiles * a.codes_stride, g, lut,
                        panels + pair * kMaxGroup * kPanelN);
    }
    const __m512* bp = a.biases != nullptr ? b : nullptr;
    const bool first = g == 0;
    for (int r = 0; r < a.rows; r += kPanelRows) {
      const int n = a.rows - r < kPanelRows ? a.rows - r : kPanelRows;
      for (int i = 0; i < n; ++i) {
        const float* from = a.x + (r + i) * a.x_stride + g * gs;
        for (int64_t k = 0; k < gs; k += 16) {
          _mm512_store_ps(xg + i * gs + k, _mm512_loadu_ps(from + k));
        }
      }
      float* y = a.y + r * a.y_stride;
      const float* xsum = a.xsum + r * a.xsum_stride + g;
      switch (n) {
#define QLINEAR_PANEL_ROWS(rows)                              \
  case rows:                                                  \
    RowBlock<rows>(a, panels, xg, y, s, bp, xsum, first); \
    break;
        QLINEAR_PANEL_ROWS(1)
        QLINEAR_PANEL_ROWS(2)
        QLINEAR_PANEL_ROWS(3)
        QLINEAR_PANEL_ROWS(4)
        QLINEAR_PANEL_ROWS(5)
        QLINEAR_PANEL_ROWS(6)
        QLINEAR_PANEL_ROWS(7)
        QLINEAR_PANEL_ROWS(8)
        QLINEAR_PANEL_ROWS(9)
        QLINEAR_PANEL_ROWS(10)
        QLINEAR_PANEL_ROWS(11)
        QLINEAR_PANEL_ROWS(12)
#undef QLINEAR_PANEL_ROWS
        default:
          break;
      }
    }
  }
}

}  // namespace

void PanelKernelAvx512(const TileArgs& a) {
  if (a.decode == Decode::kFp4) return Panel<4, Decode::kFp4>(a);
  if (a.decode == Decode::kFp8) return Panel<8, Decode::kFp8>(a);
  if (a.lane_bits == 2) return Panel<2, Decode::kInt>(a);
  if (a.lane_bits == 4) return Panel<4, Decode::kInt>(a);
  return Panel<8, Decode::kInt>(a);
}

}  // namespace qlinear::kernels
