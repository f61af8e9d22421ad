#include "server/service.h"

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/names.h"
#include "grpcpp/support/proto_buffer_writer.h"
#include "server/convert.h"
#include "server/log.h"
#include "server/upload_stream.h"

namespace qlinear {
namespace {

// ForLog keeps a client-given string short in a log line (the log escapes
// it): as it is up to kMaxLayerNameBytes, else QuoteForMessage's cut form.
std::string ForLog(const std::string& s) {
  return s.size() <= kMaxLayerNameBytes ? s : QuoteForMessage(s);
}

// Serialize writes `message` into a raw method's response buffer.
grpc::Status Serialize(const google::protobuf::Message& message, grpc::ByteBuffer* out) {
  bool own = false;
  return grpc::GenericSerialize<grpc::ProtoBufferWriter, google::protobuf::Message>(message, out,
                                                                                  &own);
}

// Reads a client stream of serialized upload chunks into an UploadStream;
// the clean end of the stream publishes. Any fault ends the call with its
// status.
class UploadReactor : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  UploadReactor(Engine* engine, const Authorizer* auth, grpc::CallbackServerContext* context,
                grpc::ByteBuffer* response, UploadStream::Rpc rpc)
      : engine_(engine), context_(context), response_(response), rpc_(rpc), stream_(engine, rpc) {
    auto caller = CheckCall(auth, *context, Plane::kAdmin);
    if (!caller.ok()) {
      Finish(ToGrpc(caller.status()));  // before reading anything
      return;
    }
    StartRead(&chunk_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client closed its side (or went away)
      if (context_->IsCancelled()) {
        stream_.Abandon(absl::CancelledError("upload cancelled"));  // never publish it
        return End(grpc::Status(grpc::StatusCode::CANCELLED, "upload cancelled"));
      }
      auto layer = stream_.Finish();
      if (!layer.ok()) return End(ToGrpc(layer.status()));
      v1::UploadResponse answer;
      ToProto((*layer)->info(), answer.mutable_layer());
      return End(Serialize(answer, response_));
    }
    absl::Status status = stream_.OnMessage(&chunk_);
    if (!status.ok()) return End(ToGrpc(status));
    StartRead(&chunk_);
  }

  void OnDone() override { delete this; }

 private:
  // End is where every upload stream that was read ends, whatever ended it.
  void End(const grpc::Status& status) {
    engine_->RecordUpload(static_cast<absl::StatusCode>(status.error_code()));
    if (!status.ok() && !stream_.malformed()) LogRefused(status);
    Finish(status);
  }

  // LogRefused logs an upload that published nothing; a warning when the
  // server's own limits or disk refused it, info when the request did.
  // (Malformed streams are counted, not logged.)
  void LogRefused(const grpc::Status& status) {
    const auto code = static_cast<absl::StatusCode>(status.error_code());
    const bool server_side = code == absl::StatusCode::kResourceExhausted ||
                             code == absl::StatusCode::kInternal ||
                             code == absl::StatusCode::kDataLoss ||
                             code == absl::StatusCode::kUnknown;
    Log(server_side ? LogLevel::kWarning : LogLevel::kInfo, "upload_refused",
        {{"rpc", std::string(UploadStream::RpcName(rpc_))},
         {"name", stream_.name()},
         {"code", absl::StatusCodeToString(code)},
         {"reason", status.error_message()}});
  }

  Engine* engine_;
  grpc::CallbackServerContext* context_;
  grpc::ByteBuffer* response_;
  UploadStream::Rpc rpc_;
  UploadStream stream_;
  grpc::ByteBuffer chunk_;
};

// One Forward: parse, validate, submit; the engine's thread builds the
// answer; OnDone learns whether it reached the client, and only then are
// stats corrected and the access line written.
class ForwardReactor : public grpc::ServerUnaryReactor {
 public:
  ForwardReactor(Engine* engine, grpc::CallbackServerContext* context, grpc::ByteBuffer* response)
      : engine_(engine), context_(context), response_(response) {}

  void Start(const Authorizer* auth, const grpc::ByteBuffer* request, const ForwardLimits& limits) {
    auto caller = CheckCall(auth, *context_, Plane::kData);
    if (!caller.ok()) {
      skip_log_ = true;
      return Answer(caller.status());
    }
    caller_ = *std::move(caller);
    grpc::ByteBuffer bytes(*request);  // shares the slices
    absl::Status parsed = ParseForward(&bytes, limits, &parsed_);
    if (!parsed.ok()) {
      if (!parsed_.parsed) {
        engine_->RecordMalformed("Forward");  // counted, never logged
        skip_log_ = true;
      } else {
        // Refused before Submit, which counts its own.
        engine_->RecordRejected(parsed_.message.layer(), parsed.code());
      }
      return Answer(parsed);
    }
    rows_ = parsed_.request.rows;
    Engine::ForwardRequest req = parsed_.request;
    const auto wire_deadline = context_->deadline();
    if (wire_deadline != std::chrono::system_clock::time_point::max()) {
      req.deadline = std::chrono::steady_clock::now() +
                     std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                         wire_deadline - std::chrono::system_clock::now());
    }
    grpc::CallbackServerContext* context = context_;
    req.cancelled = [context] { return context->IsCancelled(); };
    absl::Status submitted = engine_->Submit(std::move(req), [this](Engine::ForwardResult r) {
      grpc::Status status = ToGrpc(r.status);
      if (r.status.ok()) {
        v1::ForwardResponse answer;
        BuildForwardResponse(parsed_, r, &answer);
        status = Serialize(answer, response_);
      }
      r.y = {};  // the answer holds its own copy now
      result_ = std::move(r);
      counted_ = true;
      code_ = static_cast<absl::StatusCode>(status.error_code());
      Finish(status);  // last: OnDone may run (and delete this) at once
    });
    if (!submitted.ok()) Answer(submitted);
  }

  void OnDone() override {
    // A send that failed (the client went away, or the transport refused
    // the answer) is not what the client received.
    if (code_ == absl::StatusCode::kOk && context_->IsCancelled()) {
      code_ = absl::StatusCode::kCancelled;
      if (counted_) Engine::RecordUndelivered(result_, rows_, code_);
    }
    if (!skip_log_ && AccessLogEnabled()) {
      Log(LogLevel::kInfo, "access",
          {{"request_id", ForLog(parsed_.message.request_id())},
           {"caller", caller_},
           {"layer", ForLog(parsed_.message.layer())},
           {"rows", rows_},
           {"code", absl::StatusCodeToString(code_)},
           {"queue_us", result_.queue_us},
           {"compute_us", result_.compute_us}});
    }
    delete this;
  }

 private:
  void Answer(const absl::Status& status) {
    code_ = status.code();
    Finish(ToGrpc(status));
  }

  Engine* engine_;
  grpc::CallbackServerContext* context_;
  grpc::ByteBuffer* response_;
  ParsedForward parsed_;
  std::string caller_;
  int64_t rows_ = 0;
  absl::StatusCode code_ = absl::StatusCode::kOk;
  Engine::ForwardResult result_;
  bool counted_ = false;   // the engine counted it (its done ran)
  bool skip_log_ = false;  // unauthorised or malformed: no access line
};

}  // namespace

grpc::ServerReadReactor<grpc::ByteBuffer>* AdminService::Quantize(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* response) {
  return new UploadReactor(engine_, auth_, context, response, UploadStream::Rpc::kQuantize);
}

grpc::ServerReadReactor<grpc::ByteBuffer>* AdminService::LoadQuantized(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* response) {
  return new UploadReactor(engine_, auth_, context, response, UploadStream::Rpc::kLoadQuantized);
}

grpc::ServerUnaryReactor* AdminService::UnloadLayer(grpc::CallbackServerContext* context,
                                                    const v1::UnloadLayerRequest* request,
                                                    v1::UnloadLayerResponse* /*response*/) {
  auto* reactor = context->DefaultReactor();
  if (auto caller = CheckCall(auth_, *context, Plane::kAdmin); !caller.ok()) {
    reactor->Finish(ToGrpc(caller.status()));
    return reactor;
  }
  absl::Status s = ValidateLayerName(request->name());
  if (s.ok()) s = engine_->catalog().Unload(request->name());
  reactor->Finish(ToGrpc(s));
  return reactor;
}

DataService::DataService(Engine* engine, std::string build_info, const Authorizer* auth,
                         uint64_t max_response_bytes)
    : engine_(engine), build_info_(std::move(build_info)), auth_(auth) {
  limits_.max_answer_bytes = max_response_bytes;
}

grpc::ServerUnaryReactor* DataService::Forward(grpc::CallbackServerContext* context,
                                               const grpc::ByteBuffer* request,
                                               grpc::ByteBuffer* response) {
  auto* reactor = new ForwardReactor(engine_, context, response);
  reactor->Start(auth_, request, limits_);
  return reactor;
}

grpc::ServerUnaryReactor* DataService::ListLayers(grpc::CallbackServerContext* context,
                                                  const v1::ListLayersRequest* /*request*/,
                                                  v1::ListLayersResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (auto caller = CheckCall(auth_, *context, Plane::kData); !caller.ok()) {
    reactor->Finish(ToGrpc(caller.status()));
    return reactor;
  }
  for (const auto& entry : engine_->catalog().List()) {
    ToProto(entry.layer->info(), response->add_layers());
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* DataService::GetLayer(grpc::CallbackServerContext* context,
                                                const v1::GetLayerRequest* request,
                                                v1::LayerInfo* response) {
  auto* reactor = context->DefaultReactor();
  if (auto caller = CheckCall(auth_, *context, Plane::kData); !caller.ok()) {
    reactor->Finish(ToGrpc(caller.status()));
    return reactor;
  }
  if (absl::Status s = ValidateLayerName(request->name()); !s.ok()) {
    reactor->Finish(ToGrpc(s));
    return reactor;
  }
  auto entry = engine_->catalog().Get(request->name());
  if (entry.ok()) ToProto(entry->layer->info(), response);
  reactor->Finish(ToGrpc(entry.status()));
  return reactor;
}

grpc::ServerUnaryReactor* DataService::Stats(grpc::CallbackServerContext* context,
                                             const v1::StatsRequest* request,
                                             v1::StatsResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (auto caller = CheckCall(auth_, *context, Plane::kData); !caller.ok()) {
    reactor->Finish(ToGrpc(caller.status()));
    return reactor;
  }
  if (!request->layer().empty()) {
    if (absl::Status s = ValidateLayerName(request->layer()); !s.ok()) {
      reactor->Finish(ToGrpc(s));
      return reactor;
    }
  }
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
