// Clock: where a component reads the time and waits for it, so that tests
// can step time by hand instead of sleeping (TF Serving's EnvTime and
// FakeClockEnv, over absl::CondVar).
//
//   Clock* clock = Clock::Real();            // std::chrono::steady_clock
//   absl::MutexLock lock(&mu);
//   while (!ready && !clock->WaitUntil(&mu, &cv, deadline)) {}
//
//   FakeClock fake;                          // in tests: time stands still
//   ... a thread waits in fake.WaitUntil(&mu, &cv, fake.Now() + 5ms) ...
//   fake.BlockUntilWaiting(deadline);        // it has started waiting
//   fake.AdvanceBy(std::chrono::milliseconds(5));  // ... and it wakes
//
// Time points are std::chrono::steady_clock's, whichever clock made them, so
// that deadlines read from either kind fit the same fields.
//
// Thread safety: every method of both may be called from any thread.
#ifndef QLINEAR_CORE_ENGINE_CLOCK_H_
#define QLINEAR_CORE_ENGINE_CLOCK_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace qlinear {

class Clock {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  using Duration = std::chrono::steady_clock::duration;

  virtual ~Clock() = default;

  // Real is std::chrono::steady_clock, waited for with absl::CondVar. It
  // lives as long as the process; never delete it.
  static Clock* Real();

  // Now is the current time. It never goes back.
  virtual TimePoint Now() const = 0;

  // WaitUntil is absl::CondVar::Wait with a deadline on this clock: called
  // with `*mu` held, it releases it, blocks until `*cv` is signalled or
  // Now() reaches `deadline` (TimePoint::max(): never), and returns with
  // `*mu` held again; true when the deadline has been reached. It may also
  // return early (a spurious wakeup), so callers loop on their own state:
  //   while (!ready && !clock->WaitUntil(&mu, &cv, deadline)) {}
  // (A CondVar, not an absl::Condition: our ThreadSanitizer shim,
  // sanitizers/tsan_absl_mutex.cc, sees CondVar waits but not conditions
  // evaluated by the unlocking thread.)
  virtual bool WaitUntil(absl::Mutex* mu, absl::CondVar* cv, TimePoint deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) = 0;
};

// FakeClock: time moves only when AdvanceBy says, and then wakes the
// threads whose WaitUntil deadline it reaches. It starts at a fixed point
// ten years after steady_clock's epoch (Now() is not steady_clock's now).
class FakeClock final : public Clock {
 public:
  FakeClock() = default;
  // Destroying it while a thread waits on it is an error.
  ~FakeClock() override = default;

  TimePoint Now() const override { return now_.load(); }
  bool WaitUntil(absl::Mutex* mu, absl::CondVar* cv, TimePoint deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) override;

  // AdvanceBy moves time forward by `d` (>= 0) and signals every waiter
  // whose deadline is now reached, taking its mutex to do so: never call it
  // holding a waiter's mutex, nor while an object a thread waits in is
  // being destroyed.
  void AdvanceBy(Duration d);

  // waits is the number of WaitUntil calls that have started to wait (not
  // counting those that returned at once), from 0.
  uint64_t waits() const;

  // BlockUntilWaiting returns true once some thread waits in WaitUntil
  // with exactly `deadline`, in a wait that was number `min_waits` or later
  // (read waits() before causing the wait); false if none does within
  // `guard` of real time (a test's failure guard, not a sleep).
  bool BlockUntilWaiting(TimePoint deadline, uint64_t min_waits = 0,
                         absl::Duration guard = absl::Seconds(30));

 private:
  struct Waiter {
    absl::Mutex* mu;
    absl::CondVar* cv;
    TimePoint deadline;
    uint64_t number;
  };

  std::atomic<TimePoint> now_{TimePoint() + std::chrono::hours(24 * 365 * 10)};
  // Lock order: a waiter's mutex, then mu_ (WaitUntil registers holding
  // its mutex); AdvanceBy takes waiters' mutexes after releasing mu_.
  mutable absl::Mutex mu_;
  absl::CondVar waiting_cv_;  // signalled when a wait starts
  std::vector<Waiter*> waiters_ ABSL_GUARDED_BY(mu_);
  uint64_t waits_ ABSL_GUARDED_BY(mu_) = 0;
};

// Implementation details follow; header-only so that any test can use it.

namespace clock_internal {

class RealClock final : public Clock {
 public:
  TimePoint Now() const override { return std::chrono::steady_clock::now(); }
  bool WaitUntil(absl::Mutex* mu, absl::CondVar* cv, TimePoint deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) override {
    if (deadline == TimePoint::max()) {
      cv->Wait(mu);
      return false;
    }
    const TimePoint now = Now();
    if (now < deadline) cv->WaitWithTimeout(mu, absl::FromChrono(deadline - now));
    return Now() >= deadline;
  }
};

}  // namespace clock_internal

inline Clock* Clock::Real() {
  static Clock* const real = new clock_internal::RealClock;
  return real;
}

inline bool FakeClock::WaitUntil(absl::Mutex* mu, absl::CondVar* cv, TimePoint deadline) {
  if (Now() >= deadline) return true;
  Waiter self{mu, cv, deadline, 0};
  {
    absl::MutexLock lock(&mu_);
    self.number = waits_++;
    waiters_.push_back(&self);
  }
  waiting_cv_.SignalAll();
  // AdvanceBy stores the time before it looks for waiters, and signals
  // under *mu: either this sees the new time, or the signal finds it in
  // Wait (*mu is held from here until Wait releases it).
  if (Now() < deadline) cv->Wait(mu);
  {
    absl::MutexLock lock(&mu_);
    waiters_.erase(std::find(waiters_.begin(), waiters_.end(), &self));
  }
  return Now() >= deadline;
}

inline void FakeClock::AdvanceBy(Duration d) {
  std::vector<Waiter> due;
  {
    absl::MutexLock lock(&mu_);
    const TimePoint now = now_.load() + std::max(d, Duration::zero());
    now_.store(now);
    for (const Waiter* w : waiters_) {
      if (w->deadline <= now) due.push_back(*w);
    }
  }
  // A waiter may have left since (a spurious signal then, harmless); its
  // mutex and CondVar outlive it unless their owner is being destroyed.
  for (const Waiter& w : due) {
    absl::MutexLock lock(w.mu);
    w.cv->SignalAll();
  }
}

inline uint64_t FakeClock::waits() const {
  absl::MutexLock lock(&mu_);
  return waits_;
}

inline bool FakeClock::BlockUntilWaiting(TimePoint deadline, uint64_t min_waits,
                                         absl::Duration guard) {
  const absl::Time give_up = absl::Now() + guard;
  absl::MutexLock lock(&mu_);
  while (true) {
    for (const Waiter* w : waiters_) {
      if (w->deadline == deadline && w->number >= min_waits) return true;
    }
    if (waiting_cv_.WaitWithDeadline(&mu_, give_up)) return false;
  }
}

}  // namespace qlinear

#endif  // QLINEAR_CORE_ENGINE_CLOCK_H_
