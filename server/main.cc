// qlinear-server: serves quantized linear layers over gRPC. See docs/api.md.
#include <pthread.h>
#include <unistd.h>
#include <signal.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "core/engine/startup.h"
#include "core/half.h"
#include "server/server.h"
#include "server/settings.h"

namespace qlinear {
namespace {

int Usage(absl::string_view message) {
  std::fprintf(stderr, "qlinear-server: %.*s\n%s", static_cast<int>(message.size()),
               message.data(), HelpText().c_str());
  return 2;
}

int Main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      std::fputs(HelpText().c_str(), stdout);
      return 0;
    }
  }
  auto settings = Settings::Parse(argc, argv, [](const char* name) { return std::getenv(name); });
  if (!settings.ok()) return Usage(settings.status().message());
  ServerOptions options;
  options.serving_on_start = false;  // SERVING once the layers are loaded
  options.listen = settings->String("listen");
  options.engine.threads = static_cast<int>(settings->Int("threads"));
  options.engine.max_batch_rows = settings->Int("max-batch-rows");
  options.engine.max_batch_delay_us = settings->Int("max-batch-delay-us");
  options.engine.max_queue_rows = settings->Int("max-queue-rows");
  options.engine.max_memory_bytes = static_cast<uint64_t>(settings->Int("max-memory-mb")) << 20;
  options.max_message_mb = static_cast<int>(settings->Int("max-message-mb"));
  const int64_t drain_timeout_s = settings->Int("drain-timeout-s");
  auto mode = ParseQuantMode(settings->String("mode"));
  if (!mode.ok()) return Usage(mode.status().message());
  auto params = MakeQuantParams(
      *mode, settings->IsSet("bits") ? std::optional<int>(settings->Int("bits")) : std::nullopt,
      settings->IsSet("group-size") ? std::optional<int>(settings->Int("group-size"))
                                    : std::nullopt);
  if (!params.ok()) return Usage(params.status().message());
  if (settings->IsSet("simd") && settings->String("simd") != "best") {
    // The kernels read their cap once, from this variable: the flag and
    // QLINEAR_SIMD are one setting with one meaning.
    setenv("QLINEAR_SIMD", settings->String("simd").c_str(), 1);
  }

  // Signals are taken synchronously by the main thread (sigwait), so every
  // other thread must start with them blocked.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto server = QlinearServer::Start(options);
  if (!server.ok()) {
    std::fprintf(stderr, "qlinear-server: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  Engine& engine = (*server)->engine();
  StartupOptions startup;
  startup.models = settings->List("model");
  startup.checkpoint.float_params = *params;
  startup.state_dir = settings->String("state-dir");
  std::vector<std::string> notes;
  absl::Status loaded = LoadAtStart(&engine, startup, &notes);
  for (const std::string& note : notes) {
    std::fprintf(stderr, "qlinear-server: warning: %s\n", note.c_str());
  }
  if (!loaded.ok()) {
    std::fprintf(stderr, "qlinear-server: %s\n", std::string(loaded.message()).c_str());
    return 1;
  }
  (*server)->SetServing(true);
  // The start-up line names a handful of layers; `qlinear list` has them all.
  const auto entries = engine.catalog().List();
  std::vector<std::string> names;
  for (const auto& e : entries) {
    if (names.size() == 8) {
      names.push_back(absl::StrCat("... (", entries.size(), " in all)"));
      break;
    }
    const Layer::Info& i = e.layer->info();
    names.push_back(absl::StrCat(i.name, " [", i.n, "x", i.k, " ", i.params.ToString(), "]"));
  }
  std::printf(
      "qlinear-server listening on %s: %d threads, layers %s, max_batch_rows %lld, "
      "max_batch_delay_us %lld, max_queue_rows %lld, max_memory_mb %lld, %s\n",
      (*server)->address().c_str(), engine.threads(), absl::StrJoin(names, ", ").c_str(),
      static_cast<long long>(options.engine.max_batch_rows),
      static_cast<long long>(options.engine.max_batch_delay_us),
      static_cast<long long>(options.engine.max_queue_rows),
      static_cast<long long>(settings->Int("max-memory-mb")), BuildInfo().c_str());
  std::fflush(stdout);

  int sig = 0;
  sigwait(&signals, &sig);
  std::printf("qlinear-server: %s: draining (up to %llds)\n", sig == SIGINT ? "SIGINT" : "SIGTERM",
              static_cast<long long>(drain_timeout_s));
  std::fflush(stdout);
  const bool drained =
      (*server)->Shutdown(std::chrono::steady_clock::now() + std::chrono::seconds(drain_timeout_s));
  std::printf("qlinear-server: %s\n", drained ? "drained, exiting" : "drain timed out; queued requests answered UNAVAILABLE");
  std::fflush(stdout);
  return drained ? 0 : 1;
}

}  // namespace
}  // namespace qlinear

int main(int argc, char** argv) {
  // Debian's Abseil checks every absl::Mutex acquisition (gRPC's included)
  // for lock-order cycles: about 2 % of the CPU under load, for a check
  // the tests' sanitizer build covers.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  return qlinear::Main(argc, argv);
}
