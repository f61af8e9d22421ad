// The batcher alone: queues, batch cutting, the delay, drops, admission,
// drain and stop, turns among layers, several batches in flight. Time is a
// FakeClock: no test sleeps for time to pass; waits for another thread
// (a batch started, a task answered) have a generous failure guard.
#include "core/engine/batcher.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <random>
#include <set>
#include <thread>
#include <tuple>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace qlinear {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using TimePoint = Clock::TimePoint;
using std::chrono::microseconds;

constexpr absl::Duration kGuard = absl::Seconds(30);

struct TestTask final : BatchTask {
  explicit TestTask(int id) : id(id) {}
  int id;
};

// (task id, row0, rows)
using SliceView = std::tuple<int, int64_t, int64_t>;

struct Ran {
  std::string layer;
  uint64_t version;
  Precision precision;
  std::vector<SliceView> slices;
  int64_t rows;
  uint64_t sequence;
  int slot;
  TimePoint cut;
};

// Harness: a batcher whose RunBatch records each batch and, when gated,
// blocks until the test releases that batch (by sequence number).
class Harness {
 public:
  explicit Harness(Batcher::Options options, bool gated = false) : gated_(gated) {
    auto b = Batcher::Create(
        options, [this](const Batcher::Batch& batch) { Run(batch); },
        [this](std::unique_ptr<BatchTask> task, absl::Status status) {
          absl::MutexLock lock(&mu_);
          const int id = static_cast<TestTask*>(task.get())->id;
          answers_.emplace_back(id, std::move(status));
          cv_.SignalAll();
        });
    EXPECT_TRUE(b.ok()) << b.status();
    batcher_ = std::move(*b);
  }
  ~Harness() {
    Open();
    batcher_.reset();
  }

  Batcher& batcher() { return *batcher_; }

  absl::Status Submit(int id, const std::string& layer, int64_t rows, uint64_t version = 1,
                      Precision precision = Precision::kExact,
                      TimePoint deadline = TimePoint::max(),
                      std::function<bool()> cancelled = nullptr) {
    std::unique_ptr<BatchTask> task = std::make_unique<TestTask>(id);
    absl::Status s = batcher_->Submit(
        {layer, version, precision, rows, deadline, std::move(cancelled)}, &task);
    EXPECT_EQ(s.ok(), task == nullptr) << "ownership moves iff OK";
    return s;
  }

  // Release lets the gated batch `sequence` return; Open lets every one.
  void Release(uint64_t sequence) {
    absl::MutexLock lock(&mu_);
    released_.insert(sequence);
    cv_.SignalAll();
  }
  void Open() {
    absl::MutexLock lock(&mu_);
    open_ = true;
    cv_.SignalAll();
  }

  // Block until `n` batches have started / `n` tasks are answered.
  // (CondVar loops rather than absl::Condition: see core/engine/clock.h.)
  bool WaitStarted(size_t n) {
    const absl::Time give_up = absl::Now() + kGuard;
    absl::MutexLock lock(&mu_);
    while (started_.size() < n) {
      if (cv_.WaitWithDeadline(&mu_, give_up)) return started_.size() >= n;
    }
    return true;
  }
  bool WaitAnswered(size_t n) {
    const absl::Time give_up = absl::Now() + kGuard;
    absl::MutexLock lock(&mu_);
    while (answers_.size() < n) {
      if (cv_.WaitWithDeadline(&mu_, give_up)) return answers_.size() >= n;
    }
    return true;
  }

  std::vector<Ran> started() {
    absl::MutexLock lock(&mu_);
    return started_;
  }
  std::vector<std::string> started_layers() {
    std::vector<std::string> layers;
    for (const Ran& r : started()) layers.push_back(r.layer);
    return layers;
  }
  std::vector<std::pair<int, absl::Status>> answers() {
    absl::MutexLock lock(&mu_);
    return answers_;
  }
  absl::Status answer(int id) {
    for (const auto& [i, s] : answers()) {
      if (i == id) return s;
    }
    return absl::InternalError("not answered");
  }
  int running() {
    absl::MutexLock lock(&mu_);
    return running_;
  }
  int max_running() {
    absl::MutexLock lock(&mu_);
    return max_running_;
  }

 private:
  void Run(const Batcher::Batch& batch) {
    Ran r{batch.layer, batch.version, batch.precision, {}, batch.rows, batch.sequence,
          batch.slot, batch.cut};
    for (const Batcher::Slice& s : batch.slices) {
      r.slices.emplace_back(static_cast<TestTask*>(s.task)->id, s.row0, s.rows);
    }
    absl::MutexLock lock(&mu_);
    started_.push_back(std::move(r));
    max_running_ = std::max(max_running_, ++running_);
    cv_.SignalAll();
    while (gated_ && !open_ && released_.count(batch.sequence) == 0) cv_.Wait(&mu_);
    --running_;
  }

  const bool gated_;
  absl::Mutex mu_;
  absl::CondVar cv_;  // signalled on every change below
  std::vector<Ran> started_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<int, absl::Status>> answers_ ABSL_GUARDED_BY(mu_);
  std::set<uint64_t> released_ ABSL_GUARDED_BY(mu_);
  bool open_ ABSL_GUARDED_BY(mu_) = false;
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  int max_running_ ABSL_GUARDED_BY(mu_) = 0;
  std::unique_ptr<Batcher> batcher_;
};

Batcher::Options Opts(FakeClock* clock, int64_t max_batch_rows, int64_t delay_us = 0,
                      int slots = 1) {
  Batcher::Options o;
  o.clock = clock;
  o.max_batch_rows = max_batch_rows;
  o.max_batch_delay_us = delay_us;
  o.slots = slots;
  return o;
}

TEST(BatcherTest, CreateRejectsBadOptions) {
  auto run = [](const Batcher::Batch&) {};
  auto done = [](std::unique_ptr<BatchTask>, absl::Status) {};
  for (auto edit : std::vector<std::function<void(Batcher::Options&)>>{
           [](Batcher::Options& o) { o.max_batch_rows = 0; },
           [](Batcher::Options& o) { o.max_batch_delay_us = -1; },
           [](Batcher::Options& o) { o.max_queue_rows = 0; },
           [](Batcher::Options& o) { o.slots = 0; }}) {
    Batcher::Options o;
    edit(o);
    EXPECT_EQ(Batcher::Create(o, run, done).status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(Batcher::Create({}, nullptr, done).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Batcher::Create({}, run, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(BatcherTest, SubmitRefusesEmptyTasks) {
  FakeClock clock;
  Harness h(Opts(&clock, 4));
  EXPECT_EQ(h.Submit(1, "a", 0).code(), absl::StatusCode::kInvalidArgument);
  std::unique_ptr<BatchTask> none;
  Batcher::Request request;
  request.layer = "a";
  request.rows = 1;
  EXPECT_EQ(h.batcher().Submit(request, &none).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(h.batcher().unanswered(), 0);
}

TEST(BatcherTest, CapsBatchRowsAndSplitsLargeTasksInOrder) {
  FakeClock clock;
  Harness h(Opts(&clock, 4), /*gated=*/true);
  ASSERT_TRUE(h.Submit(0, "a", 1).ok());
  ASSERT_TRUE(h.WaitStarted(1));  // holds the only slot while the rest queue
  ASSERT_TRUE(h.Submit(1, "a", 3).ok());
  ASSERT_TRUE(h.Submit(2, "a", 6).ok());
  ASSERT_TRUE(h.Submit(3, "a", 2).ok());
  EXPECT_EQ(h.batcher().queued_rows(), 11);
  EXPECT_EQ(h.batcher().unanswered(), 4);
  h.Open();
  ASSERT_TRUE(h.WaitAnswered(4));
  const std::vector<Ran> ran = h.started();
  ASSERT_EQ(ran.size(), 4u);
  EXPECT_THAT(ran[0].slices, ElementsAre(SliceView{0, 0, 1}));
  EXPECT_THAT(ran[1].slices, ElementsAre(SliceView{1, 0, 3}, SliceView{2, 0, 1}));
  EXPECT_THAT(ran[2].slices, ElementsAre(SliceView{2, 1, 4}));
  EXPECT_THAT(ran[3].slices, ElementsAre(SliceView{2, 5, 1}, SliceView{3, 0, 2}));
  for (size_t i = 0; i < ran.size(); ++i) {
    EXPECT_EQ(ran[i].sequence, i);
    EXPECT_LE(ran[i].rows, 4);
  }
  EXPECT_EQ(ran[3].rows, 3);
  const auto answers = h.answers();
  ASSERT_EQ(answers.size(), 4u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(answers[i].first, i);
    EXPECT_TRUE(answers[i].second.ok()) << answers[i].second;
  }
  EXPECT_EQ(h.batcher().queued_rows(), 0);
  EXPECT_EQ(h.batcher().unanswered(), 0);
}

TEST(BatcherTest, OneVersionAndOnePrecisionPerBatch) {
  FakeClock clock;
  Harness h(Opts(&clock, 8), /*gated=*/true);
  ASSERT_TRUE(h.Submit(0, "a", 1).ok());
  ASSERT_TRUE(h.WaitStarted(1));
  ASSERT_TRUE(h.Submit(1, "a", 1, 1, Precision::kExact).ok());
  ASSERT_TRUE(h.Submit(2, "a", 1, 1, Precision::kExact).ok());
  ASSERT_TRUE(h.Submit(3, "a", 1, 1, Precision::kInt8).ok());
  ASSERT_TRUE(h.Submit(4, "a", 1, 2, Precision::kExact).ok());
  ASSERT_TRUE(h.Submit(5, "a", 1, 2, Precision::kExact).ok());
  h.Open();
  ASSERT_TRUE(h.WaitAnswered(6));
  const std::vector<Ran> ran = h.started();
  ASSERT_EQ(ran.size(), 4u);
  EXPECT_THAT(ran[1].slices, ElementsAre(SliceView{1, 0, 1}, SliceView{2, 0, 1}));
  EXPECT_EQ(ran[1].precision, Precision::kExact);
  EXPECT_THAT(ran[2].slices, ElementsAre(SliceView{3, 0, 1}));
  EXPECT_EQ(ran[2].precision, Precision::kInt8);
  EXPECT_THAT(ran[3].slices, ElementsAre(SliceView{4, 0, 1}, SliceView{5, 0, 1}));
  EXPECT_EQ(ran[3].version, 2u);
}

TEST(BatcherTest, PartialBatchWaitsUntilHeadArrivalPlusDelay) {
  FakeClock clock;
  Harness h(Opts(&clock, 4, /*delay_us=*/1000));
  const TimePoint t0 = clock.Now();
  const TimePoint ready = t0 + microseconds(1000);
  uint64_t w = clock.waits();
  ASSERT_TRUE(h.Submit(1, "a", 1).ok());
  // The worker has looked at the queue and waits for the head's time.
  ASSERT_TRUE(clock.BlockUntilWaiting(ready, w));
  EXPECT_TRUE(h.started().empty());
  clock.AdvanceBy(microseconds(999));
  // A later arrival wakes the worker, which looks again at t0 + 999us and
  // still waits for the head's arrival + delay, not the newcomer's.
  w = clock.waits();
  ASSERT_TRUE(h.Submit(2, "a", 1).ok());
  ASSERT_TRUE(clock.BlockUntilWaiting(ready, w));
  EXPECT_TRUE(h.started().empty());
  EXPECT_EQ(h.batcher().queued_rows(), 2);
  clock.AdvanceBy(microseconds(1));
  ASSERT_TRUE(h.WaitStarted(1));
  const Ran ran = h.started()[0];
  EXPECT_THAT(ran.slices, ElementsAre(SliceView{1, 0, 1}, SliceView{2, 0, 1}));
  EXPECT_EQ(ran.cut, ready);
  ASSERT_TRUE(h.WaitAnswered(2));
}

TEST(BatcherTest, FullBatchDoesNotWait) {
  FakeClock clock;
  Harness h(Opts(&clock, 4, /*delay_us=*/1000));
  const TimePoint t0 = clock.Now();
  const uint64_t w = clock.waits();
  ASSERT_TRUE(h.Submit(1, "a", 3).ok());
  ASSERT_TRUE(clock.BlockUntilWaiting(t0 + microseconds(1000), w));
  ASSERT_TRUE(h.Submit(2, "a", 1).ok());  // now 4 rows: full
  ASSERT_TRUE(h.WaitStarted(1));
  ASSERT_TRUE(h.Submit(3, "a", 9).ok());  // larger than a batch: full at once
  ASSERT_TRUE(h.WaitStarted(3));
  const std::vector<Ran> ran = h.started();
  EXPECT_EQ(ran[0].rows, 4);
  EXPECT_THAT(ran[1].slices, ElementsAre(SliceView{3, 0, 4}));
  EXPECT_THAT(ran[2].slices, ElementsAre(SliceView{3, 4, 4}));
  for (const Ran& r : ran) EXPECT_EQ(r.cut, t0);  // the clock never moved
  // The last row alone waits for the delay from task 3's arrival.
  EXPECT_TRUE(clock.BlockUntilWaiting(t0 + microseconds(1000)));
  EXPECT_EQ(h.batcher().queued_rows(), 1);
}

TEST(BatcherTest, ClosedRunDoesNotWait) {
  FakeClock clock;
  Harness h(Opts(&clock, 4, /*delay_us=*/1000));
  const TimePoint t0 = clock.Now();
  uint64_t w = clock.waits();
  ASSERT_TRUE(h.Submit(1, "a", 1, /*version=*/1).ok());
  ASSERT_TRUE(clock.BlockUntilWaiting(t0 + microseconds(1000), w));
  clock.AdvanceBy(microseconds(100));
  w = clock.waits();
  // Another version follows: nothing can join task 1, so it runs now.
  ASSERT_TRUE(h.Submit(2, "a", 1, /*version=*/2).ok());
  ASSERT_TRUE(h.WaitStarted(1));
  EXPECT_THAT(h.started()[0].slices, ElementsAre(SliceView{1, 0, 1}));
  EXPECT_EQ(h.started()[0].cut, t0 + microseconds(100));
  // Task 2, alone at the head now, waits for its own arrival + delay.
  ASSERT_TRUE(clock.BlockUntilWaiting(t0 + microseconds(1100), w));
  EXPECT_EQ(h.started().size(), 1u);
  clock.AdvanceBy(microseconds(1000));
  ASSERT_TRUE(h.WaitStarted(2));
  EXPECT_EQ(h.started()[1].cut, t0 + microseconds(1100));
  ASSERT_TRUE(h.WaitAnswered(2));
}

TEST(BatcherTest, DeadlinePassedWhileQueuedIsDroppedWithoutCompute) {
  FakeClock clock;
  Harness h(Opts(&clock, 4), /*gated=*/true);
  const TimePoint t0 = clock.Now();
  ASSERT_TRUE(h.Submit(0, "a", 1).ok());
  ASSERT_TRUE(h.WaitStarted(1));
  ASSERT_TRUE(h.Submit(1, "a", 2, 1, Precision::kExact, t0 + microseconds(100)).ok());
  ASSERT_TRUE(h.Submit(2, "a", 2, 1, Precision::kExact, t0 + microseconds(300)).ok());
  clock.AdvanceBy(microseconds(200));
  h.Open();
  ASSERT_TRUE(h.WaitAnswered(3));
  EXPECT_EQ(h.answer(1).code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(h.answer(2).ok());
  const std::vector<Ran> ran = h.started();
  ASSERT_EQ(ran.size(), 2u);
  EXPECT_THAT(ran[1].slices, ElementsAre(SliceView{2, 0, 2}));
  EXPECT_EQ(h.batcher().queued_rows(), 0);
}

TEST(BatcherTest, CancelledIsAskedOutsideTheLockOncePerTask) {
  FakeClock clock;
  Harness h(Opts(&clock, 4), /*gated=*/true);
  Batcher& b = h.batcher();
  ASSERT_TRUE(h.Submit(0, "a", 1).ok());
  ASSERT_TRUE(h.WaitStarted(1));
  // Both callbacks take the batcher's lock: were it held, they would hang.
  std::atomic<int> asked_1{0}, asked_2{0};
  std::atomic<int64_t> seen_rows{-1};
  ASSERT_TRUE(h.Submit(1, "a", 2, 1, Precision::kExact, TimePoint::max(), [&] {
                ++asked_1;
                seen_rows = b.queued_rows();
                return true;
              }).ok());
  ASSERT_TRUE(h.Submit(2, "a", 6, 1, Precision::kExact, TimePoint::max(), [&] {
                ++asked_2;
                return b.unanswered() < 0;  // false
              }).ok());
  h.Open();
  ASSERT_TRUE(h.WaitAnswered(3));
  EXPECT_EQ(h.answer(1).code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(h.answer(2).ok());
  EXPECT_EQ(asked_1.load(), 1);
  EXPECT_EQ(asked_2.load(), 1);  // not again for its second batch
  EXPECT_EQ(seen_rows.load(), 8);
  const std::vector<Ran> ran = h.started();
  ASSERT_EQ(ran.size(), 3u);
  EXPECT_THAT(ran[1].slices, ElementsAre(SliceView{2, 0, 4}));
  EXPECT_THAT(ran[2].slices, ElementsAre(SliceView{2, 4, 2}));
}

TEST(BatcherTest, QueueFullRefusesAndKeepsTheTask) {
  FakeClock clock;
  Batcher::Options o = Opts(&clock, 4);
  o.max_queue_rows = 5;
  Harness h(o, /*gated=*/true);
  ASSERT_TRUE(h.Submit(0, "a", 1).ok());
  ASSERT_TRUE(h.WaitStarted(1));  // in a batch: no longer queued
  ASSERT_TRUE(h.Submit(1, "a", 3).ok());
  const absl::Status full = h.Submit(2, "b", 3);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(full.message(), HasSubstr("--max-queue-rows"));
  ASSERT_TRUE(h.Submit(3, "b", 2).ok());
  EXPECT_EQ(h.batcher().queued_rows(), 5);
  h.Open();
  ASSERT_TRUE(h.WaitAnswered(3));
  EXPECT_EQ(h.answer(2).code(), absl::StatusCode::kInternal);  // never answered
}

TEST(BatcherTest, DrainRunsWaitingBatchesAtOnce) {
  FakeClock clock;
  Harness h(Opts(&clock, 4, /*delay_us=*/1000));
  const TimePoint t0 = clock.Now();
  const uint64_t w = clock.waits();
  ASSERT_TRUE(h.Submit(1, "a", 1).ok());
  ASSERT_TRUE(clock.BlockUntilWaiting(t0 + microseconds(1000), w));
  Batcher::DrainCounts counts;
  EXPECT_TRUE(h.batcher().Drain(t0 + std::chrono::seconds(1), &counts));
  EXPECT_TRUE(h.answer(1).ok());
  EXPECT_EQ(h.started()[0].cut, t0);  // no delay once draining
  EXPECT_EQ(counts.pending, 1);
  EXPECT_EQ(counts.answered, 1);
  EXPECT_EQ(counts.unavailable, 0);
  EXPECT_EQ(counts.refused, 0);
  EXPECT_TRUE(h.batcher().draining());
  EXPECT_EQ(h.Submit(2, "a", 1).code(), absl::StatusCode::kUnavailable);
}

// A task whose `done` is still returning when Drain begins was answered
// before it (its client may hold the answer already): not pending.
TEST(BatcherTest, DrainCountsAnAnswerStillLeavingAsNotPending) {
  FakeClock clock;
  absl::Mutex mu;
  absl::CondVar cv;
  bool in_done = false, let_go = false;
  auto b = Batcher::Create(
      Opts(&clock, 4), [](const Batcher::Batch&) {},
      [&](std::unique_ptr<BatchTask>, absl::Status) {
        absl::MutexLock lock(&mu);
        in_done = true;
        cv.SignalAll();
        const absl::Time give_up = absl::Now() + kGuard;
        while (!let_go && !cv.WaitWithDeadline(&mu, give_up)) {
        }
      });
  ASSERT_TRUE(b.ok()) << b.status();
  Batcher& batcher = **b;
  std::unique_ptr<BatchTask> task = std::make_unique<TestTask>(1);
  ASSERT_TRUE(batcher.Submit({"a", 1, Precision::kExact, 1, TimePoint::max(), nullptr}, &task).ok());
  {
    absl::MutexLock lock(&mu);
    const absl::Time give_up = absl::Now() + kGuard;
    while (!in_done && !cv.WaitWithDeadline(&mu, give_up)) {
    }
    ASSERT_TRUE(in_done);
  }
  EXPECT_EQ(batcher.unanswered(), 0);
  Batcher::DrainCounts counts;
  std::thread drain([&] { EXPECT_TRUE(batcher.Drain(TimePoint::max(), &counts)); });
  const absl::Time give_up = absl::Now() + kGuard;
  while (!batcher.draining() && absl::Now() < give_up) std::this_thread::yield();
  {
    absl::MutexLock lock(&mu);
    let_go = true;
    cv.SignalAll();
  }
  drain.join();
  EXPECT_EQ(counts.pending, 0);
  EXPECT_EQ(counts.answered, 0);
  EXPECT_EQ(counts.unavailable, 0);
}

TEST(BatcherTest, DrainRefusesAndAnswersQueuedWorkAtItsDeadline) {
  FakeClock clock;
  Harness h(Opts(&clock, 4), /*gated=*/true);
  const TimePoint deadline = clock.Now() + std::chrono::seconds(1);
  ASSERT_TRUE(h.Submit(0, "a", 1).ok());
  ASSERT_TRUE(h.WaitStarted(1));
  ASSERT_TRUE(h.Submit(1, "b", 2).ok());
  uint64_t w = clock.waits();
  bool drained = true;
  Batcher::DrainCounts counts;
  std::thread drain([&] { drained = h.batcher().Drain(deadline, &counts); });
  ASSERT_TRUE(clock.BlockUntilWaiting(deadline, w));
  EXPECT_TRUE(h.batcher().draining());
  const absl::Status refused = h.Submit(2, "a", 1);
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(refused.message(), HasSubstr("shutting down"));
  w = clock.waits();
  clock.AdvanceBy(std::chrono::seconds(1));
  // Drain now waits, forever, for the running batch: only then release it.
  ASSERT_TRUE(clock.BlockUntilWaiting(TimePoint::max(), w));
  h.Release(0);
  drain.join();
  EXPECT_FALSE(drained);
  EXPECT_TRUE(h.answer(0).ok());
  EXPECT_EQ(h.answer(1).code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(h.answer(1).message(), HasSubstr("drain timeout"));
  EXPECT_EQ(h.started().size(), 1u);  // task 1 never ran
  EXPECT_EQ(counts.pending, 2);
  EXPECT_EQ(counts.answered, 1);
  EXPECT_EQ(counts.unavailable, 1);
  EXPECT_EQ(counts.refused, 1);
  EXPECT_EQ(h.batcher().unanswered(), 0);
  EXPECT_EQ(h.batcher().queued_rows(), 0);
}

TEST(BatcherTest, StopAnswersQueuedWorkUnavailable) {
  FakeClock clock;
  Harness h(Opts(&clock, 4, /*delay_us=*/1000));
  const uint64_t w = clock.waits();
  ASSERT_TRUE(h.Submit(1, "a", 1).ok());
  ASSERT_TRUE(clock.BlockUntilWaiting(clock.Now() + microseconds(1000), w));
  h.batcher().Stop();
  EXPECT_EQ(h.answer(1).code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(h.started().empty());
  EXPECT_EQ(h.Submit(2, "a", 1).code(), absl::StatusCode::kUnavailable);
  h.batcher().Stop();  // idempotent
}

TEST(BatcherTest, LayersTakeTurns) {
  FakeClock clock;
  Harness h(Opts(&clock, 2), /*gated=*/true);
  ASSERT_TRUE(h.Submit(0, "a", 1).ok());
  ASSERT_TRUE(h.WaitStarted(1));
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(h.Submit(i, "a", 2).ok());
  for (int i = 4; i <= 5; ++i) ASSERT_TRUE(h.Submit(i, "b", 2).ok());
  h.Open();
  ASSERT_TRUE(h.WaitAnswered(6));
  EXPECT_THAT(h.started_layers(), ElementsAre("a", "a", "b", "a", "b", "a"));
}

TEST(BatcherTest, TurnsRotateAcrossSlots) {
  FakeClock clock;
  Harness h(Opts(&clock, 1, 0, /*slots=*/2), /*gated=*/true);
  ASSERT_TRUE(h.Submit(0, "a", 1).ok());
  ASSERT_TRUE(h.WaitStarted(1));
  ASSERT_TRUE(h.Submit(1, "b", 1).ok());
  ASSERT_TRUE(h.WaitStarted(2));  // both slots busy
  ASSERT_TRUE(h.Submit(2, "a", 1).ok());
  ASSERT_TRUE(h.Submit(3, "a", 1).ok());
  ASSERT_TRUE(h.Submit(4, "b", 1).ok());
  ASSERT_TRUE(h.Submit(5, "b", 1).ok());
  for (uint64_t i = 0; i < 4; ++i) {
    h.Release(i);  // one slot frees at a time; it serves the next turn
    ASSERT_TRUE(h.WaitStarted(3 + i));
  }
  h.Open();
  ASSERT_TRUE(h.WaitAnswered(6));
  EXPECT_THAT(h.started_layers(), ElementsAre("a", "b", "a", "b", "a", "b"));
  EXPECT_EQ(h.max_running(), 2);
}

TEST(BatcherTest, TwoLayersRunAtOnceWithTwoSlots) {
  FakeClock clock;
  Harness h(Opts(&clock, 4, 0, /*slots=*/2), /*gated=*/true);
  ASSERT_TRUE(h.Submit(1, "a", 1).ok());
  ASSERT_TRUE(h.Submit(2, "b", 1).ok());
  ASSERT_TRUE(h.WaitStarted(2));
  EXPECT_EQ(h.running(), 2);
  EXPECT_EQ(h.batcher().batches_in_flight(), 2);
  const std::vector<Ran> ran = h.started();
  EXPECT_NE(ran[0].slot, ran[1].slot);
  EXPECT_NE(ran[0].layer, ran[1].layer);
  h.Open();
  ASSERT_TRUE(h.WaitAnswered(2));
}

TEST(BatcherTest, OneSlotRunsOneBatchAtATime) {
  FakeClock clock;
  Harness h(Opts(&clock, 4, 0, /*slots=*/1), /*gated=*/true);
  ASSERT_TRUE(h.Submit(1, "a", 1).ok());
  ASSERT_TRUE(h.Submit(2, "b", 1).ok());
  ASSERT_TRUE(h.WaitStarted(1));
  // The only worker is inside RunBatch: the other layer cannot start.
  EXPECT_EQ(h.batcher().batches_in_flight(), 1);
  EXPECT_EQ(h.batcher().queued_rows(), 1);
  h.Release(0);
  ASSERT_TRUE(h.WaitStarted(2));
  h.Release(1);
  ASSERT_TRUE(h.WaitAnswered(2));
  EXPECT_EQ(h.max_running(), 1);
  EXPECT_EQ(h.started()[1].slot, 0);
}

TEST(BatcherTest, BatchesOfOneTaskRunAtOnceAndItIsAnsweredAfterBoth) {
  FakeClock clock;
  Harness h(Opts(&clock, 2, 0, /*slots=*/2), /*gated=*/true);
  ASSERT_TRUE(h.Submit(1, "a", 4).ok());
  ASSERT_TRUE(h.WaitStarted(2));
  EXPECT_EQ(h.running(), 2);
  const std::vector<Ran> ran = h.started();
  std::map<uint64_t, std::vector<SliceView>> by_sequence;
  for (const Ran& r : ran) by_sequence[r.sequence] = r.slices;
  EXPECT_THAT(by_sequence[0], ElementsAre(SliceView{1, 0, 2}));
  EXPECT_THAT(by_sequence[1], ElementsAre(SliceView{1, 2, 2}));
  // The later rows finish first: the task waits for the earlier ones.
  const uint64_t w = clock.waits();
  h.Release(1);
  ASSERT_TRUE(clock.BlockUntilWaiting(TimePoint::max(), w));  // that worker is idle
  EXPECT_TRUE(h.answers().empty());
  h.Release(0);
  ASSERT_TRUE(h.WaitAnswered(1));
  EXPECT_TRUE(h.answer(1).ok());
}

TEST(BatcherTest, KeepsEachLayersRowOrderAcrossSlots) {
  Batcher::Options o;  // the real clock: nothing here waits for time
  o.max_batch_rows = 5;
  o.slots = 3;
  Harness h(o);
  std::mt19937 rng(7);
  std::uniform_int_distribution<int64_t> rows(1, 7);
  std::map<std::string, std::vector<std::pair<int, int64_t>>> sent;
  constexpr int kTasks = 300;
  for (int id = 0; id < kTasks; ++id) {
    const std::string layer = id % 3 == 0 ? "c" : (id % 2 == 0 ? "a" : "b");
    const int64_t n = rows(rng);
    ASSERT_TRUE(h.Submit(id, layer, n).ok());
    sent[layer].emplace_back(id, n);
  }
  ASSERT_TRUE(h.WaitAnswered(kTasks));
  std::vector<Ran> ran = h.started();
  std::sort(ran.begin(), ran.end(),
            [](const Ran& x, const Ran& y) { return x.sequence < y.sequence; });
  std::map<std::string, std::vector<SliceView>> got;
  for (size_t i = 0; i < ran.size(); ++i) {
    EXPECT_EQ(ran[i].sequence, i);
    EXPECT_LE(ran[i].rows, 5);
    for (const SliceView& s : ran[i].slices) got[ran[i].layer].push_back(s);
  }
  for (const auto& [layer, tasks] : sent) {
    // Concatenated in cut order, a layer's slices are its tasks' rows in
    // arrival order, each task's rows in order.
    std::vector<std::tuple<int, int64_t>> expected, seen;
    for (const auto& [id, n] : tasks) {
      for (int64_t r = 0; r < n; ++r) expected.emplace_back(id, r);
    }
    for (const auto& [id, row0, n] : got[layer]) {
      for (int64_t r = 0; r < n; ++r) seen.emplace_back(id, row0 + r);
    }
    EXPECT_EQ(seen, expected) << layer;
  }
  std::set<int> answered;
  for (const auto& [id, status] : h.answers()) {
    EXPECT_TRUE(status.ok()) << status;
    EXPECT_TRUE(answered.insert(id).second) << "task " << id << " answered twice";
  }
  EXPECT_EQ(answered.size(), static_cast<size_t>(kTasks));
}

}  // namespace
}  // namespace qlinear
