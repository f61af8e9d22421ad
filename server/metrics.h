// Metrics: the Prometheus rendering of an EngineSnapshot, built at scrape
// time. Nothing is registered or updated on the request path: the engine
// counts in its own lock-free counters, and each scrape turns one
// Engine::Snapshot() into prometheus-cpp MetricFamily values and serialises
// them in the text exposition format (version 0.0.4). The Stats RPC renders
// the same snapshot, so the two agree.
//
//   std::string text = RenderMetrics(MetricFamilies(engine.Snapshot(),
//                                                   ReadProcessMetrics(), "0.1.0"));
//
// Names follow Prometheus' conventions: counters end in `_total`, latency
// histograms are in seconds (`_seconds`, the engine's microsecond bucket
// bounds divided by 10^6), sizes are bytes. Label sets are bounded: `layer`
// takes the loaded layers' names and one fixed value, kNotLoadedLayer, for
// every request naming a layer that is not loaded; `code` and `outcome` are
// canonical status code names (at most 17); `origin` is builtin, model,
// upload or state. docs/api.md lists every family and counts the series.
//
// Thread safety: every function may be called from any thread.
#ifndef QLINEAR_SERVER_METRICS_H_
#define QLINEAR_SERVER_METRICS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "core/engine/snapshot.h"
#include "prometheus/metric_family.h"

namespace qlinear {

// The `layer` label of requests for a layer that is not loaded.
inline constexpr char kNotLoadedLayer[] = "(not loaded)";

// ProcessMetrics: what /proc says about this process.
struct ProcessMetrics {
  double cpu_seconds = 0;  // user + system
  uint64_t resident_bytes = 0;
  uint64_t virtual_bytes = 0;
  int64_t open_fds = 0;
  int64_t max_fds = 0;            // RLIMIT_NOFILE's soft limit
  double start_time_seconds = 0;  // since the Unix epoch
};

// ReadProcessMetrics reads /proc/self; a field it cannot read stays 0.
ProcessMetrics ReadProcessMetrics();

// MetricFamilies renders `snapshot` and `process`; `version` is
// qlinear_build_info's version label. A family with no series is left out.
std::vector<prometheus::MetricFamily> MetricFamilies(const EngineSnapshot& snapshot,
                                                     const ProcessMetrics& process,
                                                     absl::string_view version);

// RenderMetrics is the text exposition of `families`.
std::string RenderMetrics(const std::vector<prometheus::MetricFamily>& families);

// kMetricsContentType is the Content-Type of that text.
inline constexpr char kMetricsContentType[] = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace qlinear

#endif  // QLINEAR_SERVER_METRICS_H_
