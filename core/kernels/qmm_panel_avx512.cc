// The AVX-512 panel kernel for EXACT products of many rows (compiled with
// -mavx512f -mavx512bw -mfma; only called when the CPU has AVX-512F and BW).
//
// The tile kernel (qmm_avx512.cc) decodes codes in registers and shares
// each decoded vector among at most 8 rows: on a core where the vector
// ALU work of the decode competes with the FMAs for the same ports (Intel's
// 512-bit pipes), that costs many-row products a fifth of their speed.
// Here a block's 4 tiles (64 outputs) have kChunkK inputs of codes decoded
// once per task (a block over a chunk of the call's rows, qmm.cc) into a panel of float32 values, [kChunkK][64] (256 KiB,
// which stays in L2), and a register-blocked micro-kernel (6 rows x 64
// outputs of accumulators: 4 panel loads and 6 broadcasts per 24 FMAs)
// runs every row of the task over it, each row's inputs read in place as
// one sequential stream.
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
// Measured (docs/performance.md, 2026-12-03): at M = 128 on a 16-core
// Xeon, 1-6 % faster than the tile kernel in three alternating rounds
// (5 % slower in another run), slower at M <= 32; 1.21-1.28x behind ONNX Runtime's fp32 compute in the
// same run. So it runs only
// when asked for (qmm.h's KernelStrategy). A micro-benchmark of this
// micro-kernel on an Emerald Rapids core: 84 % of the FMA peak with its
// panel in L1, 70 % with it in L2; the first design (one group decoded
// into an L1 panel for all the call's rows, 12 x 32 accumulators, each row
// block's inputs copied per group) was 13-14 % slower than the tile
// kernel there.
// Self-contained: no functions with external linkage shared with other
// translation units.
#include <immintrin.h>

#include <cstdlib>
#include <memory>
#include <new>

#include "core/kernels/kernel_args.h"
#include "core/kernels/simd_params.h"

namespace qlinear::kernels {
namespace {

// A block's 4 tiles (64 outputs) are decoded together: panel[k][64].
constexpr int kPanelN = kBlockTiles * kTileN;
// Rows of the micro-kernel: 6 rows x 4 tiles of accumulators (24
// registers, beside the 4 panel vectors of one k).
constexpr int kPanelRows = 6;
// Inputs decoded per panel: a whole number of groups of every size (16 for
// nvfp4, 32, 64 or 128), 256 KiB of float32 for the block, which stays in
// L2 while every row of the task runs over it.
constexpr int64_t kChunkK = 1024;
static_assert(kChunkK % 128 == 0);

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

// Decodes inputs [k0, k0 + n) of the block's 4 tiles into panel[k - k0][64]:
// the first tile's 16 outputs, then the second's, ...
template <int B, Decode D>
void DecodePanel(const TileArgs& a, int64_t k0, int64_t n, __m512 lut, float* panel) {
  constexpr int kCpl = 32 / B;
  for (int t = 0; t < kBlockTiles; ++t) {
    const uint32_t* p = a.codes + t * a.codes_stride + k0 / kCpl * kTileN;
    for (int64_t j = 0; j < n / kCpl; ++j) {
      DecodeWord<B, D, 0>(_mm512_loadu_si512(p + j * kTileN), lut,
                          panel + j * kCpl * kPanelN + t * kTileN);
    }
  }
}

// R rows (R <= kPanelRows) x 64 outputs over group g, whose decoded codes
// start at `panel`, folded into y (zero before the first group). Row r's
// inputs of the group start at x[r].
template <int R>
__attribute__((always_inline)) inline void Micro(const TileArgs& a, const float* panel,
                                                 const float* const* x, int64_t g, float* y) {
  __m512 acc[R][kBlockTiles];
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < kBlockTiles; ++t) acc[r][t] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < a.group_size; ++k) {
    __m512 v[kBlockTiles];
    for (int t = 0; t < kBlockTiles; ++t) v[t] = _mm512_load_ps(panel + k * kPanelN + t * kTileN);
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_set1_ps(x[r][k]);
      for (int t = 0; t < kBlockTiles; ++t) acc[r][t] = _mm512_fmadd_ps(xv, v[t], acc[r][t]);
    }
  }
  for (int t = 0; t < kBlockTiles; ++t) {
    const __m512 s = LoadParams(a.scales, a.scale_type, g * kBlockStride + t * kTileN);
    const __m512 b = a.biases != nullptr
                         ? LoadParams(a.biases, a.scale_type, g * kBlockStride + t * kTileN)
                         : _mm512_setzero_ps();
    for (int r = 0; r < R; ++r) {
      float* out = y + r * a.y_stride + t * kTileN;
      __m512 u = g == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(out);
      u = _mm512_fmadd_ps(s, acc[r][t], u);
      if (a.biases != nullptr) {
        u = _mm512_fmadd_ps(b, _mm512_set1_ps(a.xsum[r * a.xsum_stride + g]), u);
      }
      _mm512_storeu_ps(out, u);
    }
  }
}

// Rows [m, m + R) over the groups of one decoded chunk.
template <int R>
void RowBlock(const TileArgs& a, const float* panel, int64_t k0, int64_t n, int m) {
  const float* x[R];
  for (int r = 0; r < R; ++r) x[r] = a.x + (m + r) * a.x_stride + k0;
  TileArgs rows = a;
  rows.xsum = a.xsum + m * a.xsum_stride;
  float* y = a.y + m * a.y_stride;
  for (int64_t k = 0; k < n; k += a.group_size) {
    Micro<R>(rows, panel + k * kPanelN, x, (k0 + k) / a.group_size, y);
    for (int r = 0; r < R; ++r) x[r] += a.group_size;
  }
}

// The panel of a chunk (kChunkK x 64 floats), one per thread, allocated on
// the thread's first panel call and kept for its life (256 KiB each).
float* PanelBuffer() {
  struct Free {
    void operator()(float* p) const { ::operator delete(p, std::align_val_t{64}); }
  };
  // A failed allocation throws std::bad_alloc before the variable is
  // initialized, so the thread's next call tries again.
  thread_local std::unique_ptr<float, Free> buffer(static_cast<float*>(::operator new(
      static_cast<size_t>(kChunkK * kPanelN) * sizeof(float), std::align_val_t{64})));
  return buffer.get();
}

template <int B, Decode D>
void Panel(const TileArgs& a) {
  const __m512 lut = _mm512_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, -0.0f, -0.5f,
                                    -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f);
  float* panel = PanelBuffer();
  for (int64_t k0 = 0; k0 < a.k; k0 += kChunkK) {
    const int64_t n = a.k - k0 < kChunkK ? a.k - k0 : kChunkK;
    DecodePanel<B, D>(a, k0, n, lut, panel);
    int m = 0;
    for (; m + kPanelRows <= a.rows; m += kPanelRows) RowBlock<kPanelRows>(a, panel, k0, n, m);
    switch (a.rows - m) {
#define QLINEAR_PANEL_ROWS(rows)        \
  case rows:                            \
    RowBlock<rows>(a, panel, k0, n, m); \
    break;
      QLINEAR_PANEL_ROWS(1)
      QLINEAR_PANEL_ROWS(2)
      QLINEAR_PANEL_ROWS(3)
      QLINEAR_PANEL_ROWS(4)
      QLINEAR_PANEL_ROWS(5)
#undef QLINEAR_PANEL_ROWS
      default:
        break;
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
