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
#include "core/engine/upload.h"
#include "core/half.h"
#include "core/mlx_file.h"
#include "core/safetensors.h"
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
    "  --model FILE.safetensors  load a model (repeatable): MLX triplets as they are, float\n"
    "                            .weight tensors quantized with --bits/--group-size/--mode\n"
    "  --bits B --group-size G --mode affine|mxfp4|mxfp8|nvfp4   for float weights\n"
    "                            (default affine, MLX's defaults per mode)\n"
    "With no --model, serves layer 'demo': 4096x4096, affine b4 g64, seeded random float16\n"
    "weights.\n";

// The demo layer's weights are float16, as in most MLX models (and as in
// qlinear_kernel_bench), so its scales and biases are float16 too.
absl::Status LoadDemo(Engine* engine) {
  const int64_t n = 4096, k = 4096;
  std::mt19937_64 rng(0);
  std::normal_distribution<float> normal(0.0f, 1.0f / 64.0f);
  std::vector<uint16_t> w(static_cast<size_t>(n * k));
  for (uint16_t& v : w) v = FloatToHalfBits(normal(rng));
  auto q = Quantize({QuantMode::kAffine, 4, 64}, DType::kF16, w.data(), n, k);
  if (!q.ok()) return q.status();
  const ErrorReport report = ComputeErrorReport(*q, DType::kF16, w.data());
  return PublishQuantized(engine, "demo", *q, {}, report, false).status();
}

std::vector<float> BiasOf(const SafetensorsFile& file, const std::string& layer, int64_t n,
                          absl::Status* status) {
  const TensorInfo* b = file.Find(layer + ".bias");
  if (b == nullptr) return {};
  if (!IsFloatDType(b->dtype) || b->shape != std::vector<int64_t>{n}) {
    *status = absl::InvalidArgumentError(absl::StrCat(
        "'", layer, ".bias' must be a float vector [", n, "]; got ", DTypeName(b->dtype), " ",
        b->ShapeString()));
    return {};
  }
  std::vector<float> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[i] = LoadFloat(b->dtype, file.Data(*b).data(), i);
  return out;
}

absl::Status LoadModel(Engine* engine, const std::string& path, const QuantParams& params) {
  auto file = SafetensorsFile::Open(path);
  if (!file.ok()) return file.status();
  auto sources = QuantizationSources::Load(path, **file, {});
  if (!sources.ok()) return sources.status();
  for (const std::string& layer : FindQuantizedLayers(**file)) {
    auto p = ResolveLayerParams(**file, layer, *sources);
    if (!p.ok()) return p.status();
    auto q = LoadQuantizedLayer(**file, layer, *p);
    if (!q.ok()) return q.status();
    absl::Status bias_status;
    std::vector<float> bias = BiasOf(**file, layer, q->n, &bias_status);
    if (!bias_status.ok()) return bias_status;
    auto published = PublishQuantized(engine, layer, *q, std::move(bias), std::nullopt, false);
    if (!published.ok()) return published.status();
  }
  for (const FloatWeight& w : FindFloatWeights(**file, params)) {
    const TensorInfo& t = *w.tensor;
    const std::string& layer = w.layer;
    if (!w.skip_reason.empty()) {  // as mlx-lm leaves it
      std::fprintf(stderr, "qlinear-server: warning: '%s' %s not served: %s\n", t.name.c_str(),
                   t.ShapeString().c_str(), w.skip_reason.c_str());
      continue;
    }
    auto q = Quantize(params, t.dtype, (*file)->Data(t).data(), t.shape[0], t.shape[1]);
    if (!q.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("'", t.name, "': ", q.status().message()));
    }
    const ErrorReport report = ComputeErrorReport(*q, t.dtype, (*file)->Data(t).data());
    absl::Status bias_status;
    std::vector<float> bias = BiasOf(**file, layer, q->n, &bias_status);
    if (!bias_status.ok()) return bias_status;
    auto published = PublishQuantized(engine, layer, *q, std::move(bias), report, false);
    if (!published.ok()) return published.status();
  }
  return absl::OkStatus();
}

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
                             "drain-timeout-s", "bits", "group-size", "mode", "model"},
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
  absl::Status loaded = models.empty() ? LoadDemo(&engine) : absl::OkStatus();
  for (const std::string& m : models) {
    if (!loaded.ok()) break;
    loaded = LoadModel(&engine, m, *params);
    if (!loaded.ok()) loaded = absl::Status(loaded.code(), absl::StrCat("--model '", m, "': ", loaded.message()));
  }
  if (!loaded.ok()) {
    std::fprintf(stderr, "qlinear-server: %s\n", std::string(loaded.message()).c_str());
    return 1;
  }
  (*server)->SetServing(true);
  std::vector<std::string> names;
  for (const auto& e : engine.registry().List()) {
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
