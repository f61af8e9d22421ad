// The contract between the packed layout (packed_matrix.cc) and the
// per-target tile kernels (qmm_avx512.cc, qmm_avx2.cc, qmm_portable.cc).
//
// Layout of one tile of kTileN = 16 outputs: codes are 32-bit words, word j
// of lane l holds codes k = j*cpl .. j*cpl+cpl-1 of output tile*16+l, code i
// in bits [i*lane_bits, (i+1)*lane_bits) (cpl = 32 / lane_bits). Scales and
// biases are float32 [groups][16].
//
// Every kernel computes, for each output n and row m, exactly this sequence
// of IEEE float32 operations (fma = fused multiply-add, rounded once):
//   y = 0
//   for each group g ascending:
//     acc = 0
//     for k in g ascending: acc = fma(x[m][k], v(code[n][k]), acc)
//     y = fma(scale[n][g], acc, y)
//     if affine: y = fma(bias[n][g], xsum[m][g], y)
// where v() is the code itself (affine) or its E2M1 / E4M3 value, and
// xsum[m][g] is the sum of x[m][k] over g, accumulated in double (k
// ascending) and rounded once to float32. So a row's
// result never depends on the batch, the thread count or the SIMD target.
//
// This header is included by translation units compiled for different
// instruction sets: it must stay free of inline functions.
#ifndef QLINEAR_CORE_KERNELS_KERNEL_ARGS_H_
#define QLINEAR_CORE_KERNELS_KERNEL_ARGS_H_

#include <cstdint>

namespace qlinear::kernels {

constexpr int kTileN = 16;
// Rows and tiles one kernel call handles at most (register blocking: the
// rows share each decoded code, the tiles give independent FMA chains).
constexpr int kMaxRows = 8;
constexpr int kMaxTiles = 12;

enum class Decode : int {
  kInt = 0,  // the code is the value (affine)
  kFp4 = 1,  // E2M1 table
  kFp8 = 2,  // E4M3
};

struct TileArgs {
  // Tile i of this call starts at codes + i * codes_stride (words), at
  // scales/biases + i * groups * 16 and at y + i * 16.
  const uint32_t* codes;  // first tile's words: [k / cpl][16]
  const float* scales;    // [groups][16]
  const float* biases;    // [groups][16], null for fp modes
  const float* x;         // rows x [k], row stride x_stride
  // Optional, for Decode::kInt: x[k] * 2^-(lane_bits * (k % cpl)), the same
  // strides. Multiplying it by a code masked in place (q * 2^(lane_bits * i),
  // exact) gives exactly x[k] * q, one instruction cheaper than shifting.
  // Callers pass null when any |x| is so small (< 2^-96) that the scaling
  // would lose bits; then the kernel shifts.
  const float* x_scaled;
  const float* xsum;      // rows x [groups], row stride xsum_stride
  float* y;               // rows x [16] at row stride y_stride
  int64_t k;
  int64_t groups;
  int64_t group_size;
  int64_t x_stride;
  int64_t xsum_stride;
  int64_t y_stride;
  int64_t codes_stride;
  int rows;   // 1 .. kMaxRows
  int tiles;  // 1 .. kMaxTiles
  int lane_bits;  // 2, 4 or 8
  Decode decode;
};

// One entry point per target; each handles any valid TileArgs.
void TileKernelPortable(const TileArgs& args);
void TileKernelAvx2(const TileArgs& args);
void TileKernelAvx512(const TileArgs& args);

}  // namespace qlinear::kernels

#endif  // QLINEAR_CORE_KERNELS_KERNEL_ARGS_H_
