// The operations port of the real server binary (--metrics-listen): a real
// Prometheus scraping it, promtool's lint, Stats against /metrics, /readyz
// and per-service gRPC health through loading and drain, and a label set
// that unknown layer names cannot grow.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "core/half.h"
#include "core/safetensors.h"
#include "tests/server_process.h"
#include "tests/test_util.h"

namespace qlinear {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;
using Serving = grpc::health::v1::HealthCheckResponse;
using Clock = std::chrono::steady_clock;

constexpr const char* kServices[] = {"", "qlinear.v1.Data", "qlinear.v1.Admin"};

template <typename T>
absl::Span<const uint8_t> Span(const std::vector<T>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(T)};
}

// ---- a minimal HTTP/1.0 GET over a socket (the server closes after it) ----

struct HttpResponse {
  int status = 0;  // 0: no answer
  std::string body;
};

HttpResponse HttpGet(int port, const std::string& path) {
  HttpResponse r;
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return r;
  timeval timeout{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  std::string raw;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
        static_cast<ssize_t>(request.size())) {
      char buf[65536];
      ssize_t n;
      while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) raw.append(buf, static_cast<size_t>(n));
    }
  }
  close(fd);
  const size_t space = raw.find(' ');
  const size_t end = raw.find("\r\n\r\n");
  if (space == std::string::npos || end == std::string::npos ||
      !absl::SimpleAtoi(raw.substr(space + 1, 3), &r.status)) {
    return HttpResponse{};
  }
  r.body = raw.substr(end + 4);
  return r;
}

std::string UrlEncode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      char hex[4];
      std::snprintf(hex, sizeof(hex), "%%%02X", c);
      out += hex;
    }
  }
  return out;
}

// Samples parses a text exposition: "name{labels}" -> value (comments out).
std::map<std::string, double> Samples(const std::string& text) {
  std::map<std::string, double> out;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (absl::StartsWith(line, "#")) continue;
    const size_t space = line.rfind(' ');
    double v = 0;
    EXPECT_TRUE(absl::SimpleAtod(line.substr(space + 1), &v)) << line;
    out[std::string(line.substr(0, space))] = v;
  }
  return out;
}

std::string Series(const std::string& name, const std::string& layer, const std::string& code) {
  return absl::StrCat(name, "{layer=\"", layer, "\",code=\"", code, "\"}");
}

// FindInPath is the path of `binary` on $PATH, or "".
std::string FindInPath(const std::string& binary) {
  const char* path = std::getenv("PATH");
  for (absl::string_view dir :
       absl::StrSplit(path ? path : "/usr/bin:/bin", ':', absl::SkipEmpty())) {
    const std::string candidate = absl::StrCat(dir, "/", binary);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

// WaitFor polls `done` every 20 ms until it holds or `limit` passes.
template <typename F>
bool WaitFor(F done, std::chrono::milliseconds limit = std::chrono::seconds(30)) {
  const auto end = Clock::now() + limit;
  while (!done()) {
    if (Clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

// MetricsPort reads the operations port from the server's start-up output
// (0 if it never appears or the server ends first).
int MetricsPort(ServerProcess& server) {
  // (No std::regex: GCC 12 warns inside it under the sanitizers.)
  const std::string line = "metrics and health on http://127.0.0.1:";
  int port = 0;
  WaitFor([&] {
    const std::string log = server.Log();
    const size_t at = log.find(line);
    if (at != std::string::npos) {
      const size_t from = at + line.size();
      const size_t to = log.find_first_not_of("0123456789", from);
      if (to != std::string::npos && to > from) port = std::stoi(log.substr(from, to - from));
    }
    return port != 0 || server.Exited();
  });
  return port;
}

// Prometheus: the real server, scraping one target every second, on a
// fresh TSDB; killed with the test.
class Prometheus {
 public:
  Prometheus(const std::string& binary, const ScopedTempDir& dir, int target_port)
      : port_(FreePort()) {
    const std::string config = dir.File("prometheus.yml");
    std::ofstream(config) << "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                          << "scrape_configs:\n  - job_name: qlinear\n    static_configs:\n"
                          << "      - targets: ['127.0.0.1:" << target_port << "']\n";
    log_ = dir.File("prometheus.log");
    std::vector<std::string> args = {
        binary, "--config.file=" + config, "--storage.tsdb.path=" + dir.File("tsdb"),
        absl::StrCat("--web.listen-address=127.0.0.1:", port_), "--log.level=warn"};
    pid_ = fork();
    if (pid_ == 0) {
      if (!freopen(log_.c_str(), "w", stdout)) _exit(126);
      dup2(fileno(stdout), fileno(stderr));
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(binary.c_str(), argv.data());
      _exit(127);
    }
  }
  ~Prometheus() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

  bool WaitReady() {
    return WaitFor([&] { return HttpGet(port_, "/-/ready").status == 200; },
                   std::chrono::seconds(60));
  }

  // Query runs an instant query; the result vector (empty on failure).
  nlohmann::json Query(const std::string& expr) {
    const HttpResponse r = HttpGet(port_, "/api/v1/query?query=" + UrlEncode(expr));
    if (r.status != 200) return nlohmann::json::array();
    nlohmann::json j = nlohmann::json::parse(r.body, nullptr, false);
    if (j.is_discarded() || j.value("status", "") != "success") return nlohmann::json::array();
    return j["data"]["result"];
  }

  // ByLabels maps the values of the given labels (joined by '|') to the
  // sample's value.
  std::map<std::string, double> ByLabels(const std::string& expr,
                                         const std::vector<std::string>& labels) {
    std::map<std::string, double> out;
    for (const auto& sample : Query(expr)) {
      std::string key;
      for (const std::string& l : labels) {
        if (!key.empty()) key += "|";
        key += sample["metric"].value(l, "");
      }
      double v = 0;
      EXPECT_TRUE(absl::SimpleAtod(sample["value"][1].get<std::string>(), &v));
      out[key] = v;
    }
    return out;
  }

  std::string Log() const { return ReadFileBytes(log_); }

 private:
  int port_;
  pid_t pid_ = -1;
  std::string log_;
};

double UnixNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

class OpsHttpTest : public ::testing::Test {
 protected:
  OpsHttpTest() : dir_("ops_http") {}

  // A server without the demo layer (an empty --state-dir), metrics on a
  // free port.
  void StartServer() {
    ServerProcess::Options options;
    options.log = dir_.File("server.log");
    server_ = std::make_unique<ServerProcess>(
        QLINEAR_SERVER_BINARY,
        std::vector<std::string>{"--threads", "2", "--state-dir", dir_.File("state"),
                                 "--metrics-listen", "127.0.0.1:0"},
        options);
    ASSERT_TRUE(server_->WaitServing()) << server_->Log();
    metrics_port_ = MetricsPort(*server_);
    ASSERT_NE(metrics_port_, 0) << server_->Log();
    client_ = Client::Connect(server_->target());
  }

  absl::Status Upload(const std::string& name, int64_t n) {
    v1::QuantizeHeader h;
    h.set_name(name);
    h.set_out_features(n);
    h.set_in_features(64);
    h.set_dtype(v1::F32);
    std::mt19937_64 rng(n);
    std::normal_distribution<float> normal(0.0f, 0.1f);
    std::vector<float> w(static_cast<size_t>(n * 64));
    for (float& v : w) v = normal(rng);
    return client_->Quantize(h, Span(w), {}).status();
  }

  absl::StatusCode Forward(const std::string& layer, int64_t rows, int64_t k,
                           int64_t extra_bytes = 0) {
    v1::ForwardRequest request;
    request.set_layer(layer);
    const std::vector<float> x(static_cast<size_t>(rows * k), 0.5f);
    request.mutable_input()->set_dtype(v1::F32);
    request.mutable_input()->add_shape(rows);
    request.mutable_input()->add_shape(k);
    std::string data(reinterpret_cast<const char*>(x.data()), x.size() * 4);
    data.resize(data.size() + static_cast<size_t>(extra_bytes));
    request.mutable_input()->set_data(data);
    return client_->Forward(request).status().code();
  }

  // The known mix: two uploaded layers (and one refused upload), then
  // OK, INVALID_ARGUMENT (in the engine and before it) and NOT_FOUND.
  void SendMix() {
    ASSERT_TRUE(Upload("a", 8).ok());
    ASSERT_TRUE(Upload("b", 16).ok());
    ASSERT_EQ(Upload("a", 8).code(), absl::StatusCode::kAlreadyExists);
    for (int i = 0; i < 5; ++i) ASSERT_EQ(Forward("a", 2, 64), absl::StatusCode::kOk);
    ASSERT_EQ(Forward("a", 2, 32), absl::StatusCode::kInvalidArgument);     // K mismatch
    ASSERT_EQ(Forward("a", 1, 64, 4), absl::StatusCode::kInvalidArgument);  // data size
    for (int i = 0; i < 3; ++i) ASSERT_EQ(Forward("b", 3, 64), absl::StatusCode::kOk);
    for (int i = 0; i < 4; ++i) {
      ASSERT_EQ(Forward(absl::StrCat("nope-", i), 1, 64), absl::StatusCode::kNotFound);
    }
  }

  // What SendMix sent, as "layer|code" -> requests and rows.
  const std::map<std::string, double> kRequests = {
      {"a|OK", 5}, {"a|INVALID_ARGUMENT", 2}, {"b|OK", 3}, {"(not loaded)|NOT_FOUND", 4}};
  const std::map<std::string, double> kRows = {{"a|OK", 10},
                                               {"a|INVALID_ARGUMENT", 2},  // 2 + 0 (unparsed)
                                               {"b|OK", 9},
                                               {"(not loaded)|NOT_FOUND", 4}};

  std::string Metrics() {
    HttpResponse r = HttpGet(metrics_port_, "/metrics");
    EXPECT_EQ(r.status, 200);
    return r.body;
  }

  ScopedTempDir dir_;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<Client> client_;
  int metrics_port_ = 0;
};

TEST_F(OpsHttpTest, PrometheusScrapesWhatWasSent) {
  const std::string binary = FindInPath("prometheus");
  if (binary.empty()) GTEST_SKIP() << "no prometheus binary on PATH (Debian package prometheus)";
  ASSERT_NO_FATAL_FAILURE(StartServer());
  Prometheus prometheus(binary, dir_, metrics_port_);
  ASSERT_TRUE(prometheus.WaitReady()) << prometheus.Log();
  ASSERT_NO_FATAL_FAILURE(SendMix());
  const double last_request = UnixNow();
  // A scrape that began after the last answer has every count.
  ASSERT_TRUE(WaitFor(
      [&] {
        auto t = prometheus.ByLabels("timestamp(qlinear_build_info)", {});
        return !t.empty() && t.begin()->second > last_request;
      },
      std::chrono::seconds(60)))
      << prometheus.Log();

  EXPECT_EQ(prometheus.ByLabels("up{job=\"qlinear\"}", {}),
            (std::map<std::string, double>{{"", 1}}));
  EXPECT_EQ(prometheus.ByLabels("qlinear_requests_total != 0", {"layer", "code"}), kRequests);
  EXPECT_EQ(prometheus.ByLabels("qlinear_rows_total != 0", {"layer", "code"}), kRows);
  for (const char* h :
       {"qlinear_queue_wait_seconds", "qlinear_compute_seconds", "qlinear_request_seconds"}) {
    SCOPED_TRACE(h);
    EXPECT_EQ(prometheus.ByLabels(absl::StrCat(h, "_count"), {"layer"}),
              (std::map<std::string, double>{{"a", 5}, {"b", 3}}));
  }
  EXPECT_EQ(prometheus.ByLabels("qlinear_uploads_total != 0", {"outcome"}),
            (std::map<std::string, double>{{"OK", 2}, {"ALREADY_EXISTS", 1}}));
  EXPECT_EQ(
      prometheus.ByLabels("qlinear_layers", {"origin"}),
      (std::map<std::string, double>{{"builtin", 0}, {"model", 0}, {"upload", 2}, {"state", 0}}));
}

TEST_F(OpsHttpTest, PromtoolFindsNothingToReport) {
  const std::string promtool = FindInPath("promtool");
  if (promtool.empty()) GTEST_SKIP() << "no promtool binary on PATH (Debian package prometheus)";
  ASSERT_NO_FATAL_FAILURE(StartServer());
  ASSERT_NO_FATAL_FAILURE(SendMix());
  const std::string exposition = dir_.File("metrics.txt"), report = dir_.File("promtool.txt");
  std::ofstream(exposition) << Metrics();
  const int status = std::system(
      absl::StrCat(promtool, " check metrics < ", exposition, " > ", report, " 2>&1").c_str());
  const std::string out = ReadFileBytes(report);
  EXPECT_EQ(status, 0) << out;
  EXPECT_EQ(out, "");
}

TEST_F(OpsHttpTest, StatsAndMetricsAgree) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  ASSERT_NO_FATAL_FAILURE(SendMix());
  auto stats = client_->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  const auto m = Samples(Metrics());
  auto at = [&](const std::string& series) {
    auto it = m.find(series);
    EXPECT_NE(it, m.end()) << series;
    return it == m.end() ? -1.0 : it->second;
  };

  ASSERT_EQ(stats->layers_size(), 2);
  size_t request_series = 0;
  for (const auto& [series, value] : m) {
    if (absl::StartsWith(series, "qlinear_requests_total{") && value != 0) ++request_series;
  }
  size_t stats_codes = 0;
  for (const v1::LayerStats& l : stats->layers()) {
    SCOPED_TRACE(l.name());
    for (const auto& [code, count] : l.requests_by_code()) {
      ++stats_codes;
      EXPECT_EQ(at(Series("qlinear_requests_total", l.name(), code)), count);
      EXPECT_EQ(at(Series("qlinear_rows_total", l.name(), code)), l.rows_by_code().at(code));
      EXPECT_EQ(count, kRequests.at(absl::StrCat(l.name(), "|", code)));
    }
    const std::string layer = absl::StrCat("{layer=\"", l.name(), "\"}");
    EXPECT_EQ(at("qlinear_batches_total" + layer), l.batches());
    EXPECT_EQ(at("qlinear_layer_bytes" + layer), l.bytes_held());
    const std::pair<const char*, const v1::Histogram*> histograms[] = {
        {"qlinear_batch_rows", &l.batch_rows()},
        {"qlinear_queue_wait_seconds", &l.queue_us()},
        {"qlinear_compute_seconds", &l.compute_us()},
        {"qlinear_request_seconds", &l.total_us()}};
    for (const auto& [name, h] : histograms) {
      SCOPED_TRACE(name);
      EXPECT_EQ(at(absl::StrCat(name, "_count", layer)), h->count());
      const double unit = absl::StrContains(name, "seconds") ? 1e6 : 1;
      EXPECT_NEAR(at(absl::StrCat(name, "_sum", layer)), h->mean() * h->count() / unit,
                  1e-9 + 1e-9 * h->mean() * h->count());
      // Buckets by their bound: the engine's, divided by the unit.
      const std::string prefix = absl::StrCat(name, "_bucket{layer=\"", l.name(), "\",le=\"");
      std::map<double, double> buckets;
      for (const auto& [series, value] : m) {
        if (!absl::StartsWith(series, prefix)) continue;
        const std::string le = series.substr(prefix.size(), series.size() - prefix.size() - 2);
        double bound = std::numeric_limits<double>::infinity();
        if (le != "+Inf") {
          EXPECT_TRUE(absl::SimpleAtod(le, &bound)) << series;
        }
        buckets[bound] = value;
      }
      ASSERT_EQ(buckets.size(), static_cast<size_t>(h->bounds_size()) + 1);
      uint64_t cumulative = 0;
      auto bucket = buckets.begin();
      for (int i = 0; i < h->bounds_size(); ++i, ++bucket) {
        cumulative += h->counts(i);
        EXPECT_NEAR(bucket->first, h->bounds(i) / unit, 1e-12 * h->bounds(i) / unit);
        EXPECT_EQ(bucket->second, cumulative);
      }
      EXPECT_EQ(bucket->second, h->count());  // +Inf
    }
  }
  const v1::ServerStats& s = stats->server();
  for (const auto& [code, count] : s.not_loaded_requests_by_code()) {
    ++stats_codes;
    EXPECT_EQ(at(Series("qlinear_requests_total", "(not loaded)", code)), count);
    EXPECT_EQ(at(Series("qlinear_rows_total", "(not loaded)", code)),
              s.not_loaded_rows_by_code().at(code));
  }
  EXPECT_EQ(request_series, stats_codes);  // nothing in one that the other lacks
  EXPECT_EQ(s.not_loaded_requests_by_code().at("NOT_FOUND"), 4u);
  for (const auto& [outcome, count] : s.uploads_by_code()) {
    EXPECT_EQ(at("qlinear_uploads_total{outcome=\"" + outcome + "\"}"), count);
  }
  EXPECT_EQ(s.uploads_by_code().at("ALREADY_EXISTS"), 1u);
  for (const auto& [origin, count] : s.layers_by_origin()) {
    EXPECT_EQ(at("qlinear_layers{origin=\"" + origin + "\"}"), count);
  }
  EXPECT_EQ(at("qlinear_bytes_held"), s.bytes_held());
  EXPECT_EQ(at("qlinear_memory_budget_bytes"), s.memory_budget_bytes());
  EXPECT_EQ(at("qlinear_rows_queued"), s.queue_rows());
  EXPECT_EQ(at("qlinear_threads"), s.threads());
  EXPECT_EQ(at("qlinear_build_info{version=\"0.1.0\",simd=\"" + s.simd_target() + "\"}"), 1);
  EXPECT_GT(at("process_resident_memory_bytes"), 0);
  EXPECT_GT(at("process_open_fds"), 0);
  EXPECT_GT(at("process_start_time_seconds"), UnixNow() - 3600);
  EXPECT_LE(at("process_start_time_seconds"), UnixNow() + 1);
}

TEST_F(OpsHttpTest, UnknownLayerNamesAddNoSeries) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  ASSERT_TRUE(Upload("a", 8).ok());
  ASSERT_EQ(Forward("a", 1, 64), absl::StatusCode::kOk);
  const auto before = Samples(Metrics());
  for (int i = 0; i < 50; ++i) {
    ASSERT_EQ(Forward(absl::StrCat("unknown-", i), 1, 64), absl::StatusCode::kNotFound);
  }
  const std::string text = Metrics();
  const auto after = Samples(text);
  std::set<std::string> before_names, after_names;
  for (const auto& [series, v] : before) {
    if (!absl::StartsWith(series, "process_")) before_names.insert(series);
  }
  for (const auto& [series, v] : after) {
    if (!absl::StartsWith(series, "process_")) after_names.insert(series);
  }
  EXPECT_EQ(after_names, before_names);
  EXPECT_THAT(text, ::testing::Not(HasSubstr("unknown-")));
  EXPECT_EQ(after.at(Series("qlinear_requests_total", "(not loaded)", "NOT_FOUND")), 50);
  EXPECT_EQ(after.at(Series("qlinear_rows_total", "(not loaded)", "NOT_FOUND")), 50);
}

TEST_F(OpsHttpTest, OtherPathsAndMethods) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  EXPECT_EQ(HttpGet(metrics_port_, "/healthz").body, "ok\n");
  EXPECT_EQ(HttpGet(metrics_port_, "/readyz").body, "ready\n");
  EXPECT_EQ(HttpGet(metrics_port_, "/metrics/x").status, 404);
  EXPECT_EQ(HttpGet(metrics_port_, "/").status, 404);
}

// A float16 [n, k] weight of finite values, written as `name`.weight.
void WriteFloatModel(const std::string& path, int64_t n, int64_t k) {
  std::mt19937_64 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<uint16_t> base(static_cast<size_t>(2 * k));
  for (uint16_t& h : base) h = FloatToHalfBits(normal(rng));
  std::vector<uint16_t> w(static_cast<size_t>(n * k));
  for (int64_t r = 0; r < n; ++r) {  // each row a different window of `base`
    std::copy_n(base.begin() + r % k, k, w.begin() + r * k);
  }
  TensorToWrite t{"big.weight", DType::kF16, {n, k}, Span(w)};
  ASSERT_TRUE(WriteSafetensors(path, {t}, {}).ok());
}

TEST_F(OpsHttpTest, ReadyzAndHealthFollowLoadingAndDrain) {
  constexpr int64_t kN = 8192, kK = 8192;  // a second or so to quantize on one thread
  // Sanitizer builds compute many times slower: the drain, and the drained
  // request's deadline below, allow this long.
  constexpr int kDrainTimeoutS = 300;
  const std::string model = dir_.File("big.safetensors");
  ASSERT_NO_FATAL_FAILURE(WriteFloatModel(model, kN, kK));
  ServerProcess::Options options;
  options.log = dir_.File("server.log");
  ServerProcess server(QLINEAR_SERVER_BINARY,
                       {"--threads", "1", "--model", model, "--metrics-listen", "127.0.0.1:0",
                        "--drain-timeout-s", std::to_string(kDrainTimeoutS)},
                       options);
  const int port = MetricsPort(server);
  ASSERT_NE(port, 0) << server.Log();

  // Loading: not ready, healthy, every gRPC service name NOT_SERVING.
  auto client = Client::Connect(server.target());
  int loading_probes = 0;
  bool checked_grpc = false;
  ASSERT_TRUE(WaitFor(
      [&] {
        const HttpResponse ready = HttpGet(port, "/readyz");
        EXPECT_EQ(HttpGet(port, "/healthz").status, 200);
        if (ready.status == 200) return true;
        EXPECT_EQ(ready.status, 503);
        EXPECT_THAT(ready.body, HasSubstr("loading"));
        if (ready.status == 503 && !checked_grpc) {
          std::vector<absl::StatusOr<Serving::ServingStatus>> health;
          for (const char* service : kServices) health.push_back(client->Health(service));
          // Still not ready after them: they were answered while loading
          // (health turns SERVING only after /readyz turns ready).
          if (HttpGet(port, "/readyz").status == 503) {
            for (size_t i = 0; i < health.size(); ++i) {
              EXPECT_TRUE(health[i].ok()) << "'" << kServices[i] << "': " << health[i].status();
              if (health[i].ok()) {
                EXPECT_EQ(*health[i], Serving::NOT_SERVING) << "'" << kServices[i] << "'";
              }
            }
            checked_grpc = true;
          }
        }
        ++loading_probes;
        return false;
      },
      std::chrono::seconds(120)))
      << server.Log();
  EXPECT_GT(loading_probes, 0) << "the model loaded before the first probe";
  EXPECT_TRUE(checked_grpc);
  // Health turns SERVING just after /readyz turned ready.
  for (const char* service : kServices) {
    absl::StatusOr<Serving::ServingStatus> h;
    EXPECT_TRUE(WaitFor([&] {
      h = client->Health(service);
      return h.ok() && *h == Serving::SERVING;
    })) << "'" << service << "': "
        << (h.ok() ? Serving::ServingStatus_Name(*h) : h.status().ToString());
  }

  // Drain: one accepted request of several batches is still computing when
  // SIGTERM arrives; readiness and health turn at once, the request ends
  // OK. Its size comes from a probe's time, so that it lasts about 2 s
  // whatever the build: ~0.1 s per 128-row batch in a release build, over
  // 60 s for 768 rows in an ASan build on an AVX2-only host.
  auto big_request = [&](int64_t rows) {
    v1::ForwardRequest request;
    request.set_layer("big");
    request.mutable_input()->set_dtype(v1::F16);
    request.mutable_input()->add_shape(rows);
    request.mutable_input()->add_shape(kK);
    const std::vector<uint16_t> x(static_cast<size_t>(rows * kK), FloatToHalfBits(0.25f));
    request.mutable_input()->set_data(x.data(), x.size() * 2);
    return request;
  };
  constexpr int64_t kProbeRows = 8;
  const auto probe_start = std::chrono::steady_clock::now();
  ASSERT_TRUE(client->Forward(big_request(kProbeRows)).ok());
  const double row_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - probe_start).count() /
      kProbeRows;
  // At least 2 batches of the default 128 rows, at most the 768 (6 batches)
  // that a fast build needs to be still computing at the checks below.
  const int64_t rows = std::clamp<int64_t>(static_cast<int64_t>(2.0 / row_s), 256, 768);
  Client::Options slow;
  slow.timeout = std::chrono::seconds(kDrainTimeoutS);
  auto patient = Client::Connect(server.target(), slow);
  std::atomic<bool> answered{false};
  absl::Status forward_status;
  std::thread forward([&] {
    auto r = patient->Forward(big_request(rows));
    forward_status = r.status();
    answered = true;
  });
  const bool admitted = WaitFor([&] {
    auto s = client->Stats("big");
    return answered || (s.ok() && s->server().queue_rows() > 0);
  });
  EXPECT_TRUE(admitted && !answered) << "the request was not seen queued";
  server.Signal(SIGTERM);
  HttpResponse ready;
  EXPECT_TRUE(WaitFor([&] {
    ready = HttpGet(port, "/readyz");
    return ready.status != 200;
  })) << server.Log();
  EXPECT_EQ(ready.status, 503);
  EXPECT_THAT(ready.body, HasSubstr("draining"));
  EXPECT_EQ(HttpGet(port, "/healthz").status, 200);
  for (const char* service : kServices) {
    auto h = client->Health(service);
    ASSERT_TRUE(h.ok()) << "'" << service << "': " << h.status();
    EXPECT_EQ(*h, Serving::NOT_SERVING) << "'" << service << "'";
  }
  EXPECT_FALSE(answered) << "the drain ended before readiness and health were checked";
  forward.join();
  EXPECT_TRUE(forward_status.ok()) << forward_status << " (" << rows << " rows)";
  int exit_status = -2;
  EXPECT_TRUE(server.WaitAtMost(std::chrono::seconds(60), &exit_status));
  EXPECT_EQ(exit_status, 0) << server.Log();
}

// --drain-delay-ms: after SIGTERM the replica says "draining" on /readyz and
// gRPC health but still answers new requests; a second SIGTERM ends the
// delay and the drain runs.
TEST_F(OpsHttpTest, DrainDelayKeepsServingWhileNotReady) {
  ServerProcess::Options options;
  options.log = dir_.File("server.log");
  ServerProcess server(QLINEAR_SERVER_BINARY,
                       {"--threads", "1", "--metrics-listen", "127.0.0.1:0",
                        "--drain-delay-ms", "600000"},
                       options);
  const int port = MetricsPort(server);
  ASSERT_NE(port, 0) << server.Log();
  ASSERT_TRUE(server.WaitServing()) << server.Log();
  auto client = Client::Connect(server.target());
  v1::ForwardRequest request;
  request.set_layer("demo");
  request.mutable_input()->set_dtype(v1::F32);
  request.mutable_input()->add_shape(1);
  request.mutable_input()->add_shape(4096);
  const std::vector<float> x(4096, 0.5f);
  request.mutable_input()->set_data(x.data(), x.size() * sizeof(float));
  auto before = client->Forward(request);
  ASSERT_TRUE(before.ok()) << before.status();

  server.Signal(SIGTERM);
  HttpResponse ready;
  ASSERT_TRUE(WaitFor([&] {
    ready = HttpGet(port, "/readyz");
    return ready.status != 200;
  })) << server.Log();
  EXPECT_EQ(ready.status, 503);
  EXPECT_THAT(ready.body, HasSubstr("draining"));
  for (const char* service : kServices) {
    auto h = client->Health(service);
    ASSERT_TRUE(h.ok()) << "'" << service << "': " << h.status();
    EXPECT_EQ(*h, Serving::NOT_SERVING) << "'" << service << "'";
  }
  // Still accepted and answered, the same bits as before.
  auto during = client->Forward(request);
  ASSERT_TRUE(during.ok()) << during.status();
  EXPECT_EQ(during->output().data(), before->output().data());
  EXPECT_THAT(server.Log(), HasSubstr("drain_delay"));
  EXPECT_THAT(server.Log(), Not(HasSubstr("drain_started")));

  server.Signal(SIGTERM);  // the second signal ends the 10-minute delay
  int exit_status = -2;
  EXPECT_TRUE(server.WaitAtMost(std::chrono::seconds(60), &exit_status));
  EXPECT_EQ(exit_status, 0) << server.Log();
  EXPECT_THAT(server.Log(), HasSubstr("drain_started"));
}

}  // namespace
}  // namespace qlinear
