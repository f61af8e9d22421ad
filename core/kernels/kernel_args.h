// The contract between the packed layout (PackedMatrix::Pack, qmm.cc) and the
// per-target tile kernels (qmm_avx512.cc, qmm_avx2.cc, qmm_portable.cc).
//
// Layout: outputs come in tiles of kTileN = 16, and tiles in blocks of
// kBlockTiles = 4 (the matrix is padded with zero tiles to whole blocks).
// Codes are 32-bit words, [tiles][k / cpl][16 lanes]: word j of lane l of a
// tile holds codes k = j*cpl .. j*cpl+cpl-1 of that output, code i in bits
// [i*lane_bits, (i+1)*lane_bits) (cpl = 32 / lane_bits). The codes start
// on a cache line, with a zero word (64 bytes) before and after them, so a
// kernel may load a word from a few bytes either side of its place.
// Scales and biases are stored per block with its tiles interleaved,
// [groups][4 tiles][16 lanes], so that a one-row call over a block reads
// them as two sequential streams beside its four code streams (a
// DRAM-bound one-row product needs few streams to keep the hardware
// prefetchers ahead). They are float32, float16 or bfloat16 (ScaleType:
// the narrowest that holds every value exactly; kernels widen them
// exactly).
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
// The opt-in precisions (core/precision.h; docs/formats.md) keep one
// sequence each too. Both read the input prepared once per call
// (PrepareInt8 in qmm_int8.cc, PrepareBf16 in qmm_bf16.cc) in the order a word's codes are
// consumed. A word of lane_bits B holds cpl = 32 / B codes, npos = 8 / B to
// a byte; "sub-position i" of a word is bits i*B .. i*B+B-1 of each of its
// four bytes, the codes k = j*cpl + b*npos + i for bytes b = 0..3.
//
// INT8 (Decode kInt and kFp4; kFp8 runs BF16). The input is quantized in
// blocks of kInt8Block = 16 consecutive k (whatever the weight group: with
// the group of 64 or 128 as the block, the input's rounding alone came to
// 0.6-0.7 % relative RMS, and over 0.7 % on several golden files). Per row
// and block b:
//   amax = max |x[k]| over b; d[b] = amax / 127 (float32 division);
//   q[k] = clamp(round_half_even(x[k] / d[b]), -127, 127), 0 when amax == 0
//   (when d rounds to 0 for a nonzero amax, x / d is ±Inf or NaN and
//   clamps to ±127; such a block adds d·P = 0); when amax is not finite
//   (Inf or NaN in the block), d[b] = NaN and q = 0.
//   qsum[b] = Σ q[k] over b.
// Weight integer c[n][k]: the code (affine), or 2·E2M1 + 12 (fp4: 0..24).
// Per output and group g:
//   acc = 0
//   for each block b of g ascending:
//     P = Σ_{k in b} q[k]·c[n][k] (exact, int32), minus 12·qsum[b] for fp4,
//         so P = Σ q·code (affine) or Σ q·2·E2M1 (fp4)
//     acc = fma(d[b], float(P), acc)          (float(P) exact: |P| < 2^24)
//   fp4: acc = acc * 0.5 (the codes were doubled)
//   y = fma(scale[n][g], acc, y); if affine: y = fma(bias[n][g], xsum[m][g], y)
// with xsum[m][g] = the sum over g's blocks ascending of
// fma(d[b], float(qsum[b]), xsum), from 0: the sum of the input the
// products saw, so that the affine offset cancels as it does in
// x·dequantize(W)ᵀ (with the original x's sum instead, the error of
// Σ x·code would not cancel: 1.5 % relative RMS instead of 0.6 %).
// Prepared input: xp = int8 q, for word j the cpl bytes at j*cpl:
// sub-position i's four codes (bytes b = 0..3 of the word) at
// j*cpl + i*4 + b; xd = d and xqsum = qsum, rows x [k / kInt8Block] at row
// stride xd_stride. (A block is a whole number of words: 16 codes are 4, 2
// or 1 words of 8-, 4- or 2-bit lanes.)
//
// BF16 (every decode). xb = x rounded to bfloat16 (nearest even), then a
// subnormal bfloat16 taken as zero of its sign. Word j's codes are taken in
// pairs (lo = code i, hi = code i + cpl/2) for i = 0 .. cpl/2 - 1 (lo in
// bits i*B of the word, hi in bits 16 + i*B). Per output and group:
//   acc = 0
//   for each word j of g ascending, each pair i ascending:
//     acc = F(fma(xb[hi], v(hi code), acc)); acc = F(fma(xb[lo], v(lo code), acc))
//   y = fma(scale[n][g], acc, y); if affine: y = fma(bias[n][g], xsum[m][g], y)
// with xsum[m][g] the sum of xb over g (double, k ascending, rounded once),
// and where F flushes a subnormal to zero of its sign. That is what
// AVX512-BF16's vdpbf16ps computes on one 32-bit lane holding the pair
// (lo in the low 16 bits) for these operands: the products are exact in
// float32, each sum is rounded to nearest even, denormal inputs and
// results are zero. (The instruction rounds as if the exponent were
// unbounded and then flushes below 2^-126, which differs from F(fma) only
// for an exact sum within 2^-150 under 2^-126 that is not a multiple of
// 2^-149; here every product and so every sum is a multiple of 2^-149,
// since bfloat16 inputs are multiples of 2^-133 and codes of 2^-9. Checked
// on Zen 5 and Sapphire Rapids: qmm_bf16_test.)
// Prepared input: xp = uint32 pairs, word j's pair i at j*cpl/2 + i:
// bf16(x[j*cpl + i]) | bf16(x[j*cpl + i + cpl/2]) << 16.
//
// This header is included by translation units compiled for different
// instruction sets: it must stay free of functions with external linkage
// defined here (the linker could keep one unit's copy, compiled with
// AVX-512, for all). The helpers below are `static`: each unit keeps its
// own copies, compiled for its own target.
#ifndef QLINEAR_CORE_KERNELS_KERNEL_ARGS_H_
#define QLINEAR_CORE_KERNELS_KERNEL_ARGS_H_

#include <cstdint>

namespace qlinear::kernels {

constexpr int kTileN = 16;
// Inputs per INT8 block (its own scale d).
constexpr int kInt8Block = 16;
constexpr int kBlockTiles = 4;
// Elements between consecutive groups' scales (or biases) of one tile.
constexpr int kBlockStride = kBlockTiles * kTileN;
// Rows and tiles one kernel call handles at most (register blocking: the
// rows share each decoded code, the tiles give independent FMA chains). A
// call covers tiles of one block.
constexpr int kMaxRows = 8;
constexpr int kMaxTiles = kBlockTiles;

enum class Decode : int {
  kInt = 0,  // the code is the value (affine)
  kFp4 = 1,  // E2M1 table
  kFp8 = 2,  // E4M3
};

// How scales and biases are stored: 4 bytes (kF32) or 2 bytes per value.
enum class ScaleType : int {
  kF32 = 0,
  kF16 = 1,
  kBF16 = 2,
};

struct TileArgs {
  // Tile i of this call (i < tiles, all in one block) has word j at
  // codes + i * codes_stride + j * 16, group g's scales and biases at
  // element g * kBlockStride + i * 16, and its outputs at y + i * 16.
  const uint32_t* codes;
  const void* scales;     // of scale_type
  const void* biases;     // of scale_type, null for fp modes
  const float* x;         // rows x [k], row stride x_stride
  // Optional, Decode::kInt only, AVX-512 (any rows) or AVX2 (used for one
  // row): x pre-scaled by PrescaleAvx512 or PrescaleAvx2, the same
  // strides. Multiplying it by a code masked in place (q * 2^(lane_bits *
  // i), exact) gives exactly x[k] * q, one instruction cheaper than
  // shifting. Null when some |x| is so small that the scaling would lose
  // bits; then the kernel shifts.
  const float* x_scaled;
  const float* xsum;      // rows x [groups], row stride xsum_stride
  // INT8 and BF16 only: the prepared input (above), rows at xp_stride bytes,
  // and INT8's per-block d and qsum.
  const void* xp;
  int64_t xp_stride;
  const float* xd;        // INT8: rows x [k / kInt8Block], row stride xd_stride
  const int32_t* xqsum;   // the same shape
  int64_t xd_stride;
  float* y;               // rows x [16] at row stride y_stride
  int64_t k;
  int64_t groups;
  int64_t group_size;
  int64_t x_stride;
  int64_t xsum_stride;
  int64_t y_stride;
  int64_t codes_stride;  // words per tile
  int rows;   // 1 .. kMaxRows (PanelKernelAvx512: any, >= 1)
  int tiles;  // 1 .. kMaxTiles
  int lane_bits;  // 2, 4 or 8
  Decode decode;
  ScaleType scale_type;
  int scale_bytes;  // bytes per scale or bias: 4 for kF32, else 2
};

// The arguments of the same call from tile `first` of its block on, and
// from row `first` on: how a kernel splits a call into its register
// blocks.
static inline TileArgs FromTile(const TileArgs& a, int first) {
  TileArgs part = a;
  part.codes = a.codes + first * a.codes_stride;
  const int64_t offset = first * kTileN * a.scale_bytes;
  part.scales = static_cast<const char*>(a.scales) + offset;
  part.biases = a.biases == nullptr ? nullptr : static_cast<const char*>(a.biases) + offset;
  part.y = a.y + first * kTileN;
  part.tiles = a.tiles - first;
  return part;
}

static inline TileArgs FromRow(const TileArgs& a, int first) {
  TileArgs part = a;
  part.x = a.x + first * a.x_stride;
  part.x_scaled = a.x_scaled == nullptr ? nullptr : a.x_scaled + first * a.x_stride;
  part.xsum = a.xsum + first * a.xsum_stride;
  part.xp = a.xp == nullptr ? nullptr : static_cast<const char*>(a.xp) + first * a.xp_stride;
  part.xd = a.xd == nullptr ? nullptr : a.xd + first * a.xd_stride;
  part.xqsum = a.xqsum == nullptr ? nullptr : a.xqsum + first * a.xd_stride;
  part.y = a.y + first * a.y_stride;
  part.rows = a.rows - first;
  return part;
}

// A one-row call streams its codes from memory faster than the hardware
// prefetchers follow while the core computes, so the AVX-512 and AVX2
// kernels prefetch each of the call's code streams this many words (3 KB)
// ahead into L2, and the AVX-512 kernel also kPrefetchL1AheadWords ahead
// into L1 (measurements: qmm_avx512.cc).
constexpr int kPrefetchAheadWords = 48;
constexpr int kPrefetchL1AheadWords = 6;

// Prefetches word `word` of each of a call's `tiles` tiles, into L2
// (kLocality 2: prefetcht1 on x86) or L1 (3: prefetcht0); words past a
// tile's last (words_per_tile) continue with the next `tiles` tiles, which
// the caller runs next. The addresses are integers: past the last block
// they point at nothing (a prefetch never faults), which pointer
// arithmetic may not do.
template <int kLocality>
static inline void PrefetchCodes(const TileArgs& a, int tiles, int64_t words_per_tile,
                                 int64_t word) {
  const int64_t offset = word < words_per_tile
                             ? word * kTileN
                             : tiles * a.codes_stride + (word - words_per_tile) * kTileN;
  const uintptr_t first = reinterpret_cast<uintptr_t>(a.codes) + static_cast<uintptr_t>(offset) * 4;
  for (int t = 0; t < tiles; ++t) {
    __builtin_prefetch(
        reinterpret_cast<const void*>(first + static_cast<uintptr_t>(t * a.codes_stride) * 4), 0,
        kLocality);
  }
}

// One entry point per target and precision; each handles any valid
// TileArgs of its precision (INT8: Decode kInt and kFp4 only).
void TileKernelPortable(const TileArgs& args);
void TileKernelAvx2(const TileArgs& args);
void TileKernelAvx512(const TileArgs& args);
// The panel strategy (qmm_panel_avx512.cc), EXACT only, AVX-512F and BW:
// the same bits as TileKernelAvx512 for any number of rows (args.rows is
// not limited to kMaxRows; x must be the unscaled input) over whole blocks.
void PanelKernelAvx512(const TileArgs& args);
void TileKernelInt8Portable(const TileArgs& args);
void TileKernelInt8Avx2(const TileArgs& args);
void TileKernelInt8Avx512Vnni(const TileArgs& args);  // needs AVX512-VNNI
void TileKernelBf16Portable(const TileArgs& args);
void TileKernelBf16Avx2(const TileArgs& args);
void TileKernelBf16Avx512Bf16(const TileArgs& args);  // needs AVX512-BF16

// PrepareInt8 writes INT8's prepared input for `rows` rows of k (a
// multiple of group_size, itself a multiple of 32 / lane_bits) quantized in
// blocks of group_size inputs (QuantizedMatmul passes kInt8Block): xq (rows
// * k bytes), xd and xqsum (rows * k / group_size each). Plain C++, the
// same bits on every target.
void PrepareInt8(const float* x, int64_t rows, int64_t k, int64_t group_size, int lane_bits,
                 int8_t* xq, float* xd, int32_t* xqsum);
// The same bits, 16 inputs at a time (qmm_int8_prepare_avx512.cc): for
// CPUs with AVX-512F and BW, VNNI or not.
void PrepareInt8Avx512(const float* x, int64_t rows, int64_t k, int64_t group_size,
                       int lane_bits, int8_t* xq, float* xd, int32_t* xqsum);
// And with AVX2 (qmm_int8_avx2.cc).
void PrepareInt8Avx2(const float* x, int64_t rows, int64_t k, int64_t group_size, int lane_bits,
                     int8_t* xq, float* xd, int32_t* xqsum);

// Int8GroupSums writes INT8's bias-term sums, rows x [k / group_size]:
// per weight group, from 0, fma(d[b], float(qsum[b]), sum) over its
// kInt8Block blocks ascending (xd, xqsum as PrepareInt8 wrote them with
// kInt8Block).
void Int8GroupSums(const float* xd, const int32_t* xqsum, int64_t rows, int64_t k,
                   int64_t group_size, float* xsum);

// PrepareBf16 writes BF16's prepared input: rows * k / 2 pairs.
void PrepareBf16(const float* x, int64_t rows, int64_t k, int lane_bits, uint32_t* xb);

// Bf16GroupSums writes BF16's bias-term sums, rows x [k / group_size]: the
// group's inputs as PrepareBf16 rounds and flushes them, summed in double
// (k ascending) and rounded once.
void Bf16GroupSums(const float* x, int64_t rows, int64_t k, int64_t group_size, float* xsum);

// Writes x_scaled for the AVX-512 kernel's integer codes of lane_bits bits:
// x[k] * 2^-(lane_bits * (k % cpl)) (the code's shift in its word), except
// that 4-bit codes in the low half of a byte, which that kernel looks up
// rather than masks, keep factor 1. n is a multiple of 16. Returns false
// (x_scaled unusable) when a nonzero |x| is below 2^-96, where the scaling
// could lose bits.
bool PrescaleAvx512(const float* x, int64_t n, int lane_bits, float* x_scaled);

// The same for the AVX2 kernel, which masks every code in place except the
// last of each word (a signed conversion cannot take a code that reaches
// bit 31, so it shifts that one down): factor 2^-(lane_bits * (k % cpl)),
// and 1 for k % cpl == cpl - 1.
bool PrescaleAvx2(const float* x, int64_t n, int lane_bits, float* x_scaled);

}  // namespace qlinear::kernels

#endif  // QLINEAR_CORE_KERNELS_KERNEL_ARGS_H_
