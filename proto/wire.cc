#include "proto/wire.h"

#include "absl/strings/str_cat.h"

namespace qlinear {

std::optional<DType> FromProto(v1::DType dtype) {
  switch (dtype) {
    case v1::F32:
      return DType::kF32;
    case v1::F16:
      return DType::kF16;
    case v1::BF16:
      return DType::kBF16;
    case v1::U8:
      return DType::kU8;
    case v1::U32:
      return DType::kU32;
    default:
      return std::nullopt;
  }
}

absl::StatusOr<DType> FloatDTypeFromProto(v1::DType dtype, absl::string_view what) {
  auto d = FromProto(dtype);
  if (!d || !IsFloatDType(*d)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must be F32, F16 or BF16; got ", WireEnumName(dtype)));
  }
  return *d;
}

v1::DType ToProto(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return v1::F32;
    case DType::kF16:
      return v1::F16;
    case DType::kBF16:
      return v1::BF16;
    case DType::kU8:
      return v1::U8;
    case DType::kU32:
      return v1::U32;
    default:
      return v1::DTYPE_UNSPECIFIED;
  }
}

v1::Mode ToProto(QuantMode mode) {
  switch (mode) {
    case QuantMode::kMxfp4:
      return v1::MXFP4;
    case QuantMode::kMxfp8:
      return v1::MXFP8;
    case QuantMode::kNvfp4:
      return v1::NVFP4;
    case QuantMode::kAffine:
      break;
  }
  return v1::AFFINE;
}

absl::StatusOr<QuantParams> FromProto(const v1::QuantSpec& spec) {
  QuantMode mode = QuantMode::kAffine;
  switch (spec.mode()) {
    case v1::MODE_UNSPECIFIED:
    case v1::AFFINE:
      break;
    case v1::MXFP4:
      mode = QuantMode::kMxfp4;
      break;
    case v1::MXFP8:
      mode = QuantMode::kMxfp8;
      break;
    case v1::NVFP4:
      mode = QuantMode::kNvfp4;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("quantization mode must be AFFINE, MXFP4, MXFP8 or NVFP4; got ",
                       WireEnumName(spec.mode())));
  }
  return MakeQuantParams(mode, spec.bits() ? std::optional<int>(spec.bits()) : std::nullopt,
                         spec.group_size() ? std::optional<int>(spec.group_size()) : std::nullopt);
}

v1::QuantSpec ToProto(const QuantParams& params) {
  v1::QuantSpec spec;
  spec.set_mode(ToProto(params.mode));
  spec.set_bits(params.bits);
  spec.set_group_size(params.group_size);
  return spec;
}

absl::StatusOr<Precision> PrecisionFromProto(v1::Precision precision) {
  switch (precision) {
    case v1::PRECISION_UNSPECIFIED:
    case v1::EXACT:
      return Precision::kExact;
    case v1::INT8:
      return Precision::kInt8;
    case v1::BFLOAT16:
      return Precision::kBf16;
    default:
      break;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "precision must be EXACT, INT8 or BFLOAT16 (or unset: EXACT); got ", WireEnumName(precision)));
}

v1::Precision ToProto(Precision precision) {
  switch (precision) {
    case Precision::kInt8:
      return v1::INT8;
    case Precision::kBf16:
      return v1::BFLOAT16;
    case Precision::kExact:
      break;
  }
  return v1::EXACT;
}

}  // namespace qlinear
