// The BF16 precision's AVX2 + FMA tile kernel (compiled with -mavx2 -mfma
// -mf16c): what AVX-512 CPUs without AVX512-BF16 and AVX2 CPUs run. It
// emulates vdpbf16ps bit for bit (kernel_args.h): each step is one FMA (the
// product of a bfloat16 input and a code value is exact, the sum rounded
// once), and a result of magnitude below 2^-126 is zero of its sign.
//
// The flush never changes a result unless some input is tiny, so the
// fast path does not apply it: every product x·v is a multiple of
// lsb(x)·2^-9 (codes are integers, E2M1 multiples of 2^-1, E4M3 of 2^-9),
// and so is every rounded sum of them, so when every nonzero |x| of the
// group is at least 2^-110 (lsb 2^-117) every result is zero or at least
// 2^-126 in magnitude, and flushing keeps it. A group where some row has a
// smaller nonzero input (bfloat16 exponent field 1..16, checked per group,
// 16 inputs an instruction or three) is computed lane by lane by the
// scalar step below.
// Self-contained on purpose: no functions with external linkage shared
// with other translation units (kernel_args.h's helpers are static).
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "core/kernels/kernel_args.h"
#include "core/kernels/simd_params.h"

namespace qlinear::kernels {
namespace {

constexpr float kE2m1[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                             -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

// The value of one code (scalar: the slow path).
float CodeValue(Decode decode, uint32_t code) {
  if (decode == Decode::kFp4) return kE2m1[code & 15];
  if (decode == Decode::kFp8) {
    const uint32_t bits = (code & 0x7Fu) << 20;
    float v;
    std::memcpy(&v, &bits, 4);
    v *= 0x1p120f;
    return (code & 0x80u) ? -v : v;
  }
  return static_cast<float>(code);
}

// One step of the sequence: fma, and a subnormal result zero of its sign
// (the portable kernel's step, kernel_args.h).
float DotStep(float x, float w, float acc) {
  const float r = std::fma(x, w, acc);
  return std::fabs(r) < 0x1p-126f ? std::copysign(0.0f, r) : r;
}

float Bf16(uint32_t bits16) {
  const uint32_t u = bits16 << 16;
  float v;
  std::memcpy(&v, &u, 4);
  return v;
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

// Code `I` of each lane's word, decoded to float32.
template <int B, Decode D, int I>
__attribute__((always_inline)) inline __m256 Code(__m256i w, __m256 lut_lo, __m256 lut_hi) {
  __m256i c = I == 0 ? w : _mm256_srli_epi32(w, I * B);
  if constexpr ((I + 1) * B < 32) c = _mm256_and_si256(c, _mm256_set1_epi32((1 << B) - 1));
  return DecodeLane<B, D>(c, lut_lo, lut_hi);
}

// Whether some row's pairs [begin, begin + count) (count a multiple of 8)
// hold a nonzero input below 2^-110: a bfloat16 exponent field of 1..16.
template <int R>
bool HasTinyInputs(const uint32_t* const* x, int64_t begin, int64_t count) {
  __m256i tiny = _mm256_setzero_si256();
  for (int r = 0; r < R; ++r) {
    for (int64_t i = begin; i < begin + count; i += 8) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[r] + i));
      // Exponent field minus 1, unsigned 16-bit: below 16 exactly when 1..16.
      const __m256i e = _mm256_sub_epi16(_mm256_and_si256(v, _mm256_set1_epi16(0x7F80)),
                                         _mm256_set1_epi16(0x0080));
      tiny = _mm256_or_si256(
          tiny, _mm256_cmpeq_epi16(_mm256_min_epu16(e, _mm256_set1_epi16(0x07FF)), e));
    }
  }
  return !_mm256_testz_si256(tiny, tiny);
}

template <int B, Decode D, int R, int H, int I>
__attribute__((always_inline)) inline void Step(const __m256i* w, const uint32_t* const* x,
                                                int64_t pair, __m256 (*acc)[H], __m256 lut_lo,
                                                __m256 lut_hi) {
  constexpr int kHalf = 16 / B;
  if constexpr (I < kHalf) {
    __m256 v_lo[H], v_hi[H];
    for (int h = 0; h < H; ++h) {
      v_lo[h] = Code<B, D, I>(w[h], lut_lo, lut_hi);
      v_hi[h] = Code<B, D, I + kHalf>(w[h], lut_lo, lut_hi);
    }
    for (int r = 0; r < R; ++r) {
      const __m256i xb = _mm256_set1_epi32(static_cast<int>(x[r][pair + I]));
      const __m256 x_hi = _mm256_castsi256_ps(
          _mm256_and_si256(xb, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
      const __m256 x_lo = _mm256_castsi256_ps(_mm256_slli_epi32(xb, 16));
      for (int h = 0; h < H; ++h) {
        acc[r][h] = _mm256_fmadd_ps(x_lo, v_lo[h], _mm256_fmadd_ps(x_hi, v_hi[h], acc[r][h]));
      }
    }
    Step<B, D, R, H, I + 1>(w, x, pair, acc, lut_lo, lut_hi);
  }
}

// Rows x tiles per call: R * 2T accumulators (halves h = 2t, 2t + 1 of
// tile t), 8 of them, as the EXACT AVX2 kernel.
template <int B, Decode D, int R, int T>
void Kernel(const TileArgs& a) {
  constexpr int kCpl = 32 / B;
  constexpr int kHalf = kCpl / 2;
  constexpr int kH = 2 * T;
  const __m256 lut_lo = _mm256_loadu_ps(kE2m1);
  const __m256 lut_hi = _mm256_loadu_ps(kE2m1 + 8);
  const uint32_t* x[R];
  for (int r = 0; r < R; ++r) {
    x[r] = reinterpret_cast<const uint32_t*>(static_cast<const char*>(a.xp) + r * a.xp_stride);
  }
  __m256 y[R][kH];
  for (int r = 0; r < R; ++r) {
    for (int h = 0; h < kH; ++h) y[r][h] = _mm256_setzero_ps();
  }
  const int64_t words_per_group = a.group_size / kCpl;
  const int64_t words_per_tile = a.codes_stride / kTileN;
  for (int64_t g = 0; g < a.groups; ++g) {
    __m256 acc[R][kH];
    for (int r = 0; r < R; ++r) {
      for (int h = 0; h < kH; ++h) acc[r][h] = _mm256_setzero_ps();
    }
    if (!HasTinyInputs<R>(x, g * words_per_group * kHalf, words_per_group * kHalf)) {
      for (int64_t j = 0; j < words_per_group; ++j) {
        const int64_t word = g * words_per_group + j;
        __m256i w[kH];
        for (int t = 0; t < T; ++t) {
          const uint32_t* p = a.codes + t * a.codes_stride + word * kTileN;
          w[2 * t] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
          w[2 * t + 1] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8));
        }
        if constexpr (R == 1) PrefetchCodes<2>(a, T, words_per_tile, word + kPrefetchAheadWords);
        Step<B, D, R, kH, 0>(w, x, word * kHalf, acc, lut_lo, lut_hi);
      }
    } else {
      // A tiny input: the group lane by lane, flushed.
      const uint32_t mask = (1u << B) - 1u;
      for (int r = 0; r < R; ++r) {
        for (int h = 0; h < kH; ++h) {
          alignas(32) float lanes[8];
          for (int lane = 0; lane < 8; ++lane) {
            float s = 0.0f;
            for (int64_t j = g * words_per_group; j < (g + 1) * words_per_group; ++j) {
              const uint32_t code =
                  a.codes[(h / 2) * a.codes_stride + j * kTileN + (h % 2) * 8 + lane];
              for (int i = 0; i < kHalf; ++i) {
                const uint32_t pair = x[r][j * kHalf + i];
                s = DotStep(Bf16(pair >> 16), CodeValue(D, (code >> (16 + i * B)) & mask), s);
                s = DotStep(Bf16(pair & 0xFFFFu), CodeValue(D, (code >> (i * B)) & mask), s);
              }
            }
            lanes[lane] = s;
          }
          acc[r][h] = _mm256_load_ps(lanes);
        }
      }
    }
    // Fold the group into y (plain FMAs: no flush here).
    for (int h = 0; h < kH; ++h) {
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
    for (int h = 0; h < kH; ++h) _mm256_storeu_ps(a.y + r * a.y_stride + h * 8, y[r][h]);
  }
}

template <int B, Decode D, int R>
void ByTiles(const TileArgs& a) {
  constexpr int kT = R == 1 ? 4 : R == 2 ? 2 : 1;
  int done = 0;
  while (done < a.tiles) {
    const TileArgs part = FromTile(a, done);
    const int left = a.tiles - done;
    if (left >= kT) {
      Kernel<B, D, R, kT>(part);
      done += kT;
    } else {
      Kernel<B, D, R, 1>(part);
      done += 1;
    }
  }
}

template <int B, Decode D>
void ByRows(const TileArgs& a) {
  int done = 0;
  while (done < a.rows) {
    const TileArgs part = FromRow(a, done);
    const int left = a.rows - done;
    if (left >= 4) {
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

void TileKernelBf16Avx2(const TileArgs& a) {
  if (a.decode == Decode::kFp4) return ByRows<4, Decode::kFp4>(a);
  if (a.decode == Decode::kFp8) return ByRows<8, Decode::kFp8>(a);
  if (a.lane_bits == 2) return ByRows<2, Decode::kInt>(a);
  if (a.lane_bits == 4) return ByRows<4, Decode::kInt>(a);
  return ByRows<8, Decode::kInt>(a);
}

}  // namespace qlinear::kernels
