#include "server/metrics.h"

#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "prometheus/text_serializer.h"

namespace qlinear {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

constexpr size_t kOk = static_cast<size_t>(absl::StatusCode::kOk);
constexpr size_t kNotFound = static_cast<size_t>(absl::StatusCode::kNotFound);

std::string CodeName(size_t code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

MetricFamily Family(std::string name, std::string help, MetricType type) {
  MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  return f;
}

ClientMetric Labelled(std::vector<ClientMetric::Label> labels) {
  ClientMetric m;
  m.label = std::move(labels);
  return m;
}

void AddCounter(MetricFamily& f, std::vector<ClientMetric::Label> labels, double value) {
  ClientMetric m = Labelled(std::move(labels));
  m.counter.value = value;
  f.metric.push_back(std::move(m));
}

void AddGauge(MetricFamily& f, std::vector<ClientMetric::Label> labels, double value) {
  ClientMetric m = Labelled(std::move(labels));
  m.gauge.value = value;
  f.metric.push_back(std::move(m));
}

// One series per code that has a count, and always `always` (so that a
// rate() has a zero to start from).
void AddByCode(MetricFamily& f, const std::string& layer, const CodeCounts& counts, size_t always) {
  for (size_t c = 0; c < counts.size(); ++c) {
    if (counts[c] == 0 && c != always) continue;
    AddCounter(f, {{"layer", layer}, {"code", CodeName(c)}}, static_cast<double>(counts[c]));
  }
}

// One series per precision, always (three at most: a bounded label set).
void AddByPrecision(MetricFamily& f, const std::string& layer,
                    const PrecisionCounter::Counts& counts) {
  for (size_t p = 0; p < counts.size(); ++p) {
    AddCounter(f, {{"layer", layer}, {"precision", std::string(PrecisionName(static_cast<Precision>(p)))}},
               static_cast<double>(counts[p]));
  }
}

// The engine's histogram with every bound and the sum divided by `unit`.
void AddHistogram(MetricFamily& f, const std::string& layer, const Histogram::Snapshot& h,
                  double unit) {
  ClientMetric m = Labelled({{"layer", layer}});
  m.histogram.sample_count = h.count;
  m.histogram.sample_sum = h.sum / unit;
  uint64_t cumulative = 0;
  for (size_t i = 0; i < h.counts.size(); ++i) {
    cumulative += h.counts[i];
    ClientMetric::Bucket b;
    b.cumulative_count = cumulative;
    b.upper_bound =
        i < h.bounds.size() ? h.bounds[i] / unit : std::numeric_limits<double>::infinity();
    m.histogram.bucket.push_back(b);
  }
  f.metric.push_back(std::move(m));
}

std::string ReadFile(const char* path) {
  std::ifstream in(path);
  std::stringstream b;
  b << in.rdbuf();
  return b.str();
}

}  // namespace

ProcessMetrics ReadProcessMetrics() {
  ProcessMetrics p;
  const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  // /proc/self/stat: "pid (comm) state ..."; comm may hold spaces, so the
  // fields are counted from the last ')': utime is field 14, stime 15,
  // starttime 22 (ticks since boot), vsize 23, rss 24 (pages).
  const std::string stat = ReadFile("/proc/self/stat");
  const size_t paren = stat.rfind(')');
  if (paren != std::string::npos && tick > 0) {
    std::vector<std::string> f =
        absl::StrSplit(absl::string_view(stat).substr(paren + 2), ' ', absl::SkipEmpty());
    auto field = [&](size_t n) {  // the field numbered n in proc(5)
      double v = 0;
      return n - 3 < f.size() && absl::SimpleAtod(f[n - 3], &v) ? v : 0.0;
    };
    p.cpu_seconds = (field(14) + field(15)) / tick;
    p.virtual_bytes = static_cast<uint64_t>(field(23));
    p.resident_bytes = static_cast<uint64_t>(field(24) * page);
    double boot = 0;
    for (absl::string_view line : absl::StrSplit(ReadFile("/proc/stat"), '\n')) {
      if (absl::ConsumePrefix(&line, "btime ")) {
        if (!absl::SimpleAtod(line, &boot)) boot = 0;
        break;
      }
    }
    if (boot > 0) p.start_time_seconds = boot + field(22) / tick;
  }
  std::error_code error;
  for (auto it = std::filesystem::directory_iterator("/proc/self/fd", error);
       !error && it != std::filesystem::directory_iterator(); it.increment(error)) {
    ++p.open_fds;
  }
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0) p.max_fds = static_cast<int64_t>(limit.rlim_cur);
  return p;
}

std::vector<MetricFamily> MetricFamilies(const EngineSnapshot& s, const ProcessMetrics& process,
                                         absl::string_view version) {
  MetricFamily requests =
      Family("qlinear_requests_total",
             "Forward requests by layer and the code they were answered with", MetricType::Counter);
  MetricFamily rows =
      Family("qlinear_rows_total", "Input rows of Forward requests by layer and code",
             MetricType::Counter);
  MetricFamily by_precision = Family(
      "qlinear_requests_by_precision_total",
      "Forward requests answered OK by layer and the precision that ran (exact, int8, bf16)",
      MetricType::Counter);
  MetricFamily rows_by_precision = Family(
      "qlinear_rows_by_precision_total",
      "Input rows of Forward requests answered OK by layer and the precision that ran",
      MetricType::Counter);
  MetricFamily batches =
      Family("qlinear_batches_total", "Batches computed by layer", MetricType::Counter);
  MetricFamily batch_rows =
      Family("qlinear_batch_rows", "Rows per computed batch, by layer", MetricType::Histogram);
  MetricFamily queue = Family("qlinear_queue_wait_seconds",
                              "Time from admission to a request's first batch (or its answer)",
                              MetricType::Histogram);
  MetricFamily compute =
      Family("qlinear_compute_seconds",
             "Matrix-product time of OK requests (their batches' compute)", MetricType::Histogram);
  MetricFamily total = Family("qlinear_request_seconds",
                              "Time from admission to the answer of requests the engine accepted",
                              MetricType::Histogram);
  MetricFamily layer_bytes = Family(
      "qlinear_layer_bytes", "Bytes the current version of each layer holds", MetricType::Gauge);
  constexpr double kMicros = 1e6;
  for (const LayerSnapshot& l : s.layers) {
    const std::string& name = l.info.name;
    AddByCode(requests, name, l.requests, kOk);
    AddByCode(rows, name, l.rows, kOk);
    AddByPrecision(by_precision, name, l.requests_by_precision);
    AddByPrecision(rows_by_precision, name, l.rows_by_precision);
    AddCounter(batches, {{"layer", name}}, static_cast<double>(l.batches));
    AddHistogram(batch_rows, name, l.batch_rows, 1);
    AddHistogram(queue, name, l.queue_us, kMicros);
    AddHistogram(compute, name, l.compute_us, kMicros);
    AddHistogram(total, name, l.total_us, kMicros);
    AddGauge(layer_bytes, {{"layer", name}}, static_cast<double>(l.info.bytes_held));
  }
  AddByCode(requests, kNotLoadedLayer, s.not_loaded_requests, kNotFound);
  AddByCode(rows, kNotLoadedLayer, s.not_loaded_rows, kNotFound);

  MetricFamily uploads = Family(
      "qlinear_uploads_total",
      "Upload streams (Quantize, LoadQuantized) by the code they ended with", MetricType::Counter);
  for (size_t c = 0; c < s.uploads.size(); ++c) {
    if (s.uploads[c] == 0 && c != kOk) continue;
    AddCounter(uploads, {{"outcome", CodeName(c)}}, static_cast<double>(s.uploads[c]));
  }
  MetricFamily refusals = Family(
      "qlinear_auth_refusals_total",
      "Calls refused for their token, by plane (data, admin) and code", MetricType::Counter);
  for (auto [plane, counts] : {std::pair{"data", &s.data_refusals},
                               std::pair{"admin", &s.admin_refusals}}) {
    for (size_t c = 0; c < counts->size(); ++c) {
      if ((*counts)[c] == 0) continue;
      AddCounter(refusals, {{"plane", plane}, {"code", CodeName(c)}},
                 static_cast<double>((*counts)[c]));
    }
  }
  MetricFamily malformed = Family(
      "qlinear_malformed_requests_total",
      "Requests whose bytes did not parse, by RPC (counted, not logged)", MetricType::Counter);
  for (const auto& [rpc, n] : s.malformed_requests) {
    AddCounter(malformed, {{"rpc", rpc}}, static_cast<double>(n));
  }
  MetricFamily layers =
      Family("qlinear_layers", "Layers loaded now, by where they came from", MetricType::Gauge);
  for (int kind = 0; kind < kOriginKinds; ++kind) {
    AddGauge(layers, {{"origin", std::string(OriginKindName(static_cast<OriginKind>(kind)))}},
             static_cast<double>(s.layers_by_origin[static_cast<size_t>(kind)]));
  }
  auto gauge = [](const char* name, const char* help, double value) {
    MetricFamily f = Family(name, help, MetricType::Gauge);
    AddGauge(f, {}, value);
    return f;
  };
  auto counter = [](const char* name, const char* help, double value) {
    MetricFamily f = Family(name, help, MetricType::Counter);
    AddCounter(f, {}, value);
    return f;
  };
  MetricFamily build = Family(
      "qlinear_build_info", "Always 1: the server's version and kernel target", MetricType::Gauge);
  AddGauge(build, {{"version", std::string(version)}, {"simd", s.simd_target}}, 1);

  std::vector<MetricFamily> out;
  for (MetricFamily* f : {&requests, &rows, &by_precision, &rows_by_precision, &batches, &batch_rows, &queue, &compute, &total,
                          &layer_bytes, &uploads, &refusals, &malformed, &layers, &build}) {
    if (!f->metric.empty()) out.push_back(std::move(*f));
  }
  out.push_back(gauge("qlinear_bytes_held", "Bytes every live layer version holds",
                      static_cast<double>(s.bytes_held)));
  out.push_back(gauge("qlinear_memory_budget_bytes",
                      "Bytes layers may hold (--max-memory-mb); 0 means unlimited",
                      static_cast<double>(s.memory_budget_bytes)));
  out.push_back(gauge("qlinear_rows_queued", "Rows waiting for a batch, over all layers",
                      static_cast<double>(s.rows_queued)));
  out.push_back(gauge("qlinear_batches_in_flight", "Batches being computed now",
                      static_cast<double>(s.batches_in_flight)));
  out.push_back(gauge("qlinear_threads", "Compute threads", s.threads));
  out.push_back(counter("process_cpu_seconds_total", "User and system CPU time spent in seconds",
                        process.cpu_seconds));
  out.push_back(gauge("process_resident_memory_bytes", "Resident memory size in bytes",
                      static_cast<double>(process.resident_bytes)));
  out.push_back(gauge("process_virtual_memory_bytes", "Virtual memory size in bytes",
                      static_cast<double>(process.virtual_bytes)));
  out.push_back(gauge("process_open_fds", "Number of open file descriptors",
                      static_cast<double>(process.open_fds)));
  out.push_back(gauge("process_max_fds", "Maximum number of open file descriptors",
                      static_cast<double>(process.max_fds)));
  out.push_back(gauge("process_start_time_seconds",
                      "Start time of the process since the Unix epoch in seconds",
                      process.start_time_seconds));
  return out;
}

std::string RenderMetrics(const std::vector<MetricFamily>& families) {
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace qlinear
