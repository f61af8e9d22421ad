// Helpers shared by the kernel tests: the SIMD targets this CPU runs,
// random inputs, and a quantized layer made from random weights.
#ifndef QLINEAR_TESTS_CORE_KERNELS_KERNEL_TEST_UTIL_H_
#define QLINEAR_TESTS_CORE_KERNELS_KERNEL_TEST_UTIL_H_

#include <cstdint>
#include <random>
#include <utility>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/half.h"
#include "core/kernels/qmm.h"
#include "core/quantize.h"

namespace qlinear {

// Targets lists every SIMD target this CPU can run, portable first.
inline std::vector<SimdTarget> Targets() {
  std::vector<SimdTarget> out;
  for (SimdTarget t : {SimdTarget::kPortable, SimdTarget::kAvx2, SimdTarget::kAvx512}) {
    if (SimdTargetSupported(t)) out.push_back(t);
  }
  return out;
}

// Paths lists every way this CPU can compute an EXACT product: each
// target, and on AVX-512 each kernel strategy (qmm.h), with a name for
// failure messages.
struct Path {
  SimdTarget target;
  KernelStrategy strategy;
  std::string name() const {
    return std::string(SimdTargetName(target)) + "/" + std::string(KernelStrategyName(strategy));
  }
};
inline std::vector<Path> Paths() {
  std::vector<Path> out;
  for (SimdTarget t : Targets()) {
    out.push_back({t, KernelStrategy::kRegister});
    if (t == SimdTarget::kAvx512) out.push_back({t, KernelStrategy::kPanel});
  }
  return out;
}

// Random is `count` normal(0, 1) values of `dtype`, rounded to it.
inline std::vector<uint8_t> Random(DType dtype, int64_t count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint8_t> v(static_cast<size_t>(count) * DTypeSize(dtype));
  for (int64_t i = 0; i < count; ++i) StoreFloat(dtype, v.data(), static_cast<size_t>(i), normal(rng));
  return v;
}

// MakeLayer quantizes a random [n, k] weight of `w_dtype` with `p`.
inline QuantizedMatrix MakeLayer(const QuantParams& p, int64_t n, int64_t k, uint64_t seed,
                                 DType w_dtype = DType::kF16) {
  const std::vector<uint8_t> w = Random(w_dtype, n * k, seed);
  auto q = Quantize(p, w_dtype, w.data(), n, k);
  EXPECT_TRUE(q.ok()) << q.status();
  return *std::move(q);
}

}  // namespace qlinear

#endif  // QLINEAR_TESTS_CORE_KERNELS_KERNEL_TEST_UTIL_H_
