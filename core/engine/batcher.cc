#include "core/engine/batcher.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace qlinear {
namespace {

// t + us, saturating at TimePoint::max() instead of overflowing.
Clock::TimePoint AddMicros(Clock::TimePoint t, int64_t us) {
  const auto room = std::chrono::duration_cast<std::chrono::microseconds>(Clock::TimePoint::max() - t);
  if (us >= room.count()) return Clock::TimePoint::max();
  return t + std::chrono::microseconds(us);
}

}  // namespace

// One accepted task, possibly split across batches.
struct Batcher::Entry {
  std::unique_ptr<BatchTask> task;
  Request request;
  TimePoint arrived;
  int64_t next_row = 0;  // rows handed to batches so far
  int running = 0;       // its slices in batches whose RunBatch has not returned
  bool checked = false;  // `cancelled` said no (or there is none)
  bool cancel = false;   // `cancelled` said yes: dropped at the next walk
};

struct Batcher::Queue {
  std::deque<std::shared_ptr<Entry>> tasks;
  // A worker is asking `cancelled` of its head tasks with the lock
  // released: the layer is out of turns_ and no other worker cuts from it.
  bool claimed = false;
};

struct Batcher::Answer {
  std::shared_ptr<Entry> entry;
  absl::Status status;
};

Batcher::Batcher(const Options& options, RunBatchFn run_batch, DoneFn done)
    : options_(options),
      clock_(options.clock != nullptr ? options.clock : Clock::Real()),
      run_batch_(std::move(run_batch)),
      done_(std::move(done)) {}

absl::StatusOr<std::unique_ptr<Batcher>> Batcher::Create(const Options& options,
                                                         RunBatchFn run_batch, DoneFn done) {
  if (options.max_batch_rows < 1 || options.max_batch_delay_us < 0 || options.max_queue_rows < 1 ||
      options.slots < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "batcher options: need max_batch_rows >= 1, max_batch_delay_us >= 0, max_queue_rows >= 1, "
        "slots >= 1; got ", options.max_batch_rows, ", ", options.max_batch_delay_us, ", ",
        options.max_queue_rows, ", ", options.slots));
  }
  if (!run_batch || !done) {
    return absl::InvalidArgumentError("batcher: RunBatch and Done are both required");
  }
  std::unique_ptr<Batcher> batcher(new Batcher(options, std::move(run_batch), std::move(done)));
  for (int slot = 0; slot < options.slots; ++slot) {
    batcher->workers_.emplace_back([b = batcher.get(), slot] { b->Work(slot); });
  }
  return batcher;
}

Batcher::~Batcher() { Stop(); }

absl::Status Batcher::Submit(Request request, std::unique_ptr<BatchTask>* task) {
  if (task == nullptr || *task == nullptr) return absl::InvalidArgumentError("batcher: no task");
  if (request.rows < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("a task needs at least one row; got ", request.rows));
  }
  auto entry = std::make_shared<Entry>();
  absl::MutexLock lock(&mu_);
  if (draining_ || stopping_) {
    if (draining_) ++refused_draining_;
    return absl::UnavailableError("server is shutting down");
  }
  if (request.rows > options_.max_queue_rows - queued_rows_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "queue full: ", queued_rows_, " of ", options_.max_queue_rows,
        " rows queued (--max-queue-rows); this request has ", request.rows));
  }
  entry->task = std::move(*task);
  entry->arrived = clock_->Now();
  queued_rows_ += request.rows;
  ++tasks_;
  ++unanswered_;
  Queue& queue = queues_[request.layer];
  // A claimed queue rejoins the turns when its worker lets go of it.
  if (queue.tasks.empty() && !queue.claimed) turns_.push_back(request.layer);
  entry->request = std::move(request);
  queue.tasks.push_back(std::move(entry));
  work_cv_.Signal();
  return absl::OkStatus();
}

Batcher::TimePoint Batcher::ReadyAtLocked(const Queue& queue) const {
  if (options_.max_batch_delay_us == 0 || draining_) return TimePoint::min();
  const Entry& head = *queue.tasks.front();
  int64_t rows = 0;
  for (const auto& e : queue.tasks) {
    // Closed: nothing that arrives later can join the head run.
    if (e->request.version != head.request.version ||
        e->request.precision != head.request.precision) {
      return TimePoint::min();
    }
    rows += e->request.rows - e->next_row;
    if (rows >= options_.max_batch_rows) return TimePoint::min();
  }
  return AddMicros(head.arrived, options_.max_batch_delay_us);
}

void Batcher::Work(int slot) {
  mu_.Lock();
  while (!stopping_) {
    TimePoint wake = TimePoint::max();
    auto pick = turns_.end();
    if (!halted_) {
      const TimePoint now = clock_->Now();
      for (auto it = turns_.begin(); it != turns_.end(); ++it) {
        const TimePoint at = ReadyAtLocked(queues_.find(*it)->second);
        if (at <= now) {
          pick = it;
          break;
        }
        wake = std::min(wake, at);
      }
    }
    if (pick == turns_.end()) {
      clock_->WaitUntil(&mu_, &work_cv_, wake);
      continue;
    }
    const std::string layer = std::move(*pick);
    turns_.erase(pick);
    ++busy_;
    ServeLocked(slot, layer);
    --busy_;
    idle_cv_.SignalAll();
  }
  mu_.Unlock();
}

void Batcher::ServeLocked(int slot, const std::string& layer) {
  // Claimed, the queue stays in queues_ (and at this address) until below.
  Queue& queue = queues_.find(layer)->second;
  queue.claimed = true;
  std::vector<Answer> answers;
  const int64_t max_rows = options_.max_batch_rows;
  TimePoint now;
  bool abandon = false;
  // Walk the rows the batch would take, dropping what must not run, until
  // every task among them has been asked `cancelled` (outside the lock).
  while (true) {
    now = clock_->Now();
    std::vector<std::shared_ptr<Entry>> ask;
    const Entry* head = nullptr;
    int64_t rows = 0;
    for (auto it = queue.tasks.begin(); it != queue.tasks.end() && rows < max_rows;) {
      Entry& e = **it;
      if (e.next_row == 0) {
        absl::Status drop;
        if (e.cancel) {
          drop = absl::CancelledError("cancelled while queued");
        } else if (now >= e.request.deadline) {
          drop = absl::DeadlineExceededError("deadline passed while queued");
        }
        if (!drop.ok()) {
          queued_rows_ -= e.request.rows;
          answers.push_back({std::move(*it), std::move(drop)});
          it = queue.tasks.erase(it);
          continue;
        }
      }
      if (head == nullptr) {
        head = &e;
      } else if (e.request.version != head->request.version ||
                 e.request.precision != head->request.precision) {
        break;
      }
      if (e.next_row == 0 && !e.checked) {
        if (e.request.cancelled) {
          ask.push_back(*it);
        } else {
          e.checked = true;
        }
      }
      rows += e.request.rows - e.next_row;
      ++it;
    }
    if (ask.empty()) break;
    mu_.Unlock();
    std::vector<char> said(ask.size());
    for (size_t i = 0; i < ask.size(); ++i) said[i] = ask[i]->request.cancelled() ? 1 : 0;
    mu_.Lock();
    for (size_t i = 0; i < ask.size(); ++i) (said[i] ? ask[i]->cancel : ask[i]->checked) = true;
    if (halted_ || stopping_) {
      abandon = true;
      break;
    }
  }
  // Cut: the same rows the last walk saw, all checked, under the same lock.
  Batch batch;
  std::vector<std::shared_ptr<Entry>> in_batch;
  while (!abandon && !queue.tasks.empty() && batch.rows < max_rows) {
    const std::shared_ptr<Entry> entry = queue.tasks.front();
    Entry& e = *entry;
    if (batch.slices.empty()) {
      batch.version = e.request.version;
      batch.precision = e.request.precision;
    } else if (e.request.version != batch.version || e.request.precision != batch.precision) {
      break;
    }
    const int64_t take = std::min(e.request.rows - e.next_row, max_rows - batch.rows);
    batch.slices.push_back({e.task.get(), e.next_row, take});
    e.next_row += take;
    ++e.running;
    batch.rows += take;
    queued_rows_ -= take;
    in_batch.push_back(entry);
    if (e.next_row == e.request.rows) queue.tasks.pop_front();
  }
  queue.claimed = false;
  if (queue.tasks.empty()) {
    queues_.erase(layer);  // `queue` dangles from here
  } else {
    turns_.push_back(layer);
    work_cv_.Signal();  // its next batch may be ready for another slot
  }
  if (!batch.slices.empty()) {
    batch.layer = layer;
    batch.sequence = next_sequence_++;
    batch.slot = slot;
    batch.cut = now;
    ++in_flight_;
  }
  unanswered_ -= static_cast<int64_t>(answers.size());
  mu_.Unlock();
  AnswerAll(std::move(answers));
  if (batch.slices.empty()) {
    mu_.Lock();
    return;
  }
  run_batch_(batch);
  std::vector<Answer> finished;
  mu_.Lock();
  --in_flight_;
  for (const auto& entry : in_batch) {
    // The last of its slices to finish answers it.
    if (--entry->running == 0 && entry->next_row == entry->request.rows) {
      finished.push_back({entry, absl::OkStatus()});
    }
  }
  unanswered_ -= static_cast<int64_t>(finished.size());
  mu_.Unlock();
  AnswerAll(std::move(finished));
  mu_.Lock();
}

void Batcher::AnswerAll(std::vector<Answer> answers) {
  if (answers.empty()) return;
  for (Answer& a : answers) done_(std::move(a.entry->task), std::move(a.status));
  absl::MutexLock lock(&mu_);
  tasks_ -= static_cast<int64_t>(answers.size());
  idle_cv_.SignalAll();
}

std::vector<Batcher::Answer> Batcher::TakeAllLocked(const absl::Status& status) {
  std::vector<Answer> all;
  for (auto& [name, queue] : queues_) {
    for (auto& e : queue.tasks) all.push_back({std::move(e), status});
  }
  queues_.clear();
  turns_.clear();
  queued_rows_ = 0;
  unanswered_ -= static_cast<int64_t>(all.size());
  return all;
}

bool Batcher::Drain(TimePoint deadline, DrainCounts* counts) {
  std::vector<Answer> left;
  DrainCounts c;
  int64_t refused_before;
  bool drained;
  {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    work_cv_.SignalAll();  // no more delay: waiting batches are ready now
    // Not tasks_: a task whose `done` is still returning was answered
    // before Drain began (its client may have the answer already).
    c.pending = unanswered_;
    refused_before = refused_draining_;
    while (tasks_ != 0 && !clock_->WaitUntil(&mu_, &idle_cv_, deadline)) {
    }
    drained = tasks_ == 0;
    if (!drained) {
      // Let the running batches answer their own tasks, cut no other, and
      // answer everything still queued (partly run tasks too).
      halted_ = true;
      // Through the clock, so that a test's FakeClock sees Drain wait here.
      while (busy_ != 0) clock_->WaitUntil(&mu_, &idle_cv_, TimePoint::max());
      left = TakeAllLocked(
          absl::UnavailableError("server shut down before this request ran (drain timeout)"));
    }
  }
  c.unavailable = static_cast<int64_t>(left.size());
  AnswerAll(std::move(left));
  absl::MutexLock lock(&mu_);
  // Every Done has returned, the workers' included, before Drain does.
  while (tasks_ != 0) idle_cv_.Wait(&mu_);
  c.answered = c.pending - c.unavailable;
  c.refused = refused_draining_ - refused_before;
  if (counts != nullptr) *counts = c;
  return drained;
}

void Batcher::Stop() {
  absl::MutexLock stop_lock(&stop_mu_);
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    work_cv_.SignalAll();
  }
  for (std::thread& worker : workers_) worker.join();
  workers_.clear();
  std::vector<Answer> left;
  {
    absl::MutexLock lock(&mu_);
    left = TakeAllLocked(absl::UnavailableError("server is shutting down"));
  }
  AnswerAll(std::move(left));
}

int64_t Batcher::queued_rows() const {
  absl::MutexLock lock(&mu_);
  return queued_rows_;
}

int64_t Batcher::unanswered() const {
  absl::MutexLock lock(&mu_);
  return unanswered_;
}

int Batcher::batches_in_flight() const {
  absl::MutexLock lock(&mu_);
  return in_flight_;
}

bool Batcher::draining() const {
  absl::MutexLock lock(&mu_);
  return draining_;
}

}  // namespace qlinear
