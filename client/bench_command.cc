#include "client/bench_command.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/channel_flags.h"
#include "client/client.h"
#include "client/command.h"
#include "core/flags.h"
#include "core/precision.h"
#include "core/half.h"
#include "grpcpp/client_context.h"
#include "proto/wire.h"

namespace qlinear {
namespace {

using Clock = std::chrono::steady_clock;

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  return v[std::min(v.size() - 1, rank == 0 ? 0 : rank - 1)];
}

// Everything the run records; guarded by mu.
struct Recorder {
  std::mutex mu;
  Clock::time_point measure_start, measure_end;  // the measured part
  bool measuring = false;
  std::vector<std::vector<double>> window_latency_ms;  // per 1-second window
  std::map<std::string, uint64_t> errors;              // measured part
  uint64_t requests_total = 0;                         // every answer, warmup included
  uint64_t measured = 0, measured_ok = 0;
  // For scripts that inject faults (docker/scale_test.sh): OK answers over
  // the whole run, and the wall-clock start of the measured part, which
  // places the per-second windows in time.
  uint64_t ok_total = 0;
  std::chrono::system_clock::time_point measure_start_wall;
  double queue_us = 0, compute_us = 0, batch_rows = 0;  // sums over measured OK answers
  std::map<std::string, uint64_t> ran;  // measured OK answers by the precision that ran

  void Record(Clock::time_point started, Clock::time_point done, const grpc::Status& status,
              const v1::ForwardResponse& response) {
    std::lock_guard<std::mutex> lock(mu);
    ++requests_total;
    if (status.ok()) ++ok_total;
    if (!measuring || started < measure_start) return;
    const size_t window = static_cast<size_t>(
        std::chrono::duration_cast<std::chrono::seconds>(done - measure_start).count());
    if (window >= window_latency_ms.size()) window_latency_ms.resize(window + 1);
    ++measured;
    if (status.ok()) {
      ++measured_ok;
      window_latency_ms[window].push_back(
          std::chrono::duration<double, std::milli>(done - started).count());
      queue_us += static_cast<double>(response.timing().queue_us());
      compute_us += static_cast<double>(response.timing().compute_us());
      batch_rows += static_cast<double>(response.timing().batch_rows());
      const absl::StatusOr<Precision> p = PrecisionFromProto(response.precision());
      ++ran[p.ok() ? std::string(PrecisionName(*p)) : WireEnumName(response.precision())];
    } else {
      ++errors[absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()))];
    }
  }
};

// One call in flight: owns what gRPC needs until the callback.
struct Call {
  grpc::ClientContext context;
  v1::ForwardResponse response;
  v1::ForwardMultiResponse multi_response;  // --layers
  Clock::time_point started;
  uint64_t n = 0;    // which request: picks the stub and the input
  int attempt = 0;   // 0: first send; --retries bounds the rest
};

// Retryable: what a replica that died mid-answer (a proxy then cuts the
// stream: UNKNOWN), refused while draining (UNAVAILABLE) or dropped an
// unstarted call at shutdown (CANCELLED) leaves behind. Forward is
// idempotent, so sending it again is safe.
bool Retryable(grpc::StatusCode code) {
  return code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::UNKNOWN ||
         code == grpc::StatusCode::CANCELLED;
}

// --stream: one ForwardStream per channel; requests queue for its one
// write in flight; answers are matched to their start by request_id.
// gRPC operations start outside mu (their reactions may run inline).
//
// Lifetime: gRPC may free the call as soon as its last operation is done,
// before OnDone, so an operation started from outside the reactions (Send
// from another stream's reaction or the arrivals thread, Close from the
// main thread) is only safe under a hold. The constructor takes one; it is
// removed once no such start can come any more (over_: the reads ended, a
// write failed, or Close) and none is under way (starting_ == 0).
class BenchStream final : public grpc::ClientBidiReactor<v1::ForwardRequest, v1::ForwardStreamResponse> {
 public:
  using OnAnswer = std::function<void(Clock::time_point started, const grpc::Status& status,
                                      const v1::ForwardResponse& response)>;
  // on_lost: a request the stream ended under (its status), or one sent
  // after it ended; recorded, never re-issued.
  BenchStream(v1::Data::Stub* stub, const ChannelOptions& channel, int64_t timeout_s, OnAnswer on_answer,
              OnAnswer on_lost)
      : on_answer_(std::move(on_answer)), on_lost_(std::move(on_lost)) {
    context_.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(timeout_s));
    SetCallMetadata(channel, &context_);
    stub->async()->ForwardStream(&context_, this);
    AddHold();
    StartRead(&answer_);
    StartCall();
  }

  // Send queues `request` (its request_id set by the caller).
  void Send(v1::ForwardRequest request, Clock::time_point started) {
    const v1::ForwardRequest* start = nullptr;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (over_) {
        const grpc::Status status = status_;
        lock.unlock();
        on_lost_(started, status.ok() ? grpc::Status(grpc::StatusCode::CANCELLED, "stream ended") : status,
                 v1::ForwardResponse());
        return;
      }
      started_[request.request_id()] = started;
      queue_.push_back(std::move(request));
      if (!writing_) {
        writing_ = true;
        start = &queue_.back();
        ++starting_;
      }
    }
    if (start != nullptr) {
      StartWrite(start);
      Started();
    }
  }

  // Close ends the client's side once the queued writes are out; Wait
  // returns the stream's status.
  void Close() {
    bool now = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      closing_ = true;
      now = !writing_ && !over_;
      if (now) ++starting_;
    }
    if (now) StartWritesDone();
    Over();  // nothing more starts from outside
    if (now) Started();
  }
  grpc::Status Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return done_; });
    return status_;
  }
  // ended: the stream is over (what it held was recorded as lost).
  bool ended() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }

  void OnWriteDone(bool ok) override {
    const v1::ForwardRequest* next = nullptr;
    bool close = false, hint = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.pop_front();
      if (ok && !queue_.empty()) {
        next = &queue_.front();
        hint = queue_.size() > 1;  // more behind it: let gRPC coalesce
      } else {
        writing_ = false;
        close = closing_ && ok;
      }
    }
    // Inside a reaction the call is alive: these need no hold.
    if (next != nullptr) {
      StartWrite(next, hint ? grpc::WriteOptions().set_buffer_hint() : grpc::WriteOptions());
    }
    if (close) StartWritesDone();
    if (!ok) Over();
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Over();  // the server ended the stream, or it broke
      return;
    }
    Clock::time_point started;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = started_.find(answer_.request_id());
      if (it == started_.end()) {
        started = Clock::now();
      } else {
        started = it->second;
        started_.erase(it);
      }
    }
    grpc::Status status(static_cast<grpc::StatusCode>(answer_.status().code()),
                        answer_.status().message());
    on_answer_(started, status, answer_.response());
    StartRead(&answer_);
  }

  void OnDone(const grpc::Status& status) override {
    std::map<std::string, Clock::time_point> lost;
    {
      std::lock_guard<std::mutex> lock(mu_);
      status_ = status;
      lost.swap(started_);
    }
    const grpc::Status why =
        status.ok() ? grpc::Status(grpc::StatusCode::CANCELLED, "stream ended") : status;
    for (const auto& [id, started] : lost) on_lost_(started, why, v1::ForwardResponse());
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;  // last: Wait's caller may destroy this
    done_cv_.notify_all();
  }

 private:
  // Over: no operation starts from outside the reactions any more; the
  // hold goes once none is under way.
  void Over() {
    bool remove = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      over_ = true;
      remove = starting_ == 0 && !released_;
      released_ = released_ || remove;
    }
    if (remove) RemoveHold();
  }
  // Started: an operation begun under the hold has been started.
  void Started() {
    bool remove = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      --starting_;
      remove = over_ && starting_ == 0 && !released_;
      released_ = released_ || remove;
    }
    if (remove) RemoveHold();
  }

  OnAnswer on_answer_, on_lost_;
  grpc::ClientContext context_;
  v1::ForwardStreamResponse answer_;
  std::mutex mu_;
  std::condition_variable done_cv_;
  std::deque<v1::ForwardRequest> queue_;
  std::map<std::string, Clock::time_point> started_;
  bool writing_ = false, closing_ = false, over_ = false, released_ = false, done_ = false;
  int starting_ = 0;
  grpc::Status status_;
};

}  // namespace

int RunBench(int argc, char** argv) {
  const Command cmd{"bench",
                    "--layer NAME [--target HOST:PORT[,HOST:PORT...]|dns:///HOST:PORT] [--tls-ca FILE] [--tls-cert FILE --tls-key FILE] "
                    "[--token-file FILE] [--rows R] [--dtype f32|f16|bf16] [--precision exact|int8|bf16] "
                    "(--concurrency C | --rate QPS) [--duration S | --requests N] [--warmup S] "
                    "[--until-stable] [--channels K] [--retries N] [--stream | --layers A,B,C] [--json]\n"
                    "  --stream: every request on ForwardStream, one stream per channel (requests\n"
                    "    spread over them: --concurrency C keeps C in flight in all).\n"
                    "  --layers A,B,C: each request is one ForwardMulti through those layers\n"
                    "    (same in_features); replaces --layer."};
  std::set<std::string> valued = {"layer",    "rows",   "dtype",    "concurrency", "rate",
                                   "duration", "requests", "warmup", "channels",    "timeout-s",
                                   "retries", "precision", "layers"};
  valued.insert(ChannelFlagNames().begin(), ChannelFlagNames().end());
  auto flags = Flags::Parse(argc, argv, 2, valued, {"json", "until-stable", "stream"});
  if (!flags.ok()) return cmd.Usage(flags.status().message());
  std::vector<std::string> multi;
  if (auto l = flags->Get("layers")) {
    std::vector<std::string> names = absl::StrSplit(*l, ',', absl::SkipEmpty());
    multi = std::move(names);
    if (multi.empty()) return cmd.Usage("--layers needs at least one name");
    if (flags->Has("layer")) return cmd.Usage("give --layer or --layers, not both");
  }
  const bool use_stream = flags->Has("stream");
  if (use_stream && !multi.empty()) return cmd.Usage("--stream and --layers do not combine");
  const auto layer = multi.empty() ? flags->Get("layer") : std::optional<std::string>(absl::StrJoin(multi, ","));
  if (!layer) return cmd.Usage("--layer is required");
  auto int_flag = [&](const char* name, int64_t def, int64_t lo, int64_t hi, int64_t* out) -> bool {
    auto v = flags->GetInt(name);
    if (!v.ok()) return false;
    *out = v->value_or(def);
    return *out >= lo && *out <= hi;
  };
  int64_t rows, concurrency, rate, duration, requests, warmup, channels, timeout_s, retries;
  if (!int_flag("rows", 1, 1, 65536, &rows)) return cmd.Usage("--rows must be in [1, 65536]");
  if (!int_flag("concurrency", 0, 0, 65536, &concurrency)) return cmd.Usage("--concurrency must be in [1, 65536]");
  if (!int_flag("rate", 0, 0, 10'000'000, &rate)) return cmd.Usage("--rate must be in [1, 10000000]");
  if (!int_flag("duration", 10, 1, 86400, &duration)) return cmd.Usage("--duration must be in [1, 86400] seconds");
  if (!int_flag("requests", 0, 0, int64_t{1} << 40, &requests)) return cmd.Usage("--requests must be positive");
  if (!int_flag("warmup", 2, 0, 3600, &warmup)) return cmd.Usage("--warmup must be in [0, 3600] seconds");
  if (!int_flag("channels", 0, 0, 64, &channels)) return cmd.Usage("--channels must be in [1, 64]");
  if (!int_flag("timeout-s", 60, 1, 86400, &timeout_s)) return cmd.Usage("--timeout-s must be in [1, 86400]");
  if (!int_flag("retries", 0, 0, 10, &retries)) return cmd.Usage("--retries must be in [0, 10]");
  if ((concurrency > 0) == (rate > 0)) return cmd.Usage("give exactly one of --concurrency and --rate");
  if (flags->Has("duration") && flags->Has("requests")) return cmd.Usage("give at most one of --duration and --requests");
  if (use_stream && retries > 0) return cmd.Usage("--retries does not apply to --stream");
  DType dtype = DType::kF32;
  if (auto d = flags->Get("dtype")) {
    auto parsed = ParseFloatDType(*d);
    if (!parsed) return cmd.Usage(absl::StrCat("--dtype must be f32, f16 or bf16; got '", *d, "'"));
    dtype = *parsed;
  }
  Precision precision = Precision::kExact;
  if (auto p = flags->Get("precision")) {
    auto parsed = ParsePrecision(*p);
    if (!parsed.ok()) return cmd.Usage(absl::StrCat("--", parsed.status().message()));
    precision = *parsed;
  }
  auto channel = ChannelOptionsFromFlags(*flags, [](const char* name) { return std::getenv(name); });
  if (!channel.ok()) return cmd.Usage(channel.status().message());
  const std::string target = channel->target;
  const bool json = flags->Has("json");
  const bool until_stable = flags->Has("until-stable");
  if (channels == 0) channels = std::clamp<int64_t>(concurrency / 16, 1, 8);

  Client::Options client_options;
  client_options.timeout = std::chrono::seconds(timeout_s);
  auto client = Client::Connect(*channel, client_options);
  if (!client.ok()) return cmd.Usage(client.status().message());
  auto info = (*client)->GetLayer(multi.empty() ? *layer : multi[0]);
  if (!info.ok()) return cmd.FailRpc(info.status());
  const int64_t k = info->in_features();

  // A few distinct random inputs, built once and reused.
  std::vector<v1::ForwardRequest> inputs(8);
  std::mt19937_64 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (v1::ForwardRequest& r : inputs) {
    r.set_layer(*layer);
    r.set_precision(ToProto(precision));
    r.mutable_input()->set_dtype(ToProto(dtype));
    r.mutable_input()->add_shape(rows);
    r.mutable_input()->add_shape(k);
    std::string data(static_cast<size_t>(rows * k) * DTypeSize(dtype), '\0');
    for (size_t i = 0; i < static_cast<size_t>(rows * k); ++i) StoreFloat(dtype, data.data(), i, normal(rng));
    r.mutable_input()->set_data(std::move(data));
  }
  std::vector<v1::ForwardMultiRequest> multi_inputs;
  for (const v1::ForwardRequest& r : inputs) {
    v1::ForwardMultiRequest& m = multi_inputs.emplace_back();
    for (const std::string& name : multi) m.add_layers(name);
    *m.mutable_input() = r.input();
    m.set_precision(r.precision());
  }
  std::vector<std::unique_ptr<v1::Data::Stub>> stubs;
  for (int64_t c = 0; c < channels; ++c) {
    ChannelOptions o = *channel;
    o.connection_id = static_cast<int>(c);  // distinct connections
    o.max_message_mb = 256;
    auto made = MakeChannel(o);
    if (!made.ok()) return cmd.Usage(made.status().message());
    stubs.push_back(v1::Data::NewStub(*std::move(made)));
  }

  Recorder rec;
  std::mutex mu;
  std::condition_variable cv;
  int64_t in_flight = 0;
  std::atomic<bool> stop_issuing{false};
  // Finished calls are destroyed later by the main thread, never inside
  // their own completion callback (gRPC still holds the call then).
  std::vector<std::shared_ptr<Call>> graveyard;
  std::atomic<uint64_t> issued{0};
  const Clock::time_point begin = Clock::now();

  // Send `call` (again, for a retry: one request, counted once with its
  // final outcome, its latency from the first send).
  std::atomic<uint64_t> retried{0};
  // Sends one more request, false once --requests have all been claimed.
  std::function<bool(Clock::time_point)> issue;
  std::function<void(std::shared_ptr<Call>)> send;
  std::vector<std::unique_ptr<BenchStream>> streams;
  // One request done (answered, or lost with its stream): in a closed loop
  // an answer issues the next; then it no longer counts as in flight.
  auto done_one = [&](bool answered) {
    if (answered && concurrency > 0 && !stop_issuing.load()) issue(Clock::now());
    std::lock_guard<std::mutex> lock(mu);
    // Every wait on `cv` waits for in_flight == 0: a wake-up at each answer
    // would cost the load generator a futex wake and a thread switch per
    // request (the main loop waits on `cv` all the time).
    if (--in_flight == 0) cv.notify_all();
  };
  // An answer on a stream: recorded as a unary one is.
  auto stream_answer = [&](Clock::time_point started, const grpc::Status& status,
                           const v1::ForwardResponse& response) {
    rec.Record(started, Clock::now(), status, response);
    done_one(true);
  };
  auto stream_lost = [&](Clock::time_point started, const grpc::Status& status,
                         const v1::ForwardResponse& response) {
    rec.Record(started, Clock::now(), status, response);
    done_one(false);
  };
  if (use_stream) {
    // The stream's deadline covers the whole run (--timeout-s is per request
    // on unary calls; a stream has one deadline).
    for (auto& stub : stubs) {
      streams.push_back(std::make_unique<BenchStream>(
          stub.get(), *channel, timeout_s + 3 * duration + warmup + 60, stream_answer, stream_lost));
    }
  }
  send = [&](std::shared_ptr<Call> call) {
    call->context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(timeout_s));
    SetCallMetadata(*channel, &call->context);
    Call* raw = call.get();
    auto finished = [&, call](grpc::Status status) mutable {
          if (!multi.empty() && status.ok()) {
            // Timing and precision of the first layer stand for the call.
            const auto& outs = call->multi_response.outputs();
            if (!outs.empty()) {
              *call->response.mutable_timing() = outs[0].timing();
              call->response.set_precision(outs[0].precision());
            }
          }
          if (!status.ok() && call->attempt < retries && Retryable(status.error_code())) {
            auto again = std::make_shared<Call>();
            again->started = call->started;
            again->n = call->n;
            again->attempt = call->attempt + 1;
            retried.fetch_add(1);
            {
              std::lock_guard<std::mutex> lock(mu);
              graveyard.push_back(std::move(call));
            }
            send(std::move(again));
            return;
          }
          rec.Record(call->started, Clock::now(), status, call->response);
          {
            std::lock_guard<std::mutex> lock(mu);
            graveyard.push_back(std::move(call));
          }
          done_one(true);
        };
    if (multi.empty()) {
      stubs[raw->n % stubs.size()]->async()->Forward(&raw->context, &inputs[raw->n % inputs.size()],
                                                   &raw->response, std::move(finished));
    } else {
      stubs[raw->n % stubs.size()]->async()->ForwardMulti(
          &raw->context, &multi_inputs[raw->n % multi_inputs.size()], &raw->multi_response,
          std::move(finished));
    }
  };

  // Issue one call; `started` is when it was due (open loop) or sent.
  issue = [&](Clock::time_point started) {
    uint64_t n = 0;
    {
      // Claimed and counted in flight at once, so that all_answered below
      // never sees the last number taken but not yet in flight; false once
      // --requests are all claimed (answers on several threads may ask).
      std::lock_guard<std::mutex> lock(mu);
      n = issued.load();
      if (requests > 0 && n >= static_cast<uint64_t>(requests)) return false;
      issued.store(n + 1);
      ++in_flight;
    }
    if (use_stream) {  // no Call: the stream holds what is in flight
      v1::ForwardRequest r = inputs[n % inputs.size()];
      r.set_request_id(std::to_string(n));
      streams[n % streams.size()]->Send(std::move(r), started);
      return true;
    }
    auto call = std::make_shared<Call>();
    call->n = n;
    call->started = started;
    send(std::move(call));
    return true;
  };

  const auto warmup_end = begin + std::chrono::seconds(warmup);
  auto start_measuring = [&] {
    std::lock_guard<std::mutex> lock(rec.mu);
    rec.measuring = true;
    rec.measure_start = Clock::now();
    rec.measure_start_wall = std::chrono::system_clock::now();
  };
  if (warmup == 0) start_measuring();

  auto window_rates = [&]() {
    std::lock_guard<std::mutex> lock(rec.mu);
    std::vector<double> r;
    for (const auto& w : rec.window_latency_ms) r.push_back(static_cast<double>(w.size()));
    return r;
  };
  auto is_stable = [&](const std::vector<double>& r) {
    // The last three complete windows agree within ±10 % of their mean.
    if (r.size() < 4) return false;
    const double a = r[r.size() - 4], b = r[r.size() - 3], c = r[r.size() - 2];
    const double mean = (a + b + c) / 3;
    return mean > 0 && std::abs(a - mean) <= 0.1 * mean && std::abs(b - mean) <= 0.1 * mean &&
           std::abs(c - mean) <= 0.1 * mean;
  };

  std::thread arrivals;
  if (concurrency > 0) {
    for (int64_t c = 0; c < concurrency; ++c) {
      if (!issue(Clock::now())) break;  // --requests fewer than the concurrency
    }
  } else {
    arrivals = std::thread([&] {
      std::exponential_distribution<double> gap(static_cast<double>(rate));
      std::mt19937_64 arng(7);
      Clock::time_point next = Clock::now();
      while (!stop_issuing.load()) {
        // Only this thread issues: no sleep past the last request.
        if (requests > 0 && issued.load() >= static_cast<uint64_t>(requests)) break;
        std::this_thread::sleep_until(next);
        issue(next);  // latency counts from the scheduled time
        next += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap(arng)));
      }
    });
  }

  const bool tty = !json && isatty(STDERR_FILENO);
  const int64_t max_seconds = until_stable ? 3 * duration : duration;
  int64_t seconds = 0;
  bool stable = false;
  // Calls are destroyed one full cycle (>= 1 s) after they finished.
  std::vector<std::shared_ptr<Call>> dying;
  auto bury = [&] {
    dying.clear();
    std::lock_guard<std::mutex> lock(mu);
    dying.swap(graveyard);
  };
  // A --requests run is over once its last answer is in: the loop wakes
  // then, not at its next 1 s tick, so that the run's end (and its rate)
  // counts every answer and no idle time after them.
  auto all_answered = [&] {
    return requests > 0 && issued.load() >= static_cast<uint64_t>(requests) && in_flight == 0;
  };
  while (true) {
    bool answered_all;
    {
      std::unique_lock<std::mutex> lock(mu);
      answered_all = cv.wait_for(lock, std::chrono::seconds(1), all_answered);
    }
    bury();
    const auto now = Clock::now();
    bool measuring;
    {
      std::lock_guard<std::mutex> lock(rec.mu);
      measuring = rec.measuring;
    }
    if (!measuring && now >= warmup_end) {
      start_measuring();
      continue;
    }
    if (!measuring) {
      // All answered within the warm-up: measure (nothing) from its end.
      if (answered_all) std::this_thread::sleep_until(warmup_end);
      continue;
    }
    ++seconds;
    const std::vector<double> rates = window_rates();
    stable = is_stable(rates);
    if (tty) {
      std::lock_guard<std::mutex> lock(rec.mu);
      const auto& w = rec.window_latency_ms;
      const double p99 = w.empty() ? 0 : Percentile(w.size() > 1 ? w[w.size() - 2] : w.back(), 99);
      uint64_t errors = 0;
      for (const auto& [c, n] : rec.errors) errors += n;
      std::fprintf(stderr, "\r%llds: %.0f req/s, p99 %.2f ms, %llu errors   ",
                   static_cast<long long>(seconds), rates.size() > 1 ? rates[rates.size() - 2] : 0.0,
                   p99, static_cast<unsigned long long>(errors));
    }
    if (answered_all) break;
    // Every stream ended early (a draining server, a deadline): nothing
    // more can be sent, and --requests would wait forever for it; in a
    // closed loop, likewise once nothing is in flight (requests lost with
    // a stream are not re-issued, so the loop has run dry).
    if (use_stream && std::all_of(streams.begin(), streams.end(),
                                  [](const auto& s) { return s->ended(); })) {
      break;
    }
    if (use_stream && concurrency > 0) {
      std::lock_guard<std::mutex> lock(mu);
      if (in_flight == 0) break;
    }
    if (requests == 0 && seconds >= duration && (!until_stable || stable || seconds >= max_seconds)) break;
  }
  {
    std::lock_guard<std::mutex> lock(rec.mu);
    rec.measure_end = Clock::now();
    rec.measuring = false;
  }
  stop_issuing = true;
  if (arrivals.joinable()) arrivals.join();
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return in_flight == 0; });
  }
  for (auto& s : streams) s->Close();
  for (auto& s : streams) {
    if (grpc::Status st = s->Wait(); !st.ok()) {
      std::fprintf(stderr, "bench: a stream ended %s: %s\n",
                   absl::StatusCodeToString(static_cast<absl::StatusCode>(st.error_code())).c_str(),
                   st.error_message().c_str());
    }
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // let gRPC finish the last calls
  bury();
  dying.clear();
  if (tty) std::fprintf(stderr, "\r\033[K");

  // Report the measured part.
  const double secs = std::chrono::duration<double>(rec.measure_end - rec.measure_start).count();
  std::vector<double> all;
  for (const auto& w : rec.window_latency_ms) all.insert(all.end(), w.begin(), w.end());
  const double ok = static_cast<double>(std::max<uint64_t>(rec.measured_ok, 1));
  const double rps = static_cast<double>(rec.measured) / secs;
  std::vector<std::string> errs;
  for (const auto& [code, n] : rec.errors) errs.push_back(absl::StrFormat("\"%s\": %d", code, n));
  // The precision that ran: one name, or "mode n, mode n" if the layer
  // changed under the run (a replace); the asked one when nothing answered.
  std::vector<std::string> ran_parts;
  for (const auto& [name, n] : rec.ran) ran_parts.push_back(absl::StrCat(name, " ", n));
  const std::string ran = rec.ran.empty()      ? std::string(PrecisionName(precision))
                          : rec.ran.size() == 1 ? rec.ran.begin()->first
                                               : absl::StrJoin(ran_parts, ", ");
  stable = is_stable(window_rates()) || (rec.window_latency_ms.size() >= 3 && [&] {
             // A run that ended exactly on a window boundary: judge its last three.
             std::vector<double> r = window_rates();
             r.push_back(0);
             return is_stable(r);
           }());
  if (json) {
    // Appended inside the object: sent, ok_total, ok_per_s (OK answers per
    // 1-second window of the measured part), measure_start_unix_ms.
    std::vector<std::string> per_s;
    for (const auto& w : rec.window_latency_ms) per_s.push_back(std::to_string(w.size()));
    const std::string fault_fields = absl::StrFormat(
        ", \"api\": \"%s\", \"sent\": %llu, \"retried\": %llu, \"ok_total\": %llu, \"ok_per_s\": [%s], "
        "\"measure_start_unix_ms\": %lld",
        use_stream ? "ForwardStream" : multi.empty() ? "Forward" : "ForwardMulti",
        static_cast<unsigned long long>(issued.load()),
        static_cast<unsigned long long>(retried.load()),
        static_cast<unsigned long long>(rec.ok_total), absl::StrJoin(per_s, ", "),
        static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   rec.measure_start_wall.time_since_epoch())
                                   .count()));
    std::printf(
        "{\"target\": \"%s\", \"layer\": \"%s\", \"rows_per_request\": %lld, \"dtype\": \"%s\", "
        "\"precision\": \"%s\", \"precision_ran\": \"%s\", \"mode\": \"%s\", \"concurrency\": %lld, \"rate\": %lld, \"requests\": %llu, "
        "\"rows\": %llu, \"seconds\": %.3f, \"requests_per_s\": %.2f, \"rows_per_s\": %.2f, "
        "\"requests_total\": %llu, \"latency_ms\": {\"p50\": %.4f, \"p90\": %.4f, \"p99\": %.4f, "
        "\"p999\": %.4f, \"max\": %.4f}, \"errors\": {%s}, \"server\": {\"queue_us_mean\": %.2f, "
        "\"compute_us_mean\": %.2f, \"batch_rows_mean\": %.3f}, \"stable\": %s%s}\n",
        target.c_str(), layer->c_str(), static_cast<long long>(rows),
        std::string(ShortDTypeName(dtype)).c_str(), std::string(PrecisionName(precision)).c_str(),
        ran.c_str(), concurrency > 0 ? "closed" : "open",
        static_cast<long long>(concurrency), static_cast<long long>(rate),
        static_cast<unsigned long long>(rec.measured),
        static_cast<unsigned long long>(rec.measured * static_cast<uint64_t>(rows)), secs, rps,
        rps * static_cast<double>(rows), static_cast<unsigned long long>(rec.requests_total),
        Percentile(all, 50), Percentile(all, 90), Percentile(all, 99), Percentile(all, 99.9),
        Percentile(all, 100), absl::StrJoin(errs, ", ").c_str(), rec.queue_us / ok,
        rec.compute_us / ok, rec.batch_rows / ok, stable ? "true" : "false", fault_fields.c_str());
  } else {
    std::printf("%s %s: %s, %lld row(s) of %s per request, precision %s%s, %.1f s measured after "
                "%llds warmup\n",
                target.c_str(), layer->c_str(),
                concurrency > 0 ? absl::StrCat("closed loop, concurrency ", concurrency).c_str()
                                : absl::StrCat("open loop, ", rate, " req/s offered").c_str(),
                static_cast<long long>(rows), std::string(ShortDTypeName(dtype)).c_str(),
                std::string(PrecisionName(precision)).c_str(),
                ran == PrecisionName(precision) ? "" : absl::StrCat(" (ran ", ran, ")").c_str(), secs,
                static_cast<long long>(warmup));
    std::printf("  api: %s\n", use_stream ? "ForwardStream" : multi.empty() ? "Forward" : "ForwardMulti");
    std::printf("  %.1f req/s, %.1f rows/s (%llu requests; %llu in total with warmup)\n", rps,
                rps * static_cast<double>(rows), static_cast<unsigned long long>(rec.measured),
                static_cast<unsigned long long>(rec.requests_total));
    std::printf("  latency ms: p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f\n",
                Percentile(all, 50), Percentile(all, 90), Percentile(all, 99),
                Percentile(all, 99.9), Percentile(all, 100));
    std::printf("  server: queue %.0f us, compute %.0f us, %.2f rows per batch (means)\n",
                rec.queue_us / ok, rec.compute_us / ok, rec.batch_rows / ok);
    std::printf("  errors: %s; stable: %s\n", errs.empty() ? "none" : absl::StrJoin(errs, ", ").c_str(),
                stable ? "yes" : "no");
  }
  return 0;
}

}  // namespace qlinear
