// DType: the element types qlinear reads and writes, named as safetensors
// names them ("F32", "BF16", ...). Every dtype safetensors defines is known so
// that files with extra tensors (int64 position ids, ...) can be copied; only
// F32, F16 and BF16 take part in arithmetic.
#ifndef QLINEAR_CORE_DTYPE_H_
#define QLINEAR_CORE_DTYPE_H_

#include <cstddef>
#include <optional>
#include "absl/strings/string_view.h"

namespace qlinear {

enum class DType {
  kBool,
  kU8,
  kI8,
  kF8E5M2,
  kF8E4M3,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kF64,
  kI64,
  kU64,
};

// DTypeName returns the safetensors spelling ("F32").
absl::string_view DTypeName(DType dtype);

// ShortDTypeName returns the CLI spelling ("f32", "f16", "bf16", "u32", ...).
absl::string_view ShortDTypeName(DType dtype);

// DTypeSize returns the size of one element in bytes.
size_t DTypeSize(DType dtype);

// ParseDTypeName accepts the safetensors spelling; nullopt if unknown.
std::optional<DType> ParseDTypeName(absl::string_view name);

// ParseFloatDType accepts "f32"/"float32", "f16"/"float16", "bf16"/"bfloat16"
// (case-insensitive); nullopt otherwise.
std::optional<DType> ParseFloatDType(absl::string_view name);

// IsFloatDType is true for F32, F16 and BF16: the dtypes weights, scales,
// inputs and outputs may have.
bool IsFloatDType(DType dtype);

}  // namespace qlinear

#endif  // QLINEAR_CORE_DTYPE_H_
