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

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "core/engine/startup.h"
#include "core/half.h"
#include "core/kernels/qmm.h"
#include "server/log.h"
#include "server/server.h"
#include "core/precision.h"
#include "server/settings.h"
#include "server/tls.h"

namespace qlinear {
namespace {

// Usage answers bad usage with one line (the flag, the value and what is
// allowed) and exit status 2.
int Usage(absl::string_view message) {
  std::fprintf(stderr, "qlinear-server: %.*s (qlinear-server --help lists the flags)\n",
               static_cast<int>(message.size()), message.data());
  return 2;
}

int Main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      std::fputs(HelpText().c_str(), stdout);
      return 0;
    }
    if (std::strcmp(argv[i], "--help-markdown") == 0) {  // docs/api.md's table
      std::fputs(FlagsMarkdown().c_str(), stdout);
      return 0;
    }
  }
  auto settings = Settings::Parse(argc, argv, [](const char* name) { return std::getenv(name); });
  if (!settings.ok()) return Usage(settings.status().message());
  // From here on every event is a log line on stderr (server/log.h).
  LogFormat log_format = LogFormat::kText;
  ParseLogFormat(settings->String("log-format"), &log_format);  // checked by Parse
  SetLogFormat(log_format);
  SetAccessLog(settings->Bool("access-log"));
  {
    const auto summary = settings->Summary();
    std::vector<LogField> fields;
    for (const auto& [name, value] : summary) fields.emplace_back(name, value);
    Log(LogLevel::kInfo, "starting", fields);
  }
  ServerOptions options;
  options.serving_on_start = false;  // SERVING once the layers are loaded
  options.listen = settings->String("listen");
  options.metrics_listen = settings->String("metrics-listen");
  options.admin_listen = settings->String("admin-listen");
  options.tls.cert_file = settings->String("tls-cert");
  options.tls.key_file = settings->String("tls-key");
  options.tls.client_ca_file = settings->String("tls-client-ca");
  options.tls.reload_s = static_cast<int>(settings->Int("tls-reload-s"));
  options.auth.data_token_file = settings->String("data-token-file");
  options.auth.admin_token_file = settings->String("admin-token-file");
  // A flag without its partner is bad usage (exit 2); a file that cannot be
  // read or used is a failed start (exit 1, from Start).
  if (options.tls.cert_file.empty() != options.tls.key_file.empty() ||
      (!options.tls.client_ca_file.empty() && options.tls.cert_file.empty())) {
    return Usage(CheckTlsFiles(options.tls).message());
  }
  options.engine.threads = static_cast<int>(settings->Int("threads"));
  options.engine.slots = static_cast<int>(settings->Int("compute-slots"));
  options.engine.max_batch_rows = settings->Int("max-batch-rows");
  options.engine.max_batch_delay_us = settings->Int("max-batch-delay-us");
  options.engine.max_queue_rows = settings->Int("max-queue-rows");
  options.engine.max_memory_bytes = static_cast<uint64_t>(settings->Int("max-memory-mb")) << 20;
  {
    auto precisions = PrecisionSet::Parse(settings->String("precisions"));
    if (!precisions.ok()) return Usage(precisions.status().message());  // checked by Parse
    options.engine.precisions = *precisions;
  }
  options.max_message_mb = static_cast<int>(settings->Int("max-message-mb"));
  options.max_stream_inflight = static_cast<int>(settings->Int("max-stream-inflight"));
  const int64_t drain_timeout_s = settings->Int("drain-timeout-s");
  auto mode = ParseQuantMode(absl::AsciiStrToLower(settings->String("mode")));
  if (!mode.ok()) return Usage(mode.status().message());
  auto params = MakeQuantParams(
      *mode, settings->IsSet("bits") ? std::optional<int>(settings->Int("bits")) : std::nullopt,
      settings->IsSet("group-size") ? std::optional<int>(settings->Int("group-size"))
                                    : std::nullopt);
  if (!params.ok()) return Usage(params.status().message());
  // The kernels read their cap (QLINEAR_SIMD) and strategy
  // (QLINEAR_KERNEL, core/kernels/qmm.h) once, from the environment: each
  // flag and its variable are one setting with one meaning (the flag wins),
  // checked above like every setting, so the checked value goes back into
  // the variable; the value that means "no choice" removes it.
  struct KernelSetting {
    const char* name;
    const char* variable;
    const char* none;
  };
  for (const KernelSetting& k : {KernelSetting{"simd", "QLINEAR_SIMD", "best"},
                                 KernelSetting{"kernel", "QLINEAR_KERNEL", "auto"}}) {
    if (!settings->IsSet(k.name)) continue;
    const std::string value = absl::AsciiStrToLower(settings->String(k.name));
    if (value == k.none) {
      unsetenv(k.variable);
    } else {
      setenv(k.variable, value.c_str(), 1);
    }
  }

  // Signals are taken synchronously by the main thread (sigwait), so every
  // other thread must start with them blocked. SIGHUP re-reads the token
  // files (one that arrives while the layers load waits until then).
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto server = QlinearServer::Start(options);
  if (!server.ok()) {
    Log(LogLevel::kError, "start_failed", {{"reason", server.status().message()}});
    return 1;
  }
  if ((*server)->metrics_port() != 0) {  // probes answer while the layers load
    std::printf("qlinear-server: metrics and health on http://%s (/metrics, /healthz, /readyz)\n",
                (*server)->metrics_address().c_str());
    std::fflush(stdout);
  }
  Engine& engine = (*server)->engine();
  StartupOptions startup;
  startup.models = settings->List("model");
  startup.checkpoint.float_params = *params;
  startup.state_dir = settings->String("state-dir");
  std::vector<std::string> notes;
  absl::Status loaded = LoadAtStart(&engine, startup, &notes);
  for (const std::string& note : notes) Log(LogLevel::kWarning, "startup_note", {{"note", note}});
  if (!loaded.ok()) {
    Log(LogLevel::kError, "start_failed", {{"reason", loaded.message()}});
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
    // Names come from clients (uploads kept in --state-dir): escaped as in
    // the log, so that none can forge a line.
    names.push_back(
        absl::StrCat(EscapeLogText(i.name), " [", i.n, "x", i.k, " ", i.params.ToString(), "]"));
  }
  // Who may call what, on which listener, over what: the end of the line.
  const QlinearServer& srv = **server;
  const bool tokens_in_clear = !options.tls.enabled() &&
                               (!options.auth.data_token_file.empty() ||
                                !options.auth.admin_token_file.empty());
  std::string security = absl::StrCat(DescribeTls(options.tls), ", ", srv.authorizer().Describe());
  if (!options.admin_listen.empty()) {
    absl::StrAppend(&security, ", admin plane only on ", srv.admin_address());
  }
  if (tokens_in_clear) absl::StrAppend(&security, ", WARNING: tokens cross the network in clear");
  std::printf(
      "qlinear-server listening on %s (metrics %s): %d threads, layers %s, max_batch_rows %lld, "
      "max_batch_delay_us %lld, max_queue_rows %lld, max_memory_mb %lld, precisions %s, %s; %s\n",
      (*server)->address().c_str(),
      (*server)->metrics_port() != 0 ? (*server)->metrics_address().c_str() : "off", engine.threads(), (names.empty() ? std::string("(none)") : absl::StrJoin(names, ", ")).c_str(),
      static_cast<long long>(options.engine.max_batch_rows),
      static_cast<long long>(options.engine.max_batch_delay_us),
      static_cast<long long>(options.engine.max_queue_rows),
      static_cast<long long>(settings->Int("max-memory-mb")),
      options.engine.precisions.ToString().c_str(), BuildInfo().c_str(), security.c_str());
  std::fflush(stdout);
  if (tokens_in_clear) {
    Log(LogLevel::kWarning, "tokens_in_clear",
        {{"reason", "token files are set without --tls-cert: tokens cross the network in clear"}});
  }
  // The same facts as the stdout line (which scripts wait for, in either
  // format), as an event of the log.
  Log(LogLevel::kInfo, "listening",
      {{"address", (*server)->address()},
       {"metrics", (*server)->metrics_port() != 0 ? (*server)->metrics_address() : ""},
       {"layers", entries.size()},
       {"simd_target", SimdTargetName(DefaultSimdTarget())},
       {"threads", engine.threads()},
       {"compute_slots", engine.slots()},
       {"precisions", options.engine.precisions.ToString()},
       {"build", BuildInfo()},
       {"admin", srv.admin_address()},
       {"security", security}});

  int sig = 0;
  while (sigwait(&signals, &sig) == 0 && sig == SIGHUP) {
    Log(LogLevel::kInfo, "sighup", {{"action", "re-reading the token files"}});
    (void)(*server)->ReloadTokens();  // logs its outcome; a failed file keeps its tokens
  }
  // --drain-delay-ms: not ready (503 on /readyz, NOT_SERVING on gRPC
  // health) but still serving, so that load balancers and endpoint
  // controllers stop choosing this replica before the drain stops
  // accepting. A second SIGINT/SIGTERM ends the delay at once.
  if (const int64_t delay_ms = settings->Int("drain-delay-ms"); delay_ms > 0) {
    (*server)->StopAdvertising();
    Log(LogLevel::kInfo, "drain_delay",
        {{"signal", sig == SIGINT ? "SIGINT" : "SIGTERM"}, {"ms", delay_ms}});
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(delay_ms);
    for (auto now = std::chrono::steady_clock::now(); now < until;
         now = std::chrono::steady_clock::now()) {
      const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(until - now).count();
      const timespec wait{static_cast<time_t>(left / 1000000000), static_cast<long>(left % 1000000000)};
      const int got = sigtimedwait(&signals, nullptr, &wait);
      if (got == SIGHUP) {
        (void)(*server)->ReloadTokens();
      } else if (got == SIGINT || got == SIGTERM) {
        sig = got;
        break;
      }
    }
  }
  const auto drain_start = std::chrono::steady_clock::now();
  Log(LogLevel::kInfo, "drain_started",
      {{"signal", sig == SIGINT ? "SIGINT" : "SIGTERM"},
       {"timeout_s", drain_timeout_s},
       {"in_flight", engine.unanswered()}});
  Engine::DrainCounts counts;
  const bool drained =
      (*server)->Shutdown(drain_start + std::chrono::seconds(drain_timeout_s), &counts);
  // Past the deadline the requests still queued were answered UNAVAILABLE.
  Log(drained ? LogLevel::kInfo : LogLevel::kWarning, "drain_finished",
      {{"timed_out", !drained},
       {"pending", counts.pending},
       {"answered", counts.answered},
       {"unavailable", counts.unavailable},
       {"refused", counts.refused},
       {"ms", std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::steady_clock::now() - drain_start)
                  .count()}});
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
