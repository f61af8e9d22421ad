// The reference forward pass: y = x · dequantize(W)ᵀ + bias, written plainly.
//
// Each weight is the exact value scale·q + bias (affine) or scale·e (fp
// modes) from the stored scale and bias — never rounded to the weight dtype —
// and every output is accumulated in double, k ascending, then rounded to
// float32 and from there to the output dtype (as the fast kernels do). This
// is deliberately more accurate than MLX, which
// rounds each weight to T and accumulates in T.
//
// It is the oracle for every fast kernel: keep it simple, never optimise it.
#ifndef QLINEAR_CORE_REFERENCE_H_
#define QLINEAR_CORE_REFERENCE_H_

#include <cstdint>

#include "core/dtype.h"
#include "core/quantize.h"

namespace qlinear {

// ReferenceForward computes y[m, n] for m in [0, rows). x is [rows, w.k] of
// x_dtype, y is [rows, w.n] of y_dtype (both F32/F16/BF16), bias is w.n
// float32 values or null. Preconditions (validated by callers): dtypes
// floating, shapes as stated.
void ReferenceForward(const QuantizedMatrix& w, DType x_dtype, const void* x,
                      int64_t rows, const float* bias, DType y_dtype, void* y);

// ReferenceForwardDouble is the same, leaving y unrounded in double.
void ReferenceForwardDouble(const QuantizedMatrix& w, DType x_dtype,
                            const void* x, int64_t rows, const float* bias,
                            double* y);

}  // namespace qlinear

#endif  // QLINEAR_CORE_REFERENCE_H_
