#include "core/reference.h"

#include <vector>

#include "core/half.h"

namespace qlinear {

void ReferenceForwardDouble(const QuantizedMatrix& w, DType x_dtype,
                            const void* x, int64_t rows, const float* bias,
                            double* y) {
  const int64_t words = w.params.packed_cols(w.k);
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t n = 0; n < w.n; ++n) {
      const uint32_t* wq_row = w.wq.data() + n * words;
      double acc = 0.0;
      for (int64_t kk = 0; kk < w.k; ++kk) {
        const int64_t g = kk / w.params.group_size;
        const double value =
            static_cast<double>(GroupScale(w, n, g)) *
                CodeValue(w.params.mode, UnpackCode(wq_row, w.params.bits, kk)) +
            static_cast<double>(GroupBias(w, n, g));
        acc += static_cast<double>(
                   LoadFloat(x_dtype, x, static_cast<size_t>(m * w.k + kk))) *
               value;
      }
      if (bias != nullptr) acc += bias[n];
      y[m * w.n + n] = acc;
    }
  }
}

void ReferenceForward(const QuantizedMatrix& w, DType x_dtype, const void* x,
                      int64_t rows, const float* bias, DType y_dtype, void* y) {
  std::vector<double> out(static_cast<size_t>(rows * w.n));
  ReferenceForwardDouble(w, x_dtype, x, rows, bias, out.data());
  for (size_t i = 0; i < out.size(); ++i) {
    StoreFloat(y_dtype, y, i, static_cast<float>(out[i]));
  }
}

}  // namespace qlinear
