// qlinear-server: serves quantized linear layers over gRPC. See docs/api.md.
#include <pthread.h>
#include <unistd.h>
#include <signal.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "core/flags.h"
#include "core/engine/startup.h"
#include "core/half.h"
#include "server/server.h"

namespace qlinear {
namespace {

constexpr char kUsage[] =
    "usage: qlinear-server [flags]\n"
    "  --listen HOST:PORT        address to serve on (default 127.0.0.1:50051)\n"
    "  --threads N               compute threads (default 0 = every core)\n"
    "  --max-batch-rows N        most rows per batch (default 128; 1 disables batching)\n"
    "  --max-batch-delay-us N    how long a non-full batch may wait (default 0)\n"
    "  --max-queue-rows N        queued rows before RESOURCE_EXHAUSTED (default 8192)\n"
    "  --max-memory-mb N         bytes all layers may hold, in MiB (default 3/4 of physical\n"
    "                            memory; 0 = unlimited)\n"
    "  --max-message-mb N        largest gRPC message, in MiB (default 64)\n"
    "  --drain-timeout-s N       on SIGINT/SIGTERM, how long to finish accepted work (default 30)\n"
    "  --model PATH              a .safetensors file or an mlx-lm model folder (repeatable):\n"
    "                            MLX triplets as they are, float .weight tensors quantized\n"
    "                            with --bits/--group-size/--mode\n"
    "  --bits B --group-size G --mode affine|mxfp4|mxfp8|nvfp4   for float weights\n"
    "                            (default affine, MLX's defaults per mode)\n"
    "  --state-dir DIR           keep every uploaded layer in DIR (synced before the upload\n"
    "                            answers) and serve them again at the next start\n"
    "With neither --model nor --state-dir, serves layer 'demo': 4096x4096, affine b4 g64,\n"
    "seeded random float16 weights.\n";

// Three quarters of physical memory: a bound by default, so that no upload
// can push the host into the OOM killer. 0 on the command line = unlimited.
int64_t DefaultMemoryMb() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return 0;
  return static_cast<int64_t>(pages) * page / 4 * 3 >> 20;
}

int Usage(absl::string_view message) {
  std::fprintf(stderr, "qlinear-server: %.*s\n%s", static_cast<int>(message.size()),
               message.data(), kUsage);
  return 2;
}

int Main(int argc, char** argv) {
  std::vector<std::string> models;
  // --model repeats: collect them before the single-valued parse.
  std::vector<char*> rest = {argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--model" && i + 1 < argc) {
      models.push_back(argv[++i]);
    } else if (absl::StartsWith(arg, "--model=")) {
      models.push_back(arg.substr(8));
    } else {
      rest.push_back(argv[i]);
    }
  }
  auto flags = Flags::Parse(static_cast<int>(rest.size()), rest.data(), 1,
                            {"listen", "threads", "max-batch-rows", "max-batch-delay-us",
                             "max-queue-rows", "max-memory-mb", "max-message-mb",
                             "drain-timeout-s", "bits", "group-size", "mode", "model",
                             "state-dir"},
                            {"help"});
  if (!flags.ok()) return Usage(flags.status().message());
  if (flags->Has("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (!flags->positional().empty()) return Usage(absl::StrCat("unexpected argument '", flags->positional()[0], "'"));
  ServerOptions options;
  options.serving_on_start = false;  // SERVING once the layers are loaded
  if (auto v = flags->Get("listen")) options.listen = *v;
  struct IntFlag {
    const char* name;
    int64_t min, max;
    int64_t value;
  };
  std::vector<IntFlag> ints = {{"threads", 0, 1024, 0},
                               {"max-batch-rows", 1, 1 << 20, 128},
                               {"max-batch-delay-us", 0, 10'000'000, 0},
                               {"max-queue-rows", 1, int64_t{1} << 32, 8192},
                               {"max-memory-mb", 0, int64_t{1} << 30, DefaultMemoryMb()},
                               {"max-message-mb", 1, 2047, 64},
                               {"drain-timeout-s", 0, 86400, 30}};
  for (IntFlag& f : ints) {
    auto v = flags->GetInt(f.name);
    if (!v.ok()) return Usage(v.status().message());
    if (*v) {
      if (**v < f.min || **v > f.max) {
        return Usage(absl::StrCat("--", f.name, " must be in [", f.min, ", ", f.max, "]; got ", **v));
      }
      f.value = **v;
    }
  }
  options.engine.threads = static_cast<int>(ints[0].value);
  options.engine.max_batch_rows = ints[1].value;
  options.engine.max_batch_delay_us = ints[2].value;
  options.engine.max_queue_rows = ints[3].value;
  options.engine.max_memory_bytes = static_cast<uint64_t>(ints[4].value) << 20;
  options.max_message_mb = static_cast<int>(ints[5].value);
  const int64_t drain_timeout_s = ints[6].value;
  auto quant_flags = ParseQuantFlags(*flags);
  if (!quant_flags.ok()) return Usage(quant_flags.status().message());
  auto params = MakeQuantParams(*quant_flags);
  if (!params.ok()) return Usage(params.status().message());

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
  startup.models = models;
  startup.checkpoint.float_params = *params;
  if (auto dir = flags->Get("state-dir")) {
    if (dir->empty()) return Usage("--state-dir must name a folder");
    startup.state_dir = *dir;
  }
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
      static_cast<long long>(ints[4].value), BuildInfo().c_str());
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
