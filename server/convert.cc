#include "server/convert.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "core/precision.h"

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

namespace {

// Codes with a count, by canonical name ("OK", "NOT_FOUND", ...).
template <typename Map>
void CodeMap(const CodeCounts& counts, Map* out) {
  for (size_t c = 0; c < counts.size(); ++c) {
    if (counts[c] == 0) continue;
    (*out)[absl::StatusCodeToString(static_cast<absl::StatusCode>(c))] = counts[c];
  }
}

}  // namespace

void ToProto(const EngineSnapshot& s, v1::StatsResponse* out) {
  v1::ServerStats* server = out->mutable_server();
  server->set_uptime_s(s.uptime_s);
  server->set_layers(static_cast<int32_t>(s.layer_count));
  server->set_bytes_held(s.bytes_held);
  server->set_queue_rows(s.rows_queued);
  server->set_threads(s.threads);
  server->set_simd_target(s.simd_target);
  server->set_memory_budget_bytes(s.memory_budget_bytes);
  server->set_batches_in_flight(s.batches_in_flight);
  CodeMap(s.not_loaded_requests, server->mutable_not_loaded_requests_by_code());
  CodeMap(s.not_loaded_rows, server->mutable_not_loaded_rows_by_code());
  CodeMap(s.uploads, server->mutable_uploads_by_code());
  CodeMap(s.data_refusals, server->mutable_data_refusals_by_code());
  CodeMap(s.admin_refusals, server->mutable_admin_refusals_by_code());
  for (const auto& [rpc, n] : s.malformed_requests) {
    (*server->mutable_malformed_requests_by_rpc())[rpc] = n;
  }
  for (int kind = 0; kind < kOriginKinds; ++kind) {
    const std::string origin(OriginKindName(static_cast<OriginKind>(kind)));
    (*server->mutable_layers_by_origin())[origin] = s.layers_by_origin[static_cast<size_t>(kind)];
  }
  for (const LayerSnapshot& l : s.layers) {
    v1::LayerStats* layer = out->add_layers();
    layer->set_name(l.info.name);
    layer->set_version(l.info.version);
    for (size_t c = 0; c < l.requests.size(); ++c) {
      if (l.requests[c] == 0) continue;
      const std::string name = absl::StatusCodeToString(static_cast<absl::StatusCode>(c));
      (*layer->mutable_requests_by_code())[name] = l.requests[c];
      (*layer->mutable_rows_by_code())[name] = l.rows[c];
    }
    for (int p = 0; p < kPrecisionCount; ++p) {
      if (l.requests_by_precision[static_cast<size_t>(p)] == 0) continue;
      const std::string name(PrecisionName(static_cast<Precision>(p)));
      (*layer->mutable_requests_by_precision())[name] = l.requests_by_precision[static_cast<size_t>(p)];
      (*layer->mutable_rows_by_precision())[name] = l.rows_by_precision[static_cast<size_t>(p)];
    }
    layer->set_batches(l.batches);
    ToProto(l.batch_rows, layer->mutable_batch_rows());
    ToProto(l.queue_us, layer->mutable_queue_us());
    ToProto(l.compute_us, layer->mutable_compute_us());
    ToProto(l.total_us, layer->mutable_total_us());
    layer->set_bytes_held(l.info.bytes_held);
    if (l.info.error_report) ToProto(*l.info.error_report, layer->mutable_error_report());
    ToProto(l.info.origin, layer->mutable_origin());
  }
}

}  // namespace qlinear
