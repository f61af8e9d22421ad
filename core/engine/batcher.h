// Batcher: qlinear's dynamic batcher. Tasks (forward requests, each a
// number of rows) wait in one FIFO queue per layer; Options::slots worker
// threads each cut a batch from the next layer in turn and hand it to the
// caller's RunBatch; every task is answered once through the caller's Done.
// It knows nothing of matrices: RunBatch computes, Done answers.
//
//   Batcher::Options options;
//   options.max_batch_rows = 128;
//   options.slots = 2;
//   auto batcher = Batcher::Create(options,
//       [](const Batcher::Batch& batch) { /* compute every slice */ },
//       [](std::unique_ptr<BatchTask> task, absl::Status status) { /* answer */ });
//   std::unique_ptr<BatchTask> task = std::make_unique<MyTask>(...);
//   absl::Status s = (*batcher)->Submit({"q_proj", /*version=*/3, Precision::kExact,
//                                        /*rows=*/5}, &task);
//
// Queues and batches (the invariants):
//  - A layer's queue holds its tasks in arrival order. A batch takes rows
//    from the head of one queue: whole tasks, then the first rows of the
//    next one when it does not fit whole (the rest of it stays at the head,
//    for the layer's next batch). So batches take a task's rows in order,
//    and a layer's rows in arrival order; Batch::sequence numbers batches in
//    the order they were cut.
//  - A batch holds 1 to max_batch_rows rows of one layer, one version and
//    one precision: it stops at the first task of another version or
//    precision, which heads the layer's next batch.
//  - Layers take turns: a free slot serves the first layer, in turn order,
//    whose batch is ready, and that layer goes to the back of the turns. A
//    layer waiting for a fuller batch keeps its place and holds up no other.
//  - A layer's batch is ready when its head run (the tasks at its head that
//    share the head task's version and precision) has max_batch_rows rows, or is
//    closed (a task of another version or precision follows it: nothing
//    later can join), or max_batch_delay_us has passed since the head task
//    arrived, or the batcher is draining. With max_batch_delay_us == 0 it
//    is ready at once.
//  - Several batches in flight: up to `slots` batches run at once, each on
//    its own worker thread: of two layers, or two batches of one layer (the
//    later one holding later rows). Nothing orders their ends: a later
//    batch may finish first, and two slices of one task may run at once on
//    two slots (disjoint rows). A task is answered after all its slices ran,
//    by the worker whose slice finished last. So with slots > 1 a layer's
//    answers may leave out of arrival order; with slots == 1 its computed
//    answers leave in arrival order.
//  - Dropped without compute: when a batch is cut, a task none of whose rows
//    has gone to a batch yet is dropped with DEADLINE_EXCEEDED if its
//    deadline has passed, or CANCELLED if its `cancelled` callback says so.
//    `cancelled` is called without the batcher's lock held, at most once per
//    task (just before its first rows would join a batch); once a task's
//    first rows are in a batch it runs to the end.
//
// Answers: every task Submit accepts is answered exactly once, by one call
// of Done: OK once all its rows ran; DEADLINE_EXCEEDED or CANCELLED as
// above; UNAVAILABLE when Drain times out or Stop runs while it is queued.
// Done and RunBatch run on a worker thread (Done for a drain timeout or a
// stop: on the thread calling Drain or Stop), never under the batcher's
// lock: they and `cancelled` may call Submit and the accessors, but not
// Drain or Stop.
//
// Thread safety: every method may be called from any thread.
#ifndef QLINEAR_CORE_ENGINE_BATCHER_H_
#define QLINEAR_CORE_ENGINE_BATCHER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/engine/clock.h"
#include "core/precision.h"

namespace qlinear {

// BatchTask: what the caller queues; the batcher only holds it. Derive the
// request type from it and static_cast back in RunBatch and Done.
class BatchTask {
 public:
  virtual ~BatchTask() = default;
};

class Batcher {
 public:
  using TimePoint = Clock::TimePoint;

  struct Options {
    // Most rows one batch takes (--max-batch-rows; 1 disables batching).
    // At least 1; default 128.
    int64_t max_batch_rows = 128;
    // How long, in microseconds, a batch that is not full may wait after
    // its head task arrived for more rows (--max-batch-delay-us); 0 never
    // waits. At least 0; default 0.
    int64_t max_batch_delay_us = 0;
    // Most rows queued (not yet in a batch), over all layers, before Submit
    // refuses (--max-queue-rows). At least 1; default 8192.
    int64_t max_queue_rows = 8192;
    // Batches that may run at once, each on its own worker thread. At
    // least 1; default 1 (one batch at a time).
    int slots = 1;
    // Where time is read and waited for: arrivals, the delay, deadlines,
    // Drain's deadline. Borrowed; it must outlive the batcher. nullptr (the
    // default) is Clock::Real().
    Clock* clock = nullptr;
  };

  // Request: how to queue one task.
  struct Request {
    std::string layer;  // the queue: one per name
    // Tasks share a batch only with equal version and precision; the
    // caller gives each version of a layer its own number.
    uint64_t version = 0;
    Precision precision = Precision::kExact;
    int64_t rows = 0;  // at least 1
    // Not run if still wholly queued at this time (DEADLINE_EXCEEDED).
    TimePoint deadline = TimePoint::max();
    // Optional; asked outside the lock (see the top of this file).
    std::function<bool()> cancelled;
  };

  // Slice: rows [row0, row0 + rows) of one task.
  struct Slice {
    BatchTask* task;  // borrowed until RunBatch returns
    int64_t row0;
    int64_t rows;
  };

  struct Batch {
    std::string layer;
    uint64_t version = 0;
    Precision precision = Precision::kExact;
    std::vector<Slice> slices;  // in queue order
    int64_t rows = 0;           // the slices' rows, 1 to max_batch_rows
    uint64_t sequence = 0;      // the order batches were cut in, from 0
    int slot = 0;               // the worker running it, [0, slots)
    TimePoint cut;              // when it was cut (the clock's time)
  };

  // RunBatch computes a batch. It must write only its slices' rows of a
  // task: another slot may be writing other rows of the same task.
  using RunBatchFn = std::function<void(const Batch& batch)>;
  // Done answers a task; it owns `task` from then on.
  using DoneFn = std::function<void(std::unique_ptr<BatchTask> task, absl::Status status)>;

  // Create starts `options.slots` worker threads. INVALID_ARGUMENT for an
  // option out of range or an empty callback.
  static absl::StatusOr<std::unique_ptr<Batcher>> Create(const Options& options,
                                                         RunBatchFn run_batch, DoneFn done);
  // Stops (see Stop).
  ~Batcher();

  // Submit queues `*task` for `request.rows` rows. On OK the batcher owns
  // the task (*task is null) until it passes it to Done. Otherwise *task is
  // left as it was and Done is never called for it: INVALID_ARGUMENT (rows
  // < 1, no task), UNAVAILABLE (draining or stopped), RESOURCE_EXHAUSTED
  // (the queued rows would exceed max_queue_rows; the message names
  // --max-queue-rows).
  absl::Status Submit(Request request, std::unique_ptr<BatchTask>* task);

  // DrainCounts: what one Drain did, in tasks.
  struct DrainCounts {
    int64_t pending = 0;      // accepted and not yet answered when it began
    int64_t answered = 0;     // of those, answered by the batcher's own work
    int64_t unavailable = 0;  // of those, answered UNAVAILABLE at the deadline
    int64_t refused = 0;      // Submits refused UNAVAILABLE while it ran
  };

  // Drain stops admission for good and lets queued batches run at once
  // (no more delay), then waits until every accepted task is answered or
  // the clock reaches `deadline`. Then it lets running batches finish,
  // starts no other, and answers the tasks still queued (partly run ones
  // too) UNAVAILABLE. Returns true when all were answered before the
  // deadline. Every Done call has returned when it returns. `counts`
  // (optional) receives what it did.
  bool Drain(TimePoint deadline, DrainCounts* counts = nullptr);

  // Stop refuses new tasks, lets running batches finish and answer, answers
  // every queued task UNAVAILABLE and joins the workers. Idempotent.
  void Stop();

  const Options& options() const { return options_; }
  // Rows queued and not yet in a batch.
  int64_t queued_rows() const;
  // Accepted tasks whose Done has not been called yet.
  int64_t unanswered() const;
  // Batches handed to RunBatch whose RunBatch has not returned.
  int batches_in_flight() const;
  // True once Drain has started.
  bool draining() const;

 private:
  struct Entry;
  struct Queue;
  struct Answer;

  Batcher(const Options& options, RunBatchFn run_batch, DoneFn done);
  void Work(int slot);
  // Serves one turn of `layer`; releases mu_ while it asks `cancelled`,
  // runs the batch and answers.
  void ServeLocked(int slot, const std::string& layer) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // ReadyAtLocked is when `queue`'s batch is ready (<= now: ready).
  TimePoint ReadyAtLocked(const Queue& queue) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Answers outside the lock; mu_ must not be held.
  void AnswerAll(std::vector<Answer> answers) ABSL_LOCKS_EXCLUDED(mu_);
  std::vector<Answer> TakeAllLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  Clock* const clock_;
  const RunBatchFn run_batch_;
  const DoneFn done_;

  mutable absl::Mutex mu_;
  // Layers with queued tasks (or one being checked; see Queue::claimed).
  std::map<std::string, Queue, std::less<>> queues_ ABSL_GUARDED_BY(mu_);
  // Layers with queued tasks and not claimed, in turn order.
  std::deque<std::string> turns_ ABSL_GUARDED_BY(mu_);
  int64_t queued_rows_ ABSL_GUARDED_BY(mu_) = 0;
  // Accepted tasks whose Done has not returned (Drain waits for 0).
  int64_t tasks_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t unanswered_ ABSL_GUARDED_BY(mu_) = 0;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  // Workers serving a turn (checking, running or answering).
  int busy_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_sequence_ ABSL_GUARDED_BY(mu_) = 0;
  // Signalled when a batch may have become ready (idle workers wait on it,
  // or for the end of a delay) and when tasks_ or busy_ drop (Drain).
  absl::CondVar work_cv_;
  absl::CondVar idle_cv_;
  int64_t refused_draining_ ABSL_GUARDED_BY(mu_) = 0;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool halted_ ABSL_GUARDED_BY(mu_) = false;  // drain timed out: cut no more
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;  // joined by Stop
  absl::Mutex stop_mu_;               // serializes Stop
};

}  // namespace qlinear

#endif  // QLINEAR_CORE_ENGINE_BATCHER_H_
