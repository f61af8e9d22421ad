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

void ToProto(const ErrorReport& report, v1::ErrorReport* out) {
  out->set_max_abs(report.max_abs);
  out->set_rms(report.rms);
  out->set_rel_fro(report.rel_fro);
}

void ToProto(const LayerOrigin& origin, v1::LayerOrigin* out) {
  switch (origin.kind) {
    case OriginKind::kBuiltin:
      out->set_kind(v1::BUILTIN);
      break;
    case OriginKind::kModel:
      out->set_kind(v1::MODEL);
      break;
    case OriginKind::kUpload:
      out->set_kind(v1::UPLOAD);
      break;
    case OriginKind::kState:
      out->set_kind(v1::STATE);
      break;
  }
  out->set_source(origin.source);
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
  ToProto(info.origin, out->mutable_origin());
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
