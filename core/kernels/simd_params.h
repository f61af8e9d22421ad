// LoadParams: one vector of a tile's scales or biases (kernel_args.h's
// ScaleType), widened exactly to float32, for the tile kernels of one
// instruction set: 16 values in a TU compiled with AVX-512F, else 8 with
// AVX2 (+F16C); and with AVX-512F, DecodeLane. Include it only from such translation units; like
// kernel_args.h's helpers it is `static`, so each unit keeps its own copy
// compiled for its own target.
#ifndef QLINEAR_CORE_KERNELS_SIMD_PARAMS_H_
#define QLINEAR_CORE_KERNELS_SIMD_PARAMS_H_

#include <immintrin.h>

#include <cstdint>

#include "core/kernels/kernel_args.h"

namespace qlinear::kernels {

#if defined(__AVX512F__)
// 16 scales or biases starting at element i.
__attribute__((always_inline)) static inline __m512 LoadParams(const void* base, ScaleType type,
                                                               int64_t i) {
  if (type == ScaleType::kF32) return _mm512_loadu_ps(static_cast<const float*>(base) + i);
  const __m256i h = _mm256_loadu_si256(
      reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(base) + i));
  if (type == ScaleType::kF16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// DecodeLane: one code per 32-bit lane (its bits alone; for kFp4 only the
// low 4 bits are read) as its exact float32 value: the integer (kInt), the
// E2M1 value looked up in `lut` (kFp4), or the E4M3 value (kFp8: the 7
// magnitude bits at 26..20 read as float are 2^-120 times the value,
// subnormals included, and the multiply by 2^120 is exact).
template <Decode D>
__attribute__((always_inline)) static inline __m512 DecodeLane(__m512i c, __m512 lut) {
  if constexpr (D == Decode::kInt) {
    (void)lut;
    return _mm512_cvtepi32_ps(c);
  } else if constexpr (D == Decode::kFp4) {
    return _mm512_permutexvar_ps(c, lut);
  } else {
    (void)lut;
    const __m512i mag = _mm512_slli_epi32(_mm512_and_si512(c, _mm512_set1_epi32(0x7F)), 20);
    const __m512 v = _mm512_mul_ps(_mm512_castsi512_ps(mag), _mm512_set1_ps(0x1p120f));
    const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(c, _mm512_set1_epi32(0x80)), 24);
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(v), sign));
  }
}
#elif defined(__AVX2__) && defined(__F16C__)
// 8 scales or biases starting at element i.
__attribute__((always_inline)) static inline __m256 LoadParams(const void* base, ScaleType type,
                                                               int64_t i) {
  if (type == ScaleType::kF32) return _mm256_loadu_ps(static_cast<const float*>(base) + i);
  const __m128i h = _mm_loadu_si128(
      reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i));
  if (type == ScaleType::kF16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
#else
#error "simd_params.h is for translation units compiled with AVX-512F or AVX2 and F16C"
#endif

}  // namespace qlinear::kernels

#endif  // QLINEAR_CORE_KERNELS_SIMD_PARAMS_H_
