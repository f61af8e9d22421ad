#include "server/service.h"

#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/engine/upload.h"
#include "core/kernels/qmm.h"
#include "server/convert.h"
#include "server/log.h"

namespace qlinear {
namespace {

absl::Span<const uint8_t> Bytes(const std::string& s) {
  return absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

absl::StatusOr<DType> FloatDType(v1::DType wire, absl::string_view what) {
  auto d = FromProto(wire);
  if (!d || !IsFloatDType(*d)) {
    return absl::InvalidArgumentError(absl::StrCat(what, " must be F32, F16 or BF16; got ",
                                                   v1::DType_Name(wire)));
  }
  return *d;
}

// LogAccess writes the access line of one Forward (--access-log; callers
// check AccessLogEnabled() first).
void LogAccess(const v1::ForwardRequest& request, int64_t rows, absl::StatusCode code,
               int64_t queue_us, int64_t compute_us) {
  Log(LogLevel::kInfo, "access",
      {{"request_id", request.request_id()},
       {"layer", request.layer()},
       {"rows", rows},
       {"code", absl::StatusCodeToString(code)},
       {"queue_us", queue_us},
       {"compute_us", compute_us}});
}

// Reads a client stream of upload chunks: the header first, then parts in
// order; Finish publishes. Any fault ends the call with its status.
template <typename Chunk, typename Upload>
class UploadReactor : public grpc::ServerReadReactor<Chunk> {
 public:
  using StartFn = std::function<absl::StatusOr<std::unique_ptr<Upload>>(const Chunk&)>;
  using PartFn = std::function<absl::Status(Upload&, const Chunk&)>;

  UploadReactor(Engine* engine, grpc::CallbackServerContext* context, v1::UploadResponse* response,
                StartFn start, PartFn part)
      : engine_(engine), context_(context), response_(response), start_(std::move(start)),
        part_(std::move(part)) {
    this->StartRead(&chunk_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client closed its side (or went away)
      if (context_->IsCancelled()) {
        upload_.reset();  // never publish a cancelled upload
        return End(grpc::Status(grpc::StatusCode::CANCELLED, "upload cancelled"));
      }
      if (upload_ == nullptr) {
        return End(ToGrpc(absl::InvalidArgumentError("upload stream had no header")));
      }
      auto layer = upload_->Finish();
      upload_.reset();
      if (!layer.ok()) return End(ToGrpc(layer.status()));
      ToProto((*layer)->info(), response_->mutable_layer());
      return End(grpc::Status::OK);
    }
    absl::Status status;
    if (upload_ == nullptr) {
      if (chunk_.has_header()) name_ = chunk_.header().name();
      auto started = start_(chunk_);
      if (started.ok()) {
        upload_ = *std::move(started);
      } else {
        status = started.status();
      }
    } else {
      status = part_(*upload_, chunk_);
    }
    if (!status.ok()) {
      upload_.reset();  // releases the memory reservation
      return End(ToGrpc(status));
    }
    this->StartRead(&chunk_);
  }

  void OnDone() override { delete this; }

 private:
  // End is where every upload stream ends, whatever ended it.
  void End(const grpc::Status& status) {
    engine_->RecordUpload(static_cast<absl::StatusCode>(status.error_code()));
    if (!status.ok()) LogRefused(status);
    this->Finish(status);
  }

  // LogRefused logs an upload that published nothing; a warning when the
  // server's own limits or disk refused it, info when the request did.
  void LogRefused(const grpc::Status& status) {
    const auto code = static_cast<absl::StatusCode>(status.error_code());
    const bool server_side = code == absl::StatusCode::kResourceExhausted ||
                             code == absl::StatusCode::kInternal ||
                             code == absl::StatusCode::kDataLoss ||
                             code == absl::StatusCode::kUnknown;
    Log(server_side ? LogLevel::kWarning : LogLevel::kInfo, "upload_refused",
        {{"rpc", std::is_same_v<Chunk, v1::QuantizeChunk> ? "Quantize" : "LoadQuantized"},
         {"name", name_},
         {"code", absl::StatusCodeToString(code)},
         {"reason", status.error_message()}});
  }

  Engine* engine_;
  grpc::CallbackServerContext* context_;
  v1::UploadResponse* response_;
  StartFn start_;
  PartFn part_;
  Chunk chunk_;
  std::unique_ptr<Upload> upload_;
  std::string name_;  // from the header, once it came
};

}  // namespace

grpc::ServerReadReactor<v1::QuantizeChunk>* AdminService::Quantize(
    grpc::CallbackServerContext* context, v1::UploadResponse* response) {
  Engine* engine = engine_;
  auto start = [engine](const v1::QuantizeChunk& c) -> absl::StatusOr<std::unique_ptr<QuantizeUpload>> {
    if (!c.has_header()) {
      return absl::InvalidArgumentError("the first Quantize message must be the header");
    }
    const v1::QuantizeHeader& h = c.header();
    QuantizeUploadSpec spec;
    spec.name = h.name();
    spec.n = h.out_features();
    spec.k = h.in_features();
    auto dtype = FloatDType(h.dtype(), "Quantize header dtype");
    if (!dtype.ok()) return dtype.status();
    spec.dtype = *dtype;
    auto params = FromProto(h.spec());
    if (!params.ok()) return params.status();
    spec.params = *params;
    spec.has_bias = h.has_bias();
    spec.replace = h.replace();
    return QuantizeUpload::Start(engine, spec);
  };
  auto part = [](QuantizeUpload& up, const v1::QuantizeChunk& c) -> absl::Status {
    switch (c.part_case()) {
      case v1::QuantizeChunk::kWeight:
        return up.AddWeight(Bytes(c.weight()));
      case v1::QuantizeChunk::kBias:
        return up.AddBias(Bytes(c.bias()));
      case v1::QuantizeChunk::kHeader:
        return absl::InvalidArgumentError("a second header arrived in the same Quantize stream");
      default:
        return absl::InvalidArgumentError("empty Quantize message (no header, weight or bias)");
    }
  };
  return new UploadReactor<v1::QuantizeChunk, QuantizeUpload>(engine, context, response, start,
                                                              part);
}

grpc::ServerReadReactor<v1::LoadQuantizedChunk>* AdminService::LoadQuantized(
    grpc::CallbackServerContext* context, v1::UploadResponse* response) {
  Engine* engine = engine_;
  auto start = [engine](const v1::LoadQuantizedChunk& c) -> absl::StatusOr<std::unique_ptr<LoadUpload>> {
    if (!c.has_header()) {
      return absl::InvalidArgumentError("the first LoadQuantized message must be the header");
    }
    const v1::LoadQuantizedHeader& h = c.header();
    LoadUploadSpec spec;
    spec.name = h.name();
    spec.n = h.out_features();
    spec.k = h.in_features();
    auto params = FromProto(h.spec());
    if (!params.ok()) return params.status();
    spec.params = *params;
    auto scales = FromProto(h.scales_dtype());
    if (!scales) {
      return absl::InvalidArgumentError(
          absl::StrCat("scales_dtype must be set; got ", v1::DType_Name(h.scales_dtype())));
    }
    spec.scales_dtype = *scales;
    spec.has_bias = h.has_bias();
    if (h.has_bias()) {
      auto bias = FloatDType(h.bias_dtype(), "bias_dtype");
      if (!bias.ok()) return bias.status();
      spec.bias_dtype = *bias;
    }
    spec.replace = h.replace();
    return LoadUpload::Start(engine, spec);
  };
  auto part = [](LoadUpload& up, const v1::LoadQuantizedChunk& c) -> absl::Status {
    switch (c.part_case()) {
      case v1::LoadQuantizedChunk::kWeight:
        return up.Add(LoadUpload::Part::kWeight, Bytes(c.weight()));
      case v1::LoadQuantizedChunk::kScales:
        return up.Add(LoadUpload::Part::kScales, Bytes(c.scales()));
      case v1::LoadQuantizedChunk::kBiases:
        return up.Add(LoadUpload::Part::kBiases, Bytes(c.biases()));
      case v1::LoadQuantizedChunk::kBias:
        return up.Add(LoadUpload::Part::kBias, Bytes(c.bias()));
      case v1::LoadQuantizedChunk::kHeader:
        return absl::InvalidArgumentError("a second header arrived in the same LoadQuantized stream");
      default:
        return absl::InvalidArgumentError("empty LoadQuantized message");
    }
  };
  return new UploadReactor<v1::LoadQuantizedChunk, LoadUpload>(engine, context, response, start,
                                                                part);
}

grpc::ServerUnaryReactor* AdminService::UnloadLayer(grpc::CallbackServerContext* context,
                                                    const v1::UnloadLayerRequest* request,
                                                    v1::UnloadLayerResponse* /*response*/) {
  auto* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpc(engine_->catalog().Unload(request->name())));
  return reactor;
}

DataService::DataService(Engine* engine, std::string build_info)
    : engine_(engine), build_info_(std::move(build_info)) {}

grpc::ServerUnaryReactor* DataService::Forward(grpc::CallbackServerContext* context,
                                               const v1::ForwardRequest* request,
                                               v1::ForwardResponse* response) {
  auto* reactor = context->DefaultReactor();
  auto fail = [&](absl::Status s) {  // refused before Submit, which counts its own
    engine_->RecordRejected(request->layer(), s.code());
    if (AccessLogEnabled()) LogAccess(*request, 0, s.code(), 0, 0);
    reactor->Finish(ToGrpc(s));
    return reactor;
  };
  if (request->precision() != v1::PRECISION_UNSPECIFIED && request->precision() != v1::EXACT) {
    return fail(absl::InvalidArgumentError(absl::StrCat(
        "precision must be EXACT (the only mode so far); got ", v1::Precision_Name(request->precision()))));
  }
  const v1::Tensor& input = request->input();
  auto x_dtype = FloatDType(input.dtype(), "input dtype");
  if (!x_dtype.ok()) return fail(x_dtype.status());
  DType y_dtype = *x_dtype;
  if (request->output_dtype() != v1::DTYPE_UNSPECIFIED) {
    auto y = FloatDType(request->output_dtype(), "output_dtype");
    if (!y.ok()) return fail(y.status());
    y_dtype = *y;
  }
  if (input.shape_size() < 1) {
    return fail(absl::InvalidArgumentError("input shape must be [..., in_features]; got []"));
  }
  int64_t rows = 1;
  for (int i = 0; i + 1 < input.shape_size(); ++i) {
    if (input.shape(i) < 0 || (input.shape(i) > 0 && rows > (int64_t{1} << 40) / input.shape(i))) {
      return fail(absl::InvalidArgumentError("input shape has a negative or huge dimension"));
    }
    rows *= input.shape(i);
  }
  const int64_t k = input.shape(input.shape_size() - 1);
  if (k < 0 || (k > 0 && rows > (int64_t{1} << 40) / k) ||
      static_cast<uint64_t>(rows * k) * DTypeSize(*x_dtype) != input.data().size()) {
    return fail(absl::InvalidArgumentError(absl::StrCat(
        "input data holds ", input.data().size(), " bytes but its shape and dtype ",
        DTypeName(*x_dtype), " need ", static_cast<uint64_t>(std::max<int64_t>(rows * k, 0)) * DTypeSize(*x_dtype))));
  }
  Engine::ForwardRequest req;
  req.layer = request->layer();
  req.x_dtype = *x_dtype;
  req.x = input.data().data();
  req.rows = rows;
  req.k = k;
  req.y_dtype = y_dtype;
  const auto wire_deadline = context->deadline();
  if (wire_deadline != std::chrono::system_clock::time_point::max()) {
    req.deadline = std::chrono::steady_clock::now() +
                   std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                       wire_deadline - std::chrono::system_clock::now());
  }
  req.cancelled = [context] { return context->IsCancelled(); };
  std::vector<int64_t> out_shape(input.shape().begin(), input.shape().end());
  absl::Status submitted = engine_->Submit(
      std::move(req), [reactor, request, response, out_shape, y_dtype, rows](Engine::ForwardResult r) mutable {
        if (r.status.ok()) {
          v1::Tensor* out = response->mutable_output();
          out->set_dtype(ToProto(y_dtype));
          out_shape.back() = r.n;
          for (int64_t d : out_shape) out->add_shape(d);
          out->set_data(reinterpret_cast<const char*>(r.y.data()), r.y.size());
          response->set_layer_version(r.version);
          response->set_request_id(request->request_id());
          v1::ServerTiming* t = response->mutable_timing();
          t->set_queue_us(r.queue_us);
          t->set_compute_us(r.compute_us);
          t->set_batch_rows(r.batch_rows);
          t->set_batch_requests(r.batch_requests);
        }
        if (AccessLogEnabled()) {
          LogAccess(*request, rows, r.status.code(), r.queue_us, r.compute_us);
        }
        reactor->Finish(ToGrpc(r.status));
      });
  if (!submitted.ok()) {
    if (AccessLogEnabled()) LogAccess(*request, rows, submitted.code(), 0, 0);
    reactor->Finish(ToGrpc(submitted));
  }
  return reactor;
}

grpc::ServerUnaryReactor* DataService::ListLayers(grpc::CallbackServerContext* context,
                                                  const v1::ListLayersRequest* /*request*/,
                                                  v1::ListLayersResponse* response) {
  for (const auto& entry : engine_->catalog().List()) {
    ToProto(entry.layer->info(), response->add_layers());
  }
  auto* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* DataService::GetLayer(grpc::CallbackServerContext* context,
                                                const v1::GetLayerRequest* request,
                                                v1::LayerInfo* response) {
  auto* reactor = context->DefaultReactor();
  auto entry = engine_->catalog().Get(request->name());
  if (entry.ok()) ToProto(entry->layer->info(), response);
  reactor->Finish(ToGrpc(entry.status()));
  return reactor;
}

grpc::ServerUnaryReactor* DataService::Stats(grpc::CallbackServerContext* context,
                                             const v1::StatsRequest* request,
                                             v1::StatsResponse* response) {
  auto* reactor = context->DefaultReactor();
  // The one snapshot the metrics endpoint renders too.
  auto snapshot = request->layer().empty() ? absl::StatusOr<EngineSnapshot>(engine_->Snapshot())
                                           : engine_->Snapshot(request->layer());
  if (snapshot.ok()) {
    ToProto(*snapshot, response);
    response->mutable_server()->set_build_info(build_info_);
  }
  reactor->Finish(ToGrpc(snapshot.status()));
  return reactor;
}

}  // namespace qlinear
