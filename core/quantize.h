// MLX-exact quantization: quantize float weights into MLX's packed layout,
// dequantize them back with MLX's roundings, and measure what quantization
// cost (the error report).
//
// Everything here follows ../shared/mlx-formats.md (MLX 0.32.2, CPU backend)
// bit for bit; the golden files in ../shared/golden are the proof.
//
// Example:
//   QLINEAR_ASSIGN_OR_RETURN(QuantizedMatrix q,
//       Quantize({QuantMode::kAffine, 4, 64}, DType::kF16, w.data(), n, k));
//   std::vector<uint8_t> wdq(n * k * 2);
//   Dequantize(q, DType::kF16, wdq.data());
//
// Thread safety: all functions are pure; a QuantizedMatrix is a plain value.
#ifndef QLINEAR_CORE_QUANTIZE_H_
#define QLINEAR_CORE_QUANTIZE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/dtype.h"
#include "core/quant_params.h"

namespace qlinear {

// QuantizedMatrix holds one [n, k] weight in MLX's layout.
struct QuantizedMatrix {
  QuantParams params;
  // For affine: the dtype of scales and biases (the weight dtype T it was
  // quantized from). For fp modes: the dtype the weight came from when it was
  // quantized here, else BF16 (MLX's default dequantize dtype for fp modes).
  DType dtype = DType::kF32;
  int64_t n = 0;
  int64_t k = 0;
  std::vector<uint32_t> wq;     // [n, k*bits/32]
  std::vector<uint8_t> scales;  // [n, k/gs] raw: dtype T (affine) or uint8
  std::vector<uint8_t> biases;  // [n, k/gs] raw dtype T; empty for fp modes

  DType scales_dtype() const { return params.has_biases() ? dtype : DType::kU8; }
  int64_t groups() const { return params.groups(k); }
  // bytes() counts what the three tensors hold.
  size_t bytes() const { return wq.size() * 4 + scales.size() + biases.size(); }
};

// ErrorReport measures dequantize(W) (in float32) against W.
struct ErrorReport {
  double max_abs = 0;  // max |dq - w|
  double rms = 0;      // sqrt(mean (dq - w)^2)
  double rel_fro = 0;  // ||dq - w||_F / ||w||_F (0 when W is all zero)
  std::string ToString() const;
};

// ErrorAccumulator builds an ErrorReport from rows fed in any number of calls,
// so that a layer streamed row by row never needs its whole float weight.
class ErrorAccumulator {
 public:
  // Add takes `count` weights (dtype F32/F16/BF16) and their float32
  // dequantized values.
  void Add(DType dtype, const void* w, const float* dq, size_t count);
  ErrorReport Finish() const;

 private:
  double max_abs_ = 0;
  double sum_sq_err_ = 0;
  double sum_sq_w_ = 0;
  size_t count_ = 0;
};

// CheckFinite returns INVALID_ARGUMENT naming the first NaN/Inf weight as
// "row r, column c" (rows counted from `first_row`).
absl::Status CheckFinite(DType dtype, const void* w, int64_t rows, int64_t k,
                         int64_t first_row = 0);

// QuantizeRows quantizes `rows` rows of k weights of dtype `dtype` into the
// packed words, scales and biases of those rows (biases unused for fp modes).
// Preconditions (checked by Quantize, not here): valid params, k a multiple of
// the group size, finite weights, outputs sized for `rows` rows.
void QuantizeRows(const QuantParams& params, DType dtype, const void* w,
                  int64_t rows, int64_t k, uint32_t* wq, uint8_t* scales,
                  uint8_t* biases);

// Quantize validates and quantizes a whole [n, k] weight of F32/F16/BF16.
// INVALID_ARGUMENT for bad params, dtype, shape, non-finite weights, or
// finite weights whose group scale or bias is not finite in T (e.g. f32
// 3e38 and -3e38 in one group: (max - min) / (2^bits - 1) overflows), with
// ValidateQuantizedValues's message.
absl::StatusOr<QuantizedMatrix> Quantize(const QuantParams& params,
                                         DType dtype, const void* w, int64_t n,
                                         int64_t k);

// UnpackCode returns element j of a packed row (an integer in [0, 2^bits)).
uint32_t UnpackCode(const uint32_t* row, int bits, int64_t j);

// GroupScale returns the scale of group g of row r as float32 (exact):
// the stored T value for affine, the decoded E8M0 / E4M3 value for fp modes.
float GroupScale(const QuantizedMatrix& q, int64_t r, int64_t g);
// GroupBias returns the affine bias (0 for fp modes).
float GroupBias(const QuantizedMatrix& q, int64_t r, int64_t g);
// CodeValue maps a code to the value multiplied by the scale: q itself for
// affine, the E2M1 / E4M3 value for fp modes.
float CodeValue(QuantMode mode, uint32_t code);

// DequantizeRows writes rows [row0, row0+rows) dequantized to `out_dtype`
// (F32/F16/BF16) with MLX's roundings: R(R(q*s) + b) for affine and
// R(R(e) * R(s)) for fp modes, R rounding to out_dtype.
void DequantizeRows(const QuantizedMatrix& q, int64_t row0, int64_t rows,
                    DType out_dtype, void* out);

// Dequantize writes the whole [n, k] matrix.
void Dequantize(const QuantizedMatrix& q, DType out_dtype, void* out);

// ComputeErrorReport compares q (dequantized to float32) with the original
// weights w ([n, k] of `dtype`).
ErrorReport ComputeErrorReport(const QuantizedMatrix& q, DType dtype,
                               const void* w);

// ValidateQuantizedValues checks a pre-quantized matrix (shapes already matched
// against params by the caller): affine scales/biases finite, E8M0 scales not
// 0xFF (NaN). INVALID_ARGUMENT naming row and group otherwise.
// Every path that builds a layer (Quantize, uploads, files) ends with it,
// and the catalog checks it again before it publishes.
absl::Status ValidateQuantizedValues(const QuantizedMatrix& q);
// ValidateQuantizedRows checks rows [row0, row0 + rows) the same way (for a
// layer quantized row by row as it streams in).
absl::Status ValidateQuantizedRows(const QuantizedMatrix& q, int64_t row0, int64_t rows);

// Fp8E4M3FromFloat / Fp8E4M3ToFloat are MLX's E4M3 conversions.
uint8_t Fp8E4M3FromFloat(float v);
float Fp8E4M3ToFloat(uint8_t b);

}  // namespace qlinear

#endif  // QLINEAR_CORE_QUANTIZE_H_
