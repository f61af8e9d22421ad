#include "server/service.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/dtype.h"
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
  ForwardReactor(DataService* service, Engine* engine, grpc::CallbackServerContext* context,
                 grpc::ByteBuffer* response)
      : service_(service), engine_(engine), context_(context), response_(response) {
    service_->ForwardOpened();
  }

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
    req.deadline = CallDeadline(*context_, *engine_);
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
    DataService* service = service_;
    delete this;
    service->ForwardDone();
  }

 private:
  DataService* service_;
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

// One ForwardStream. Every request read counts in in_flight_ until its
// answer has left (or was dropped because the stream broke); reading stops
// while in_flight_ is at the limit and resumes when a write brings it below.
// One write at a time: answers queue in out_. gRPC operations are started
// outside mu_ (their reactions may run inline); starting_ counts the ones
// decided and not yet started, so that the stream never finishes under them.
// The stream finishes only when in_flight_ is 0, so no engine callback can
// outlive it.
class ForwardStreamReactor : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  ForwardStreamReactor(DataService* service, Engine* engine, grpc::CallbackServerContext* context,
                       const ForwardLimits& limits, int max_inflight)
      : service_(service),
        engine_(engine),
        context_(context),
        limits_(limits),
        max_inflight_(max_inflight < 1 ? 1 : max_inflight) {}

  void Start(const Authorizer* auth) {
    auto caller = CheckCall(auth, *context_, Plane::kData);
    if (!caller.ok()) {
      {
        absl::MutexLock lock(&mu_);
        finished_ = true;
      }
      Finish(ToGrpc(caller.status()));  // before reading anything
      return;
    }
    caller_ = *std::move(caller);
    {
      absl::MutexLock lock(&mu_);
      reading_ = true;
      ++starting_;
    }
    StartRead(&read_buf_);
    registered_ = service_->AddStream(this);
    Actions act;
    {
      absl::MutexLock lock(&mu_);
      --starting_;
      if (!registered_) draining_ = true;
      MaybeFinishLocked(&act);
    }
    Run(act);
  }

  // Drain: stop reading, answer what is in flight, end UNAVAILABLE. The
  // service calls it under its streams_mu_, so it starts nothing: true
  // means the stream is to end now, and the caller calls EndDrained once it
  // holds no lock (gRPC may run OnDone inline, and OnDone takes
  // streams_mu_). Until then the stream cannot be freed: only that Finish
  // lets OnDone run.
  bool Drain() {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    Actions act;
    MaybeFinishLocked(&act);
    if (act.finish) drained_status_ = act.status;
    return act.finish;
  }
  void EndDrained() {
    grpc::Status status;
    {
      absl::MutexLock lock(&mu_);
      status = drained_status_;
    }
    Finish(status);  // last: OnDone may delete this at once
  }

  void OnReadDone(bool ok) override {
    Actions act;
    if (!ok) {
      absl::MutexLock lock(&mu_);
      reading_ = false;
      read_closed_ = true;
      MaybeFinishLocked(&act);
    } else {
      HandleRequest(&act);  // nothing, if the stream finished meanwhile
    }
    Run(act);
  }

  void OnWriteDone(bool ok) override {
    Actions act;
    {
      absl::MutexLock lock(&mu_);
      Out done = std::move(out_.front());
      out_.pop_front();
      --in_flight_;
      if (!ok) {
        // The client went away or the transport refused: what is queued
        // will not reach it either.
        broken_ = true;
        Undelivered(done);
        for (Out& o : out_) Undelivered(o);
        in_flight_ -= static_cast<int64_t>(out_.size());
        out_.clear();
      }
      writing_ = false;
      if (!out_.empty()) {
        writing_ = true;
        act.write = &out_.front().bytes;
        // More behind it: let gRPC coalesce this one with the next.
        act.hint = out_.size() > 1;
      }
      MaybeReadLocked(&act);
      MaybeFinishLocked(&act);
      if (act.write != nullptr || act.read) ++starting_;
    }
    Run(act);
  }

  void OnDone() override {
    if (registered_) service_->RemoveStream(this);
    delete this;
  }

 private:
  struct Pending {
    ParsedForward parsed;
    int64_t rows = 0;
  };
  struct Out {
    grpc::ByteBuffer bytes;
    Engine::ForwardResult result;  // y cleared; stats for RecordUndelivered
    int64_t rows = 0;
    bool counted = false;  // an OK answer the engine counted
  };
  struct Actions {
    grpc::ByteBuffer* write = nullptr;
    bool hint = false;  // buffer_hint: another write follows at once
    bool read = false;
    bool finish = false;
    grpc::Status status;
  };

  static void Undelivered(const Out& o) {
    if (o.counted) Engine::RecordUndelivered(o.result, o.rows, absl::StatusCode::kCancelled);
  }

  // Run starts what `act` says, outside mu_.
  void Run(const Actions& act) {
    if (act.finish) {
      Finish(act.status);  // last: OnDone may delete this at once
      return;
    }
    if (act.write == nullptr && !act.read) return;
    if (act.write != nullptr) {
      StartWrite(act.write,
                 act.hint ? grpc::WriteOptions().set_buffer_hint() : grpc::WriteOptions());
    }
    if (act.read) StartRead(&read_buf_);
    Actions next;
    {
      absl::MutexLock lock(&mu_);
      --starting_;
      MaybeFinishLocked(&next);
    }
    if (next.finish) Finish(next.status);
  }

  void MaybeReadLocked(Actions* act) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (reading_ || read_closed_ || draining_ || broken_ || finished_) return;
    if (in_flight_ >= max_inflight_) return;  // flow control: stop reading
    reading_ = true;
    act->read = true;
  }

  void MaybeFinishLocked(Actions* act) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || starting_ > 0 || in_flight_ > 0 || writing_) return;
    if (!read_closed_ && !draining_ && !broken_) return;
    finished_ = true;
    act->finish = true;
    act->write = nullptr;
    act->read = false;
    if (broken_ || context_->IsCancelled()) {
      act->status = grpc::Status(grpc::StatusCode::CANCELLED, "the stream was cancelled");
    } else if (draining_) {
      act->status = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                 absl::StrCat("the server is draining; ", answered_,
                                              " answers were sent on this stream"));
    } else {
      act->status = grpc::Status::OK;
    }
  }

  // Enqueue queues one answer (in_flight_ already counts it).
  void EnqueueLocked(Out out, Actions* act) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (broken_) {
      Undelivered(out);
      --in_flight_;
      return;
    }
    ++answered_;
    out_.push_back(std::move(out));
    if (!writing_) {
      writing_ = true;
      act->write = &out_.back().bytes;
    }
  }

  static Out ErrorAnswer(const std::string& request_id, const absl::Status& status) {
    v1::ForwardStreamResponse answer;
    answer.set_request_id(request_id);
    answer.mutable_status()->set_code(static_cast<int32_t>(status.code()));
    answer.mutable_status()->set_message(std::string(status.message()));
    Out out;
    (void)Serialize(answer, &out.bytes);  // cannot fail for a built message
    return out;
  }

  void LogAccess(const ParsedForward& parsed, int64_t rows, absl::StatusCode code,
                 const Engine::ForwardResult* r) {
    if (!AccessLogEnabled()) return;
    Log(LogLevel::kInfo, "access",
        {{"rpc", "ForwardStream"},
         {"request_id", ForLog(parsed.message.request_id())},
         {"caller", caller_},
         {"layer", ForLog(parsed.message.layer())},
         {"rows", rows},
         {"code", absl::StatusCodeToString(code)},
         {"queue_us", r != nullptr ? r->queue_us : 0},
         {"compute_us", r != nullptr ? r->compute_us : 0}});
  }

  void HandleRequest(Actions* act) {
    auto pending = std::make_unique<Pending>();
    ParsedForward& parsed = pending->parsed;
    absl::Status status = ParseForward(&read_buf_, limits_, &parsed);
    const std::string id = parsed.parsed ? parsed.message.request_id() : "";
    if (!status.ok()) {
      if (!parsed.parsed) {
        engine_->RecordMalformed("ForwardStream");  // counted, never logged
      } else {
        engine_->RecordRejected(parsed.message.layer(), status.code());
      }
    } else if (id.empty()) {
      status = absl::InvalidArgumentError("request_id is required on ForwardStream");
      engine_->RecordRejected(parsed.message.layer(), status.code());
    } else if (parsed.message.timeout_ms() < 0) {
      status = absl::InvalidArgumentError(
          absl::StrCat("timeout_ms must be >= 0 (0: the stream's deadline); got ",
                       parsed.message.timeout_ms()));
      engine_->RecordRejected(parsed.message.layer(), status.code());
    }
    Pending* raw = pending.get();
    {
      absl::MutexLock lock(&mu_);
      reading_ = false;
      // The stream may have finished (a drain, a broken write) while this
      // read was outstanding: then nothing more may start on it — no Submit
      // whose callback could outlive the reactor, no write. (Counted as
      // read above, if it was bad; never answered.)
      if (finished_) return;
      ++in_flight_;
      if (status.ok()) {
        if (!pending_.try_emplace(id, std::move(pending)).second) {
          status = absl::InvalidArgumentError(absl::StrCat(
              "request_id ", QuoteForMessage(id), " is already in flight on this stream"));
          engine_->RecordRejected(raw->parsed.message.layer(), status.code());
          raw = nullptr;  // `pending` still owns it; freed below
        }
      }
      if (!status.ok()) {
        EnqueueLocked(ErrorAnswer(id, status), act);
      }
      if (engine_->draining()) draining_ = true;
      if (!status.ok()) {
        MaybeReadLocked(act);
        MaybeFinishLocked(act);
        if (!act->finish && (act->write != nullptr || act->read)) ++starting_;
        return;
      }
      // Submit runs outside mu_ (its done may run at once, and takes mu_);
      // starting_ keeps the stream from finishing meanwhile.
      ++starting_;
    }
    Submit(raw, act);
  }

  void Submit(Pending* p, Actions* act) {
    p->rows = p->parsed.request.rows;
    Engine::ForwardRequest req = p->parsed.request;
    req.deadline = CallDeadline(*context_, *engine_);
    if (p->parsed.message.timeout_ms() > 0) {
      req.deadline = std::min(req.deadline, engine_->Now() + std::chrono::milliseconds(
                                                                 p->parsed.message.timeout_ms()));
    }
    grpc::CallbackServerContext* context = context_;
    req.cancelled = [context] { return context->IsCancelled(); };
    const std::string id = p->parsed.message.request_id();
    absl::Status submitted = engine_->Submit(std::move(req), [this, p](Engine::ForwardResult r) {
      // The dispatcher's thread: build the answer, queue it.
      Out out;
      v1::ForwardStreamResponse answer;
      answer.set_request_id(p->parsed.message.request_id());
      answer.mutable_status()->set_code(static_cast<int32_t>(r.status.code()));
      if (r.status.ok()) {
        BuildForwardResponse(p->parsed, r, answer.mutable_response());
        out.counted = true;
      } else {
        answer.mutable_status()->set_message(std::string(r.status.message()));
      }
      (void)Serialize(answer, &out.bytes);  // cannot fail for a built message
      LogAccess(p->parsed, p->rows, r.status.code(), &r);
      r.y = {};  // the answer holds its own copy now
      out.rows = p->rows;
      out.result = std::move(r);
      Actions a;
      {
        absl::MutexLock lock(&mu_);
        const std::string id = p->parsed.message.request_id();  // outlives p
        pending_.erase(id);  // frees p
        EnqueueLocked(std::move(out), &a);
        MaybeFinishLocked(&a);
        if (a.write != nullptr) ++starting_;
      }
      Run(a);
    });
    if (!submitted.ok()) {
      absl::MutexLock lock(&mu_);
      LogAccess(p->parsed, p->rows, submitted.code(), nullptr);
      pending_.erase(id);
      EnqueueLocked(ErrorAnswer(id, submitted), act);
    }
    absl::MutexLock lock(&mu_);
    --starting_;
    MaybeReadLocked(act);
    MaybeFinishLocked(act);
    if (!act->finish && (act->write != nullptr || act->read)) ++starting_;
  }

  DataService* service_;
  Engine* engine_;
  grpc::CallbackServerContext* context_;
  const ForwardLimits limits_;
  const int64_t max_inflight_;
  std::string caller_;
  bool registered_ = false;  // set once in Start, read in OnDone
  grpc::ByteBuffer read_buf_;

  absl::Mutex mu_;
  int64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t starting_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t answered_ ABSL_GUARDED_BY(mu_) = 0;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool read_closed_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status drained_status_ ABSL_GUARDED_BY(mu_);  // Drain's, for EndDrained
  std::map<std::string, std::unique_ptr<Pending>> pending_ ABSL_GUARDED_BY(mu_);
  std::deque<Out> out_ ABSL_GUARDED_BY(mu_);
};

namespace {

// One ForwardMulti: every layer checked before anything is submitted; one
// Submit per layer; the last part to finish answers.
class ForwardMultiReactor : public grpc::ServerUnaryReactor {
 public:
  ForwardMultiReactor(Engine* engine, grpc::CallbackServerContext* context,
                      v1::ForwardMultiResponse* response)
      : engine_(engine), context_(context), response_(response) {}

  void Start(const Authorizer* auth, const v1::ForwardMultiRequest& request,
             const ForwardLimits& limits) {
    if (auto caller = CheckCall(auth, *context_, Plane::kData); !caller.ok()) {
      return Finish(ToGrpc(caller.status()));
    }
    absl::Status status = Check(request, limits);
    if (!status.ok()) {
      // Refused before any Submit: counted once per named layer.
      for (const std::string& name : request.layers()) engine_->RecordRejected(name, status.code());
      return Finish(ToGrpc(status));
    }
    const size_t parts = layers_.size();
    results_.resize(parts);
    remaining_ = static_cast<int64_t>(parts) + 1;  // + 1: this loop
    const auto deadline = CallDeadline(*context_, *engine_);
    grpc::CallbackServerContext* context = context_;
    size_t submitted = 0;
    for (; submitted < parts; ++submitted) {
      Engine::ForwardRequest req = parsed_.request;
      req.layer = layers_[submitted];
      req.max_answer_bytes = 0;  // the whole answer was checked above
      req.deadline = deadline;
      // A part refused at Submit (the queue full, a drain) fails the call:
      // the parts before it need not compute any more.
      req.cancelled = [this, context] { return abandoned_.load() || context->IsCancelled(); };
      const size_t i = submitted;
      absl::Status s = engine_->Submit(std::move(req), [this, i](Engine::ForwardResult r) {
        results_[i] = std::move(r);
        Arrive(1);
      });
      if (!s.ok()) {
        results_[submitted].status = s;
        failed_ = submitted;
        abandoned_.store(true);
        break;
      }
    }
    // The part that failed to submit and those never submitted arrive now.
    Arrive(static_cast<int64_t>(parts - submitted) + 1);
  }

  void OnDone() override { delete this; }

 private:
  absl::Status Check(const v1::ForwardMultiRequest& request, const ForwardLimits& limits) {
    if (request.layers().empty()) {
      return absl::InvalidArgumentError("ForwardMulti needs at least one layer");
    }
    int64_t k = -1;
    std::string first;
    std::vector<int64_t> ns;
    for (const std::string& name : request.layers()) {
      if (absl::Status s = ValidateLayerName(name); !s.ok()) return s;
      for (const std::string& seen : layers_) {
        if (seen == name) {
          return absl::InvalidArgumentError(
              absl::StrCat("layer ", QuoteForMessage(name), " is named twice"));
        }
      }
      auto entry = engine_->catalog().Get(name);
      if (!entry.ok()) return entry.status();
      const Layer::Info& info = entry->layer->info();
      if (k < 0) {
        k = info.k;
        first = name;
      } else if (info.k != k) {
        return absl::InvalidArgumentError(absl::StrCat(
            "ForwardMulti's layers must share in_features: ", QuoteForMessage(first), " has ", k,
            ", ", QuoteForMessage(name), " has ", info.k));
      }
      layers_.push_back(name);
      ns.push_back(info.n);
    }
    v1::ForwardRequest one;
    one.set_layer(layers_[0]);
    *one.mutable_input() = request.input();
    one.set_output_dtype(request.output_dtype());
    one.set_request_id(request.request_id());
    one.set_precision(request.precision());
    absl::Status parsed = ParseForward(one.SerializeAsString(), limits, &parsed_);
    if (!parsed.ok()) return parsed;
    if (parsed_.request.k != k) {
      return absl::InvalidArgumentError(
          absl::StrCat("the input's last dimension is ", parsed_.request.k,
                       "; the layers' in_features is ", k));
    }
    // Everything Submit would refuse on any one layer (a precision that
    // layer cannot run here, say), refused for the whole call now.
    for (const std::string& name : layers_) {
      Engine::ForwardRequest req = parsed_.request;
      req.layer = name;
      req.max_answer_bytes = 0;  // the whole answer is checked below
      if (absl::Status s = engine_->Check(req); !s.ok()) return s;
    }
    if (limits.max_answer_bytes > 0) {
      uint64_t bytes = request.request_id().size() + 16;
      for (int64_t n : ns) {
        bytes += static_cast<uint64_t>(parsed_.request.rows) * static_cast<uint64_t>(n) *
                     DTypeSize(parsed_.request.y_dtype) +
                 AnswerOverheadBytes(one) + 2 * kMaxLayerNameBytes;
      }
      if (bytes > limits.max_answer_bytes) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "the answer would be ", bytes, " bytes, more than the server may send (",
            limits.max_answer_bytes, "; --max-message-mb)"));
      }
    }
    return absl::OkStatus();
  }

  // Arrive counts `parts` finished parts; the last one answers.
  void Arrive(int64_t parts) {
    {
      absl::MutexLock lock(&mu_);
      remaining_ -= parts;
      if (remaining_ > 0) return;
    }
    // The refusal, not the CANCELLED it gave the parts before it.
    if (failed_ < results_.size()) return Finish(ToGrpc(results_[failed_].status));
    for (const Engine::ForwardResult& r : results_) {
      if (!r.status.ok()) return Finish(ToGrpc(r.status));
    }
    response_->set_request_id(parsed_.message.request_id());
    for (size_t i = 0; i < layers_.size(); ++i) {
      v1::ForwardResponse one;
      BuildForwardResponse(parsed_, results_[i], &one);
      v1::LayerOutput* out = response_->add_outputs();
      out->set_layer(layers_[i]);
      out->mutable_output()->Swap(one.mutable_output());
      out->set_layer_version(one.layer_version());
      *out->mutable_timing() = one.timing();
      out->set_precision(one.precision());
      results_[i].y = {};
    }
    Finish(grpc::Status::OK);  // last: OnDone may run (and delete this) at once
  }

  Engine* engine_;
  grpc::CallbackServerContext* context_;
  v1::ForwardMultiResponse* response_;
  std::vector<std::string> layers_;
  ParsedForward parsed_;  // layers_[0]'s request; the others copy it
  std::vector<Engine::ForwardResult> results_;
  // The part Submit refused (written before Start's own Arrive, read by the
  // last one); none: SIZE_MAX.
  size_t failed_ = SIZE_MAX;
  std::atomic<bool> abandoned_{false};  // read by the parts' cancelled()
  absl::Mutex mu_;
  int64_t remaining_ ABSL_GUARDED_BY(mu_) = 0;
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
                         uint64_t max_response_bytes, int max_stream_inflight)
    : engine_(engine),
      build_info_(std::move(build_info)),
      auth_(auth),
      max_stream_inflight_(max_stream_inflight) {
  limits_.max_answer_bytes = max_response_bytes;
}

DataService::~DataService() = default;

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* DataService::ForwardStream(
    grpc::CallbackServerContext* context) {
  auto* reactor = new ForwardStreamReactor(this, engine_, context, limits_, max_stream_inflight_);
  reactor->Start(auth_);
  return reactor;
}

grpc::ServerUnaryReactor* DataService::ForwardMulti(grpc::CallbackServerContext* context,
                                                    const v1::ForwardMultiRequest* request,
                                                    v1::ForwardMultiResponse* response) {
  auto* reactor = new ForwardMultiReactor(engine_, context, response);
  reactor->Start(auth_, *request, limits_);
  return reactor;
}

bool DataService::AddStream(ForwardStreamReactor* stream) {
  absl::MutexLock lock(&streams_mu_);
  if (draining_) return false;
  streams_.insert(stream);
  return true;
}

void DataService::RemoveStream(ForwardStreamReactor* stream) {
  absl::MutexLock lock(&streams_mu_);
  streams_.erase(stream);
}

bool DataService::WaitForSent(std::chrono::steady_clock::time_point deadline,
                              std::chrono::milliseconds linger) {
  while (open_forwards_.load() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  const bool sent = open_forwards_.load() == 0;
  std::this_thread::sleep_for(linger);
  return sent;
}

void DataService::BeginDrain() {
  // Under the lock every registered stream is alive (OnDone unregisters
  // under it); those that are to end now are finished after it, since
  // gRPC may run their OnDone inline, which takes the lock.
  std::vector<ForwardStreamReactor*> ending;
  {
    absl::MutexLock lock(&streams_mu_);
    draining_ = true;
    for (ForwardStreamReactor* stream : streams_) {
      if (stream->Drain()) ending.push_back(stream);
    }
  }
  for (ForwardStreamReactor* stream : ending) stream->EndDrained();
}

grpc::ServerUnaryReactor* DataService::Forward(grpc::CallbackServerContext* context,
                                               const grpc::ByteBuffer* request,
                                               grpc::ByteBuffer* response) {
  auto* reactor = new ForwardReactor(this, engine_, context, response);
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
