// Engine: the in-process serving core. It owns the catalog of layers (with
// the memory budget and, with --state-dir, the durable store), the dynamic
// batcher (core/engine/batcher.h) that queues and cuts the batches, and the
// oneTBB arena that computes them. No gRPC here: the server translates to
// and from it.
//
// Batching: each layer has a FIFO queue of requests. Options::slots compute
// slots (worker threads) take turns among layers with queued work: a free
// slot takes up to max_batch_rows rows from the head of the next ready
// layer (splitting a request larger than that across batches), a batch
// being ready once it is full, once max_batch_delay_us has passed since its
// first request arrived, or at once when that delay is 0. It gathers them,
// runs them as one matrix product in the shared arena (every thread, stolen
// between slots when several batches run), scatters the rows back and
// answers the requests it finished. So up to `slots` batches are in flight
// at once, of different layers or of one: while one slot gathers, scatters
// or answers, another computes. Because the kernels are batch-invariant, a
// row's result is the same bits whoever it shares a batch with, and
// whichever slot runs it. One batch runs one version of the layer in one
// precision (the effective one, core/precision.h): it takes queued requests
// in FIFO order and stops at the first of another version or precision,
// which starts the layer's next batch. With one slot a layer's answers
// leave in arrival order; with more, two batches may end in either order.
//
// Time: arrivals, the batching delay, deadlines and Drain's deadline are
// read from Options::clock (tests give a FakeClock, core/engine/clock.h,
// and step it instead of sleeping); by default the steady clock.
//
// Admission: Submit refuses with INVALID_ARGUMENT a precision outside
// Options::precisions, with RESOURCE_EXHAUSTED when the queued rows
// would exceed max_queue_rows, and with UNAVAILABLE while draining. Requests
// whose deadline passes or that are cancelled while wholly queued are
// answered DEADLINE_EXCEEDED / CANCELLED without compute; `cancelled` is
// asked without any engine lock held, once, just before the request's first
// rows would join a batch (once they have, it runs to the end).
//
// Thread safety: every method may be called from any thread.
#ifndef QLINEAR_CORE_ENGINE_ENGINE_H_
#define QLINEAR_CORE_ENGINE_ENGINE_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/dtype.h"
#include "core/engine/catalog.h"
#include "core/engine/clock.h"
#include "core/engine/layer.h"
#include "core/engine/snapshot.h"
#include "core/engine/stats.h"
#include "core/precision.h"

namespace qlinear {

class Engine {
 public:
  // The time points of deadlines (qlinear::Clock reads the same ones).
  using Clock = std::chrono::steady_clock;

  struct Options {
    // Threads of the compute arena; 0 = every core.
    int threads = 0;
    // Compute slots: batches that may be in flight at once, each on its own
    // worker thread, all computing in the one arena (--compute-slots).
    // 0 = automatic (AutomaticSlots of the arena's threads).
    int slots = 0;
    // Most rows one batch takes (1 disables batching).
    int64_t max_batch_rows = 128;
    // How long a non-full batch may wait for more rows; 0 = never wait.
    int64_t max_batch_delay_us = 0;
    // Most rows queued over all layers before Submit refuses.
    int64_t max_queue_rows = 8192;
    // Bytes all layers may hold; 0 = unlimited.
    uint64_t max_memory_bytes = 0;
    // The precisions a request may ask for (--precisions).
    PrecisionSet precisions = PrecisionSet::All();
    // Where batching reads and waits for time (arrivals, the delay,
    // deadlines, Drain's deadline). Borrowed: it must outlive the engine.
    // nullptr (the default) is qlinear::Clock::Real(); tests pass a
    // FakeClock.
    qlinear::Clock* clock = nullptr;
  };

  // AutomaticSlots is the number of slots that `slots = 0` gives an arena
  // of `threads` threads.
  static int AutomaticSlots(int threads);

  struct ForwardRequest {
    std::string layer;
    DType x_dtype = DType::kF32;
    const void* x = nullptr;  // [rows, k]; borrowed until `done` runs
    int64_t rows = 0;
    int64_t k = 0;
    DType y_dtype = DType::kF32;
    // The mode asked for; what runs is EffectivePrecision(layer, precision).
    Precision precision = Precision::kExact;
    Clock::time_point deadline = Clock::time_point::max();
    // Optional; asked once, outside any lock, just before the request's
    // first rows join a batch.
    std::function<bool()> cancelled;
    // The largest answer the caller can deliver (0: no limit): Submit
    // refuses with RESOURCE_EXHAUSTED, before queueing, a request whose
    // answer — rows × the resolved layer's N × y_dtype's size, plus
    // answer_overhead_bytes — would be larger.
    uint64_t max_answer_bytes = 0;
    uint64_t answer_overhead_bytes = 0;  // the answer's bytes besides y
  };

  struct ForwardResult {
    absl::Status status;
    std::vector<uint8_t> y;  // [rows, n] of y_dtype when OK
    int64_t n = 0;
    uint64_t version = 0;
    // The mode that ran (or would have): EffectivePrecision of the pinned
    // layer version and the request's precision.
    Precision precision = Precision::kExact;
    int64_t queue_us = 0;
    int64_t compute_us = 0;
    int64_t batch_rows = 0;      // largest batch this request rode in
    int64_t batch_requests = 0;  // requests in that batch
    // The stats this request was counted in (for RecordUndelivered).
    std::shared_ptr<LayerStats> stats;
  };
  using Done = std::function<void(ForwardResult)>;

  static absl::StatusOr<std::unique_ptr<Engine>> Create(const Options& options);
  // Stops the batcher (Batcher::Stop): running batches finish and answer,
  // queued requests are answered UNAVAILABLE.
  ~Engine();

  const Options& options() const { return options_; }
  int threads() const;
  // The compute slots in use (Options::slots, or the automatic number).
  int slots() const;
  // catalog() is the one door through which layers are published,
  // replaced and unloaded.
  Catalog& catalog() { return catalog_; }
  const Catalog& catalog() const { return catalog_; }

  // Submit queues a forward pass. On OK, `done` runs exactly once, later, on
  // a compute slot's thread (keep it short: copy out and finish; it holds
  // that slot), or on the thread running Drain or ~Engine for an answer
  // they give; it may call Submit but not Drain. Otherwise it
  // never runs: NOT_FOUND (unknown layer), INVALID_ARGUMENT (a precision not
  // in options().precisions, dtype, K or row count), RESOURCE_EXHAUSTED (queue full, or the answer would exceed
  // request.max_answer_bytes), UNAVAILABLE (draining).
  absl::Status Submit(ForwardRequest request, Done done);
  // Check is Submit's refusal of `request` as it stands, without queuing or
  // counting anything: NOT_FOUND and INVALID_ARGUMENT as above, and
  // RESOURCE_EXHAUSTED for the answer's size; never the queue's state or a
  // drain, which may change before a Submit. For callers that must refuse
  // a whole call before any part of it computes (ForwardMulti).
  absl::Status Check(const ForwardRequest& request) const;

  // DrainCounts: what one Drain did, in requests (for the server's log).
  struct DrainCounts {
    int64_t pending = 0;      // accepted and not yet answered when it began
    int64_t answered = 0;     // of those, answered by the engine's own work
                              // (OK, or DEADLINE_EXCEEDED / CANCELLED)
    int64_t unavailable = 0;  // of those, answered UNAVAILABLE at the deadline
    int64_t refused = 0;      // Submits refused UNAVAILABLE while it ran
  };

  // Drain stops admission (and catalog changes), lets waiting batches run at
  // once, then waits until every accepted request is answered or the clock
  // reaches `deadline`; then the running batches finish and the requests
  // still queued (partly computed ones too) are answered UNAVAILABLE. Every
  // `done` has returned when it returns. Returns true when all finished
  // normally. `counts` (optional) receives what it did.
  bool Drain(Clock::time_point deadline, DrainCounts* counts = nullptr);
  // unanswered is the number of requests accepted whose answer has not
  // started to leave (their `done` has not been called).
  int64_t unanswered() const;

  int64_t queued_rows() const;
  // Now is the time on the engine's clock (Options::clock), on which
  // ForwardRequest::deadline is read.
  Clock::time_point Now() const;
  // draining() is true once Drain has started.
  bool draining() const;

  // Snapshot reads the whole state (core/engine/snapshot.h): every layer.
  EngineSnapshot Snapshot() const;
  // Snapshot of the server's totals and one layer; NOT_FOUND naming it when
  // it is not loaded.
  absl::StatusOr<EngineSnapshot> Snapshot(const std::string& layer) const;

  // RecordUpload counts one upload stream ended with `code` (lock-free).
  // The server calls it once for every stream, whatever ended it.
  void RecordUpload(absl::StatusCode code) { uploads_.Add(code); }
  // RecordRejected counts a Forward for `layer` that the server refused
  // before Submit (malformed tensor, dtype): under the layer's stats when it
  // is loaded, else under the one not-loaded entry. Rows count 0 (the shape
  // may be what was wrong).
  void RecordRejected(const std::string& layer, absl::StatusCode code);
  // RecordUndelivered moves a request `done` was called for from the code it
  // was counted under (result.status) to `code`, when its answer could not
  // be sent: stats count what the client received.
  static void RecordUndelivered(const ForwardResult& result, int64_t rows, absl::StatusCode code);
  // RecordMalformed counts one request of `rpc` (a method name the server
  // chooses, never a client's string) whose bytes did not parse.
  void RecordMalformed(absl::string_view rpc);
  // RecordAuthRefusal counts one call the server's Authorizer refused
  // (UNAUTHENTICATED or PERMISSION_DENIED) on the Data plane or, with
  // `admin`, the Admin plane (lock-free).
  void RecordAuthRefusal(bool admin, absl::StatusCode code) {
    (admin ? admin_refusals_ : data_refusals_).Add(code);
  }

 private:
  struct Impl;
  // Check's tests of `request` against the layer `info` describes.
  absl::Status CheckAgainst(const ForwardRequest& request, const Layer::Info& info) const;
  explicit Engine(const Options& options);
  int64_t batches_in_flight() const;
  // ReadSnapshot reads the totals and every layer, or only `only`.
  EngineSnapshot ReadSnapshot(const LayerRegistry::Entry* only) const;

  Options options_;
  Catalog catalog_;
  const Clock::time_point created_;
  // Forward for names that are not loaded, counted under one entry.
  CodeCounter not_loaded_requests_;
  CodeCounter not_loaded_rows_;
  CodeCounter uploads_;
  CodeCounter data_refusals_, admin_refusals_;
  mutable absl::Mutex malformed_mu_;
  std::map<std::string, uint64_t, std::less<>> malformed_ ABSL_GUARDED_BY(malformed_mu_);
  std::unique_ptr<Impl> impl_;
};

}  // namespace qlinear

#endif  // QLINEAR_CORE_ENGINE_ENGINE_H_
