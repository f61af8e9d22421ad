#include "core/dtype.h"

#include <array>

#include "absl/strings/ascii.h"

namespace qlinear {
namespace {

struct DTypeInfo {
  DType dtype;
  absl::string_view name;
  absl::string_view short_name;
  size_t size;
};

constexpr std::array<DTypeInfo, 15> kDTypes = {{
    {DType::kBool, "BOOL", "bool", 1},
    {DType::kU8, "U8", "u8", 1},
    {DType::kI8, "I8", "i8", 1},
    {DType::kF8E5M2, "F8_E5M2", "f8e5m2", 1},
    {DType::kF8E4M3, "F8_E4M3", "f8e4m3", 1},
    {DType::kI16, "I16", "i16", 2},
    {DType::kU16, "U16", "u16", 2},
    {DType::kF16, "F16", "f16", 2},
    {DType::kBF16, "BF16", "bf16", 2},
    {DType::kI32, "I32", "i32", 4},
    {DType::kU32, "U32", "u32", 4},
    {DType::kF32, "F32", "f32", 4},
    {DType::kF64, "F64", "f64", 8},
    {DType::kI64, "I64", "i64", 8},
    {DType::kU64, "U64", "u64", 8},
}};

const DTypeInfo& Info(DType dtype) {
  return kDTypes[static_cast<size_t>(dtype)];
}

}  // namespace

absl::string_view DTypeName(DType dtype) { return Info(dtype).name; }
absl::string_view ShortDTypeName(DType dtype) { return Info(dtype).short_name; }
size_t DTypeSize(DType dtype) { return Info(dtype).size; }

std::optional<DType> ParseDTypeName(absl::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.name == name) return info.dtype;
  }
  return std::nullopt;
}

std::optional<DType> ParseFloatDType(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "f32" || lower == "float32") return DType::kF32;
  if (lower == "f16" || lower == "float16") return DType::kF16;
  if (lower == "bf16" || lower == "bfloat16") return DType::kBF16;
  return std::nullopt;
}

bool IsFloatDType(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16;
}

}  // namespace qlinear
