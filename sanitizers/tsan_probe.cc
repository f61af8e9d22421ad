// tsan_probe [racy]: the TSan suite's check on itself (.ci/run). Two threads
// increment a counter under an absl::Mutex: TSan must stay silent (exit 0),
// which it does only when sanitizers/tsan_absl_mutex.cc makes Debian's
// uninstrumented abseil visible. With "racy" they also increment an
// unguarded int: TSan must report that race (exit 66), so the suite is seen
// to catch one.
#include <thread>

#include "absl/synchronization/mutex.h"

namespace {
absl::Mutex mu;
int guarded = 0;
int racy = 0;
}  // namespace

int main(int argc, char**) {
  const bool race = argc > 1;
  auto work = [race] {
    for (int i = 0; i < 1000; ++i) {
      absl::MutexLock lock(&mu);
      ++guarded;
    }
    if (race) ++racy;
  };
  std::thread t(work);
  work();
  t.join();
  return guarded == 2000 ? 0 : 1;
}
