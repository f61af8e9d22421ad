// The Prometheus rendering of a snapshot: names, labels, units, buckets.
#include "server/metrics.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>
#include <string>

namespace qlinear {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr size_t Code(absl::StatusCode code) { return static_cast<size_t>(code); }

Histogram::Snapshot Micros() {
  Histogram::Snapshot h;
  h.bounds = {1, 2, 5};
  h.counts = {1, 0, 2, 1};
  h.count = 4;
  h.sum = 2'000'010;  // µs
  return h;
}

EngineSnapshot OneLayer(const std::string& name) {
  EngineSnapshot s;
  LayerSnapshot l;
  l.info.name = name;
  l.info.bytes_held = 4096;
  l.requests[Code(absl::StatusCode::kOk)] = 4;
  l.rows[Code(absl::StatusCode::kOk)] = 9;
  l.requests[Code(absl::StatusCode::kDeadlineExceeded)] = 1;
  l.rows[Code(absl::StatusCode::kDeadlineExceeded)] = 3;
  l.requests_by_precision[static_cast<size_t>(Precision::kExact)] = 3;
  l.rows_by_precision[static_cast<size_t>(Precision::kExact)] = 5;
  l.requests_by_precision[static_cast<size_t>(Precision::kInt8)] = 1;
  l.rows_by_precision[static_cast<size_t>(Precision::kInt8)] = 4;
  l.batches = 3;
  l.batch_rows = Micros();
  l.queue_us = l.compute_us = l.total_us = Micros();
  s.layers.push_back(l);
  s.layer_count = 1;
  s.layers_by_origin[static_cast<size_t>(OriginKind::kState)] = 1;
  s.bytes_held = 4096;
  s.simd_target = "avx2";
  s.not_loaded_requests[Code(absl::StatusCode::kNotFound)] = 7;
  s.not_loaded_rows[Code(absl::StatusCode::kNotFound)] = 8;
  return s;
}

TEST(MetricsTest, RendersNamesLabelsAndSeconds) {
  const std::string text = RenderMetrics(MetricFamilies(OneLayer("a"), {}, "9.9.9"));
  for (const char* line : {
           "# TYPE qlinear_requests_total counter",
           "qlinear_requests_total{layer=\"a\",code=\"OK\"} 4",
           "qlinear_requests_total{layer=\"a\",code=\"DEADLINE_EXCEEDED\"} 1",
           "qlinear_requests_total{layer=\"(not loaded)\",code=\"NOT_FOUND\"} 7",
           "qlinear_rows_total{layer=\"a\",code=\"DEADLINE_EXCEEDED\"} 3",
           "qlinear_rows_total{layer=\"(not loaded)\",code=\"NOT_FOUND\"} 8",
           "qlinear_batches_total{layer=\"a\"} 3",
           "# TYPE qlinear_requests_by_precision_total counter",
           "qlinear_requests_by_precision_total{layer=\"a\",precision=\"exact\"} 3",
           "qlinear_requests_by_precision_total{layer=\"a\",precision=\"int8\"} 1",
           "qlinear_requests_by_precision_total{layer=\"a\",precision=\"bf16\"} 0",
           "qlinear_rows_by_precision_total{layer=\"a\",precision=\"exact\"} 5",
           "qlinear_rows_by_precision_total{layer=\"a\",precision=\"int8\"} 4",
           "# TYPE qlinear_queue_wait_seconds histogram",
           "qlinear_queue_wait_seconds_bucket{layer=\"a\",le=\"1e-06\"} 1",
           "qlinear_queue_wait_seconds_bucket{layer=\"a\",le=\"2e-06\"} 1",
           "qlinear_compute_seconds_bucket{layer=\"a\",le=\"5e-06\"} 3",
           "qlinear_request_seconds_bucket{layer=\"a\",le=\"+Inf\"} 4",
           "qlinear_request_seconds_count{layer=\"a\"} 4",
           "qlinear_request_seconds_sum{layer=\"a\"} 2.00001",
           "qlinear_batch_rows_bucket{layer=\"a\",le=\"5\"} 3",  // rows: no unit
           "qlinear_batch_rows_sum{layer=\"a\"} 2000010",
           "qlinear_layer_bytes{layer=\"a\"} 4096",
           "qlinear_bytes_held 4096",
           "qlinear_layers{origin=\"state\"} 1",
           "qlinear_layers{origin=\"builtin\"} 0",
           "qlinear_uploads_total{outcome=\"OK\"} 0",
           "qlinear_build_info{version=\"9.9.9\",simd=\"avx2\"} 1",
           "# TYPE process_cpu_seconds_total counter",
           "process_open_fds 0",
       }) {
    EXPECT_THAT(text, HasSubstr(std::string(line) + "\n"));
  }
  // Codes that never happened have no series (but OK and, for names not
  // loaded, NOT_FOUND always do).
  EXPECT_THAT(text, Not(HasSubstr("code=\"CANCELLED\"")));
}

// Calls refused for their token, by plane and code; planes without
// refusals have no series.
TEST(MetricsTest, AuthRefusalsByPlaneAndCode) {
  EngineSnapshot s;
  s.data_refusals[static_cast<size_t>(absl::StatusCode::kUnauthenticated)] = 3;
  s.admin_refusals[static_cast<size_t>(absl::StatusCode::kPermissionDenied)] = 2;
  const std::string text = RenderMetrics(MetricFamilies(s, ProcessMetrics(), "v"));
  EXPECT_THAT(text, HasSubstr("# TYPE qlinear_auth_refusals_total counter"));
  EXPECT_THAT(text,
              HasSubstr("qlinear_auth_refusals_total{plane=\"data\",code=\"UNAUTHENTICATED\"} 3"));
  EXPECT_THAT(text,
              HasSubstr("qlinear_auth_refusals_total{plane=\"admin\",code=\"PERMISSION_DENIED\"} 2"));
  EXPECT_THAT(text, Not(HasSubstr("plane=\"data\",code=\"PERMISSION_DENIED\"")));
}

// Issue 14: malformed requests are counted by RPC, not logged.
TEST(MetricsTest, CountsMalformedRequestsByRpc) {
  EngineSnapshot s = OneLayer("a");
  s.malformed_requests["Forward"] = 2;
  s.malformed_requests["Quantize"] = 1;
  const std::string text = RenderMetrics(MetricFamilies(s, {}, "1"));
  EXPECT_THAT(text, HasSubstr("qlinear_malformed_requests_total{rpc=\"Forward\"} 2"));
  EXPECT_THAT(text, HasSubstr("qlinear_malformed_requests_total{rpc=\"Quantize\"} 1"));
}

TEST(MetricsTest, EscapesLayerNames) {
  const std::string text = RenderMetrics(MetricFamilies(OneLayer("we\"ird\\na\nme"), {}, "1"));
  EXPECT_THAT(text, HasSubstr("qlinear_layer_bytes{layer=\"we\\\"ird\\\\na\\nme\"} 4096\n"));
}

TEST(MetricsTest, SeriesPerLayerIsFixed) {
  // What docs/api.md promises for one layer that has answered only OK.
  EngineSnapshot none = OneLayer("a");
  none.layers.clear();
  EngineSnapshot one = OneLayer("a");
  LayerSnapshot& l = one.layers[0];
  l.requests = {};
  l.rows = {};
  l.requests_by_precision = {};
  l.rows_by_precision = {};
  const LayerStats fresh;  // the engine's real bucket bounds
  l.batch_rows = fresh.batch_rows.Read();
  l.queue_us = fresh.queue_us.Read();
  l.compute_us = fresh.compute_us.Read();
  l.total_us = fresh.total_us.Read();
  auto count = [](const EngineSnapshot& s) {
    size_t series = 0;
    for (const auto& f : MetricFamilies(s, {}, "1")) {
      for (const auto& m : f.metric) {
        series += f.type == prometheus::MetricType::Histogram ? m.histogram.bucket.size() + 2 : 1;
      }
    }
    return series;
  };
  // requests and rows (OK), batches, bytes: 4; requests and rows by
  // precision: 2 x 3; batch rows 17 bounds + Inf + sum + count: 20; three
  // latency histograms of 25 bounds: 3 x 28.
  EXPECT_EQ(count(one) - count(none), 4u + 6u + 20u + 3u * 28u);
}

}  // namespace
}  // namespace qlinear
