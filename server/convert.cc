#include "server/convert.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace qlinear {

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // absl::StatusCode and grpc::StatusCode share their numbering.
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

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
          absl::StrCat("unknown quantization mode value ", static_cast<int>(spec.mode())));
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

void ToProto(const ErrorReport& report, v1::ErrorReport* out) {
  out->set_max_abs(report.max_abs);
  out->set_rms(report.rms);
  out->set_rel_fro(report.rel_fro);
}

void ToProto(const Layer::Info& info, v1::LayerInfo* out) {
  out->set_name(info.name);
  out->set_out_features(info.n);
  out->set_in_features(info.k);
  *out->mutable_spec() = ToProto(info.params);
  out->set_weight_dtype(ToProto(info.weight_dtype));
  out->set_has_bias(info.has_bias);
  out->set_version(info.version);
  out->set_bytes_held(info.bytes_held);
  if (info.error_report) ToProto(*info.error_report, out->mutable_error_report());
}

void ToProto(const Histogram::Snapshot& h, v1::Histogram* out) {
  for (double b : h.bounds) out->add_bounds(b);
  for (uint64_t c : h.counts) out->add_counts(c);
  out->set_count(h.count);
  out->set_mean(h.Mean());
  out->set_p50(h.Percentile(50));
  out->set_p90(h.Percentile(90));
  out->set_p99(h.Percentile(99));
  out->set_max(h.max);
}

}  // namespace qlinear
