// PrepareInt8 for CPUs with AVX-512F and BW, in its own translation unit
// (compiled with -mavx512f -mavx512bw only): it runs on every AVX-512 CPU,
// VNNI or not, so it must not share a unit built with -mavx512vnni, where
// the compiler may use VNNI instructions anywhere.
#include <immintrin.h>

#include <cstring>

#include "core/kernels/kernel_args.h"

namespace qlinear::kernels {
namespace {

// Byte order of a 16-code chunk in the prepared input (kernel_args.h):
// output byte i*4 + b of each word takes code b*npos + i.
__m128i PrepareOrder(int lane_bits) {
  if (lane_bits == 4) return _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
  if (lane_bits == 2) return _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

}  // namespace

// PrepareInt8 (qmm_int8.cc) 16 inputs at a time, with the same IEEE
// operations: the maximum of |x| is exact in any order, the division is
// vdivps (correctly rounded, as divss), the clamps take the same operand
// for NaN as std::max / std::min there (vmaxps / vminps return their
// second operand when either is NaN), and vcvtps2dq rounds half to even
// (the default rounding mode) as the 1.5·2^23 trick does for |v| <= 127.
void PrepareInt8Avx512(const float* x, int64_t rows, int64_t k, int64_t group_size,
                       int lane_bits, int8_t* xq, float* xd, int32_t* xqsum) {
  if (group_size % 16 != 0) return PrepareInt8(x, rows, k, group_size, lane_bits, xq, xd, xqsum);
  const int64_t groups = k / group_size;
  const __m128i order = PrepareOrder(lane_bits);
  const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
  const __m512i inf_bits = _mm512_set1_epi32(0x7F800000);
  const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
  for (int64_t m = 0; m < rows; ++m) {
    const float* row = x + m * k;
    int8_t* q = xq + m * k;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t k0 = g * group_size;
      __m512i amax = _mm512_setzero_si512();
      __mmask16 nonfinite = 0;
      for (int64_t i = k0; i < k0 + group_size; i += 16) {
        // |x| as integers: ordered as the floats for non-negative values.
        const __m512i bits = _mm512_and_si512(_mm512_loadu_si512(row + i), abs_mask);
        nonfinite |= _mm512_cmpge_epi32_mask(bits, inf_bits);
        amax = _mm512_max_epi32(amax, bits);
      }
      int32_t sum = 0;
      float d;
      const int32_t amax_bits = _mm512_reduce_max_epi32(amax);
      if (nonfinite != 0 || amax_bits == 0) {
        d = nonfinite != 0 ? __builtin_nanf("") : 0.0f;
        for (int64_t i = k0; i < k0 + group_size; i += 16) {
          _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm_setzero_si128());
        }
      } else {
        float amax_f;
        std::memcpy(&amax_f, &amax_bits, 4);
        d = amax_f / 127.0f;
        const __m512 dv = _mm512_set1_ps(d);
        __m512i sums = _mm512_setzero_si512();
        for (int64_t i = k0; i < k0 + group_size; i += 16) {
          const __m512 r = _mm512_div_ps(_mm512_loadu_ps(row + i), dv);
          const __m512i c = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(r, lo), hi));
          sums = _mm512_add_epi32(sums, c);
          _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i),
                           _mm_shuffle_epi8(_mm512_cvtepi32_epi8(c), order));
        }
        sum = _mm512_reduce_add_epi32(sums);
      }
      xd[m * groups + g] = d;
      if (xqsum != nullptr) xqsum[m * groups + g] = sum;
    }
  }
}

}  // namespace qlinear::kernels
