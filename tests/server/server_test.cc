// Integration tests: a real server on an ephemeral loopback port, driven
// through qlinear::Client.
#include <dirent.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "proto/wire.h"
#include "core/half.h"
#include "core/kernels/qmm.h"
#include "core/quantize.h"
#include "core/safetensors.h"
#include "server/server.h"
#include "tests/server_process.h"
#include "tests/test_util.h"

namespace qlinear {
namespace {

using ::testing::HasSubstr;

template <typename T>
absl::Span<const uint8_t> Span(const std::vector<T>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(T)};
}



class ServerTest : public ::testing::Test {
 protected:
  void StartServer(Engine::Options engine = {}) {
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    engine.threads = engine.threads ? engine.threads : 2;
    options.engine = engine;
    auto server = QlinearServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    client_ = Client::Connect(server_->address());
  }

  std::vector<float> RandomFloats(size_t count, uint64_t seed, float scale = 1.0f) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, scale);
    std::vector<float> v(count);
    for (float& f : v) f = normal(rng);
    return v;
  }

  v1::QuantizeHeader Header(const std::string& name, int64_t n, int64_t k, bool bias = false,
                            bool replace = false) {
    v1::QuantizeHeader h;
    h.set_name(name);
    h.set_out_features(n);
    h.set_in_features(k);
    h.set_dtype(v1::F32);
    h.set_has_bias(bias);
    h.set_replace(replace);
    return h;
  }

  absl::StatusOr<v1::LayerInfo> Upload(const std::string& name, int64_t n, int64_t k,
                                       uint64_t seed, bool replace = false) {
    const std::vector<float> w = RandomFloats(static_cast<size_t>(n * k), seed, 0.05f);
    return client_->Quantize(Header(name, n, k, false, replace), Span(w), {});
  }

  v1::ForwardRequest ForwardF32(const std::string& layer, const std::vector<float>& x, int64_t rows,
                                int64_t k) {
    v1::ForwardRequest r;
    r.set_layer(layer);
    r.mutable_input()->set_dtype(v1::F32);
    r.mutable_input()->add_shape(rows);
    r.mutable_input()->add_shape(k);
    r.mutable_input()->set_data(reinterpret_cast<const char*>(x.data()), static_cast<size_t>(rows * k) * 4);
    return r;
  }

  // CodeCount polls Stats (bounded, 2 s) until `layer` has answered `code`
  // at least once, and returns that count.
  uint64_t CodeCount(const std::string& layer, const std::string& code) {
    for (int i = 0; i < 200; ++i) {
      auto stats = client_->Stats(layer);
      if (stats.ok() && stats->layers(0).requests_by_code().count(code)) {
        return stats->layers(0).requests_by_code().at(code);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return 0;
  }

  std::unique_ptr<QlinearServer> server_;
  std::unique_ptr<Client> client_;
};

std::vector<float> Floats(const SafetensorsFile& f, const std::string& name) {
  const TensorInfo* t = f.Find(name);
  std::vector<float> out;
  for (int64_t i = 0; i < t->elements(); ++i) out.push_back(LoadFloat(t->dtype, f.Data(*t).data(), i));
  return out;
}

std::string Str(absl::Span<const uint8_t> s) { return std::string(reinterpret_cast<const char*>(s.data()), s.size()); }

// Every golden file, uploaded through Quantize (from w) and LoadQuantized
// (from wq/scales/biases), answers Forward within the core tolerances; Stats
// counts exactly what was sent.
TEST_F(ServerTest, GoldenFilesThroughQuantizeAndLoadQuantized) {
  StartServer();
  std::vector<std::string> files;
  DIR* dir = opendir(GoldenDir().c_str());
  ASSERT_NE(dir, nullptr) << GoldenDir();
  while (dirent* e = readdir(dir)) {
    if (absl::EndsWith(e->d_name, ".safetensors")) files.push_back(e->d_name);
  }
  closedir(dir);
  ASSERT_EQ(files.size(), 76u);
  uint64_t requests = 0, rows = 0;
  std::map<std::string, std::pair<uint64_t, uint64_t>> per_layer;
  for (const std::string& name : files) {
    auto file = SafetensorsFile::Open(GoldenDir() + "/" + name);
    ASSERT_TRUE(file.ok()) << file.status();
    const auto& meta = (*file)->metadata();
    auto mode = ParseQuantMode(meta.at("mode"));
    ASSERT_TRUE(mode.ok());
    int bits = 0, gs = 0;
    ASSERT_TRUE(absl::SimpleAtoi(meta.at("bits"), &bits));
    ASSERT_TRUE(absl::SimpleAtoi(meta.at("group_size"), &gs));
    const TensorInfo* w = (*file)->Find("w");
    const TensorInfo* x = (*file)->Find("x");
    const int64_t n = w->shape[0], k = w->shape[1], m = x->shape[0];
    v1::QuantSpec spec;
    spec.set_mode(ToProto(*mode));
    spec.set_bits(bits);
    spec.set_group_size(gs);

    v1::QuantizeHeader qh;
    qh.set_name("q/" + name);
    qh.set_out_features(n);
    qh.set_in_features(k);
    qh.set_dtype(ToProto(w->dtype));
    *qh.mutable_spec() = spec;
    auto qi = client_->Quantize(qh, (*file)->Data(*w), {});
    ASSERT_TRUE(qi.ok()) << name << ": " << qi.status();
    EXPECT_TRUE(qi->has_error_report());

    v1::LoadQuantizedHeader lh;
    lh.set_name("l/" + name);
    lh.set_out_features(n);
    lh.set_in_features(k);
    *lh.mutable_spec() = spec;
    const TensorInfo* s = (*file)->Find("scales");
    lh.set_scales_dtype(ToProto(s->dtype));
    const TensorInfo* b = (*file)->Find("biases");
    auto li = client_->LoadQuantized(lh, (*file)->Data(*(*file)->Find("wq")), (*file)->Data(*s),
                                     b ? (*file)->Data(*b) : absl::Span<const uint8_t>(), {});
    ASSERT_TRUE(li.ok()) << name << ": " << li.status();

    const std::vector<float> mlx_y = Floats(**file, "y");
    const std::vector<float> exact = Floats(**file, "y_f32ref");
    for (const std::string& layer : {"q/" + name, "l/" + name}) {
      v1::ForwardRequest req;
      req.set_layer(layer);
      req.mutable_input()->set_dtype(ToProto(x->dtype));
      req.mutable_input()->add_shape(m);
      req.mutable_input()->add_shape(k);
      req.mutable_input()->set_data(Str((*file)->Data(*x)));
      req.set_request_id("id-" + layer);
      auto resp = client_->Forward(req);
      ASSERT_TRUE(resp.ok()) << layer << ": " << resp.status();
      EXPECT_EQ(resp->request_id(), "id-" + layer);
      ASSERT_EQ(resp->output().dtype(), ToProto(x->dtype));
      ASSERT_EQ(resp->output().shape_size(), 2);
      EXPECT_EQ(resp->output().shape(1), n);
      std::vector<float> y;
      const DType yd = x->dtype;
      for (int64_t i = 0; i < m * n; ++i) {
        y.push_back(LoadFloat(yd, resp->output().data().data(), i));
        ASSERT_TRUE(std::isfinite(y.back())) << layer;
      }
      if (yd == DType::kF32) {
        EXPECT_LE(NormalisedError(y, mlx_y), 1e-5) << layer;
      } else if (!absl::StartsWith(name, "edge_f16range")) {
        EXPECT_LE(NormalisedError(y, exact), NormalisedError(mlx_y, exact)) << layer;
      }
      ++requests;
      rows += m;
      per_layer[layer] = {1, m};
    }
  }
  auto stats = client_->Stats();
  ASSERT_TRUE(stats.ok());
  uint64_t got_requests = 0, got_rows = 0;
  for (const v1::LayerStats& l : stats->layers()) {
    const auto want = per_layer.at(l.name());
    EXPECT_EQ(l.requests_by_code().at("OK"), want.first) << l.name();
    EXPECT_EQ(l.rows_by_code().at("OK"), want.second) << l.name();
    got_requests += l.requests_by_code().at("OK");
    got_rows += l.rows_by_code().at("OK");
  }
  EXPECT_EQ(got_requests, requests);
  EXPECT_EQ(got_rows, rows);
  EXPECT_EQ(stats->server().layers(), 152);
}

// 64 concurrent clients with distinct single rows each get their own row,
// bit-identical to the row sent alone, and batches of more than one row form.
TEST_F(ServerTest, ConcurrentClientsAreBatchedAndExact) {
  StartServer({.max_batch_rows = 64, .max_batch_delay_us = 2000});
  ASSERT_TRUE(Upload("l", 256, 512, 1).ok());
  const int kClients = 64;
  const std::vector<float> x = RandomFloats(kClients * 512, 2);
  std::vector<std::string> alone(kClients), together(kClients);
  for (int c = 0; c < kClients; ++c) {
    auto r = client_->Forward(ForwardF32("l", std::vector<float>(x.begin() + c * 512, x.begin() + (c + 1) * 512), 1, 512));
    ASSERT_TRUE(r.ok());
    alone[c] = r->output().data();
  }
  std::vector<std::thread> threads;
  std::atomic<int64_t> biggest{0};
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      auto r = client_->Forward(ForwardF32("l", std::vector<float>(x.begin() + c * 512, x.begin() + (c + 1) * 512), 1, 512));
      if (!r.ok()) return;
      together[c] = r->output().data();
      int64_t b = r->timing().batch_rows();
      int64_t cur = biggest.load();
      while (b > cur && !biggest.compare_exchange_weak(cur, b)) {}
    });
  }
  for (auto& t : threads) t.join();
  for (int c = 0; c < kClients; ++c) EXPECT_EQ(together[c], alone[c]) << "client " << c;
  EXPECT_GT(biggest.load(), 1);
  auto stats = client_->Stats("l");
  ASSERT_TRUE(stats.ok());
  EXPECT_GT(stats->layers(0).batch_rows().max(), 1);
  EXPECT_EQ(stats->layers(0).requests_by_code().at("OK"), 2u * kClients);
}

TEST_F(ServerTest, ReplaceAndUnloadUnderLoad) {
  StartServer({.max_batch_rows = 32});
  auto v1info = Upload("l", 128, 256, 3);
  ASSERT_TRUE(v1info.ok());
  const std::vector<float> x = RandomFloats(256, 4);
  auto a = client_->Forward(ForwardF32("l", x, 1, 256));
  ASSERT_TRUE(a.ok());
  std::atomic<bool> stop{false};
  std::atomic<int> mixed{0}, old_seen{0}, new_seen{0}, not_found{0}, other{0};
  std::string new_answer;
  std::mutex mu;
  std::vector<std::thread> clients;
  for (int c = 0; c < 32; ++c) {
    clients.emplace_back([&] {
      while (!stop) {
        auto r = client_->Forward(ForwardF32("l", x, 1, 256));
        if (!r.ok()) {
          (r.status().code() == absl::StatusCode::kNotFound ? not_found : other)++;
          continue;
        }
        if (r->layer_version() == v1info->version()) {
          (r->output().data() == a->output().data() ? old_seen : mixed)++;
        } else {
          std::lock_guard<std::mutex> lock(mu);
          if (new_answer.empty()) new_answer = r->output().data();
          (r->output().data() == new_answer ? new_seen : mixed)++;
        }
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(150));  // load, not timing
  auto v2info = Upload("l", 128, 256, 5, /*replace=*/true);
  ASSERT_TRUE(v2info.ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  ASSERT_TRUE(client_->Unload("l").ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  stop = true;
  for (auto& t : clients) t.join();
  EXPECT_EQ(mixed.load(), 0);
  EXPECT_EQ(other.load(), 0);
  EXPECT_GT(old_seen.load(), 0);
  EXPECT_GT(new_seen.load(), 0);
  EXPECT_GT(not_found.load(), 0);
  // The new version's answer is what a fresh upload of the same weights gives.
  auto v3 = Upload("again", 128, 256, 5);
  ASSERT_TRUE(v3.ok());
  auto fresh = client_->Forward(ForwardF32("again", x, 1, 256));
  ASSERT_TRUE(fresh.ok());
  EXPECT_EQ(fresh->output().data(), new_answer);
  EXPECT_EQ(client_->Forward(ForwardF32("l", x, 1, 256)).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ServerTest, ErrorsMapToPreciseCodes) {
  StartServer({.max_queue_rows = 64, .max_memory_bytes = 8 << 20});
  ASSERT_TRUE(Upload("l", 64, 128, 6).ok());
  const std::vector<float> x = RandomFloats(128 * 100, 7);
  auto code = [](const auto& r) { return r.status().code(); };
  // Unknown layer, wrong K, bad dtype, shape/byte mismatch, precision.
  EXPECT_EQ(code(client_->Forward(ForwardF32("nope", x, 1, 128))), absl::StatusCode::kNotFound);
  auto wrong_k = client_->Forward(ForwardF32("l", x, 2, 64));
  EXPECT_EQ(code(wrong_k), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong_k.status().message(), HasSubstr("expects input [..., 128]; got [..., 64]"));
  v1::ForwardRequest bad = ForwardF32("l", x, 1, 128);
  bad.mutable_input()->set_dtype(v1::U8);
  EXPECT_EQ(code(client_->Forward(bad)), absl::StatusCode::kInvalidArgument);
  bad = ForwardF32("l", x, 1, 128);
  bad.mutable_input()->set_data(bad.input().data().substr(0, 100));
  auto mismatch = client_->Forward(bad);
  EXPECT_EQ(code(mismatch), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(mismatch.status().message(), HasSubstr("holds 100 bytes"));
  bad = ForwardF32("l", x, 1, 128);
  bad.set_precision(static_cast<v1::Precision>(7));
  EXPECT_EQ(code(client_->Forward(bad)), absl::StatusCode::kInvalidArgument);
  // Queue limit: one request larger than the whole queue.
  auto big = client_->Forward(ForwardF32("l", x, 100, 128));
  EXPECT_EQ(code(big), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(big.status().message(), HasSubstr("max-queue-rows"));
  // Name taken, bad parameters, NaN weights, memory budget.
  EXPECT_EQ(code(Upload("l", 64, 128, 8)), absl::StatusCode::kAlreadyExists);
  v1::QuantizeHeader h = Header("p", 64, 128);
  h.mutable_spec()->set_bits(7);
  std::vector<float> w = RandomFloats(64 * 128, 9, 0.05f);
  auto badbits = client_->Quantize(h, Span(w), {});
  EXPECT_EQ(code(badbits), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(badbits.status().message(), HasSubstr("got 7"));
  h = Header("k", 64, 100);
  const std::vector<float> zeros(6400);
  EXPECT_EQ(code(client_->Quantize(h, Span(zeros), {})), absl::StatusCode::kInvalidArgument);
  w[5 * 128 + 9] = NAN;
  auto nan = client_->Quantize(Header("nan", 64, 128), Span(w), {});
  EXPECT_EQ(code(nan), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(nan.status().message(), HasSubstr("row 5, column 9"));
  auto huge = client_->Quantize(Header("huge", 4096, 4096), {}, {});
  EXPECT_EQ(code(huge), absl::StatusCode::kResourceExhausted);
  // Truncated and out-of-order streams publish nothing.
  w = RandomFloats(64 * 128, 10, 0.05f);
  auto truncated = client_->Quantize(Header("t", 64, 128), Span(w).subspan(0, 1000), {});
  EXPECT_EQ(code(truncated), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(truncated.status().message(), HasSubstr("ended early"));
  auto q = Quantize({QuantMode::kAffine, 4, 64}, DType::kF32, w.data(), 64, 128);
  ASSERT_TRUE(q.ok());
  v1::LoadQuantizedHeader lh;
  lh.set_name("o");
  lh.set_out_features(64);
  lh.set_in_features(128);
  lh.set_scales_dtype(v1::F32);
  // Scales sent where the weight should be, then the weight: out of order.
  auto ooo = client_->LoadQuantized(lh, {}, Span(q->scales), Span(q->biases), Span(q->wq));
  EXPECT_EQ(code(ooo), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(client_->GetLayer("t")), absl::StatusCode::kNotFound);
  EXPECT_EQ(code(client_->GetLayer("o")), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->Unload("nope").code(), absl::StatusCode::kNotFound);
  auto stats = client_->Stats("l");
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->layers(0).requests_by_code().at("RESOURCE_EXHAUSTED"), 1u);
  // Shutting down: UNAVAILABLE, health NOT_SERVING.
  EXPECT_TRUE(server_->Shutdown(std::chrono::steady_clock::now() + std::chrono::seconds(5)));
}

// A request whose deadline passes while it waits in the queue is dropped
// without compute and counted DEADLINE_EXCEEDED.
// Issue 16 through the wire: each precision answers with the mode that ran,
// bit for bit the kernel's product on the served layer in that mode; INT8
// on mxfp8 answers BFLOAT16; Stats count by the mode that ran; a number
// outside the enum is refused by number.
TEST_F(ServerTest, PrecisionModesEndToEnd) {
  StartServer();
  ASSERT_TRUE(Upload("l", 64, 256, 6).ok());
  v1::QuantizeHeader mx = Header("mx", 32, 256);
  mx.mutable_spec()->set_mode(v1::MXFP8);
  const std::vector<float> w = RandomFloats(32 * 256, 7, 0.05f);
  ASSERT_TRUE(client_->Quantize(mx, Span(w), {}).ok());
  const std::vector<float> x = RandomFloats(3 * 256, 8);
  auto reference = [&](const std::string& name, Precision p) {
    auto entry = server_->engine().catalog().Get(name);
    EXPECT_TRUE(entry.ok());
    const Layer& layer = *entry->layer;
    std::vector<float> y(static_cast<size_t>(3 * layer.info().n));
    MatmulOptions mo;
    mo.precision = p;
    QuantizedMatmul(layer.packed(), DType::kF32, x.data(), 3, layer.bias(), DType::kF32, y.data(), mo);
    return std::string(reinterpret_cast<const char*>(y.data()), y.size() * 4);
  };
  for (const auto& [p, wire] : {std::pair{Precision::kExact, v1::EXACT},
                                std::pair{Precision::kInt8, v1::INT8},
                                std::pair{Precision::kBf16, v1::BFLOAT16}}) {
    auto r = client_->Forward(ForwardF32("l", x, 3, 256), p);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->precision(), wire);
    EXPECT_EQ(*PrecisionFromProto(r->precision()), p);
    EXPECT_EQ(r->output().data(), reference("l", p)) << PrecisionName(p);
  }
  // Unset is exact, and says so.
  auto unset = client_->Forward(ForwardF32("l", x, 3, 256));
  ASSERT_TRUE(unset.ok());
  EXPECT_EQ(unset->precision(), v1::EXACT);
  auto mx_int8 = client_->Forward(ForwardF32("mx", x, 3, 256), Precision::kInt8);
  ASSERT_TRUE(mx_int8.ok()) << mx_int8.status();
  EXPECT_EQ(mx_int8->precision(), v1::BFLOAT16);
  EXPECT_EQ(mx_int8->output().data(), reference("mx", Precision::kBf16));

  v1::ForwardRequest bad = ForwardF32("l", x, 1, 256);
  bad.set_precision(static_cast<v1::Precision>(99));
  auto refused = client_->Forward(bad);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("got 99"));

  auto stats = client_->Stats("l");
  ASSERT_TRUE(stats.ok());
  const v1::LayerStats& l = stats->layers(0);
  EXPECT_EQ(l.requests_by_precision().at("exact"), 2u);
  EXPECT_EQ(l.rows_by_precision().at("exact"), 6u);
  EXPECT_EQ(l.requests_by_precision().at("int8"), 1u);
  EXPECT_EQ(l.requests_by_precision().at("bf16"), 1u);
  EXPECT_EQ(l.requests_by_code().at("OK"), 4u);
  stats = client_->Stats("mx");
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->layers(0).requests_by_precision().at("bf16"), 1u);
  EXPECT_EQ(stats->layers(0).requests_by_precision().count("int8"), 0u);
}

// --precisions exact: INT8 is INVALID_ARGUMENT naming the allowed set, and
// nothing is computed.
TEST_F(ServerTest, PrecisionsNotEnabledAreRefused) {
  auto exact = PrecisionSet::Parse("exact");
  ASSERT_TRUE(exact.ok());
  StartServer({.precisions = *exact});
  ASSERT_TRUE(Upload("l", 64, 256, 6).ok());
  const std::vector<float> x = RandomFloats(2 * 256, 8);
  auto r = client_->Forward(ForwardF32("l", x, 2, 256), Precision::kInt8);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "precision int8 is not enabled on this server (--precisions exact)");
  EXPECT_TRUE(client_->Forward(ForwardF32("l", x, 2, 256), Precision::kExact).ok());
  auto stats = client_->Stats("l");
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->layers(0).requests_by_code().at("INVALID_ARGUMENT"), 1u);
  EXPECT_EQ(stats->layers(0).batches(), 1u);  // the exact one only
  EXPECT_EQ(stats->layers(0).requests_by_precision().count("int8"), 0u);
}

TEST_F(ServerTest, DeadlineExpiresInTheQueue) {
  StartServer({.max_batch_rows = 1024, .max_batch_delay_us = 300000});
  ASSERT_TRUE(Upload("l", 64, 128, 13).ok());
  const std::vector<float> x = RandomFloats(128, 14);
  Client::Options fast;
  fast.timeout = std::chrono::milliseconds(30);
  auto impatient = Client::Connect(server_->address(), fast);
  EXPECT_EQ(impatient->Forward(ForwardF32("l", x, 1, 128)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  // The batch forms after the 300 ms delay.
  EXPECT_EQ(CodeCount("l", "DEADLINE_EXCEEDED"), 1u);
  auto stats = client_->Stats("l");
  EXPECT_EQ(stats->layers(0).requests_by_code().count("OK"), 0u);
  EXPECT_EQ(stats->layers(0).batches(), 0u);  // dropped without compute
}

// A client that cancels while its request is queued gets CANCELLED, and the
// server drops the request without compute.
TEST_F(ServerTest, CancellationWhileQueued) {
  StartServer({.max_batch_rows = 1024, .max_batch_delay_us = 300000});
  ASSERT_TRUE(Upload("l", 64, 128, 15).ok());
  const std::vector<float> x = RandomFloats(128, 16);
  ChannelOptions plain;
  plain.target = server_->address();
  auto stub = v1::Data::NewStub(*MakeChannel(plain));
  grpc::ClientContext context;
  v1::ForwardResponse response;
  grpc::Status status;
  std::thread caller([&] { status = stub->Forward(&context, ForwardF32("l", x, 1, 128), &response); });
  // Cancel once the request is queued (it waits for the 300 ms batch delay).
  for (int i = 0; i < 200 && server_->engine().queued_rows() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_EQ(server_->engine().queued_rows(), 1);
  context.TryCancel();
  caller.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(CodeCount("l", "CANCELLED"), 1u);
  EXPECT_EQ(client_->Stats("l")->layers(0).batches(), 0u);
}

TEST_F(ServerTest, LargeLayersAndInputsStream) {
  StartServer();
  // 2048 x 1024 float32 = 8 MiB of weights; 1100 rows x 1024 = 4.3 MiB input.
  auto info = Upload("big", 2048, 1024, 11);
  ASSERT_TRUE(info.ok()) << info.status();
  const std::vector<float> x = RandomFloats(1100 * 1024, 12);
  auto r = client_->Forward(ForwardF32("big", x, 1100, 1024));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->output().data().size(), 1100u * 2048 * 4);
  EXPECT_TRUE(client_->Health().ok());
  EXPECT_EQ(*client_->Health(), grpc::health::v1::HealthCheckResponse::SERVING);
}




// The real binary: a second server on a port another one holds fails
// saying so (gRPC's default SO_REUSEPORT would let it start and take half
// the connections), and the first one goes on serving.
TEST(ServerProcessTest, ASecondServerOnATakenPortFailsSayingSo) {
  ServerProcess first(QLINEAR_SERVER_BINARY, {"--threads", "1"});
  ASSERT_TRUE(first.started());
  ASSERT_TRUE(first.WaitServing());
  ScopedTempDir dir("second_server");
  const std::string log = dir.File("second.log");
  // Under `timeout`: a second server that did start would serve forever.
  const int status = std::system(absl::StrCat("timeout 30 '", QLINEAR_SERVER_BINARY, "' --listen ",
                                              first.target(), " --threads 1 --metrics-listen= >'",
                                              log, "' 2>&1")
                                     .c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  const std::string out = ReadFileBytes(log);
  EXPECT_THAT(out, ::testing::AllOf(
                       ::testing::HasSubstr("cannot listen on '" + first.target() + "'"),
                       ::testing::HasSubstr("Address already in use")));
  auto health = Client::Connect(first.target())->Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, grpc::health::v1::HealthCheckResponse::SERVING);
}

// The real binary: SIGTERM with requests in flight loses none of them.
TEST(ServerProcessTest, SigtermFinishesAcceptedRequests) {
  for (bool in_time : {true, false}) {
    ServerProcess server(QLINEAR_SERVER_BINARY, {"--threads", "2", "--max-batch-rows", "8",
                                                 "--drain-timeout-s", in_time ? "60" : "0"});
    ASSERT_TRUE(server.started());
    ASSERT_TRUE(server.WaitServing());
    auto client = Client::Connect(server.target());
    std::mt19937_64 rng(1);
    std::normal_distribution<float> normal;
    std::vector<float> x(64 * 4096);
    for (float& v : x) v = normal(rng);
    std::atomic<int> ok{0}, unavailable{0}, other{0}, sent{0};
    int exit_status = -1;
    std::vector<std::thread> threads;
    for (int c = 0; c < 16; ++c) {
      threads.emplace_back([&] {
        v1::ForwardRequest req;
        req.set_layer("demo");
        req.mutable_input()->set_dtype(v1::F32);
        req.mutable_input()->add_shape(64);
        req.mutable_input()->add_shape(4096);
        req.mutable_input()->set_data(reinterpret_cast<const char*>(x.data()), x.size() * 4);
        sent++;
        auto r = client->Forward(req);
        if (r.ok()) ok++;
        else if (r.status().code() == absl::StatusCode::kUnavailable) unavailable++;
        else other++;
      });
    }
    while (sent < 16) std::this_thread::yield();
    // SIGTERM only once the server has accepted all 16 (it rightly refuses
    // any that arrive after): batches of 8 rows taken in FIFO order leave at
    // most one 64-row request partly handed to the kernel, so queued plus
    // finished rows above 15 requests' worth means all 16 are in. (A fixed
    // pause was too short for a loaded sanitizer build.)
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    // (No ASSERT while the senders run: it would return past their joins.)
    while (true) {
      auto stats = client->Stats("demo");
      if (!stats.ok()) {
        ADD_FAILURE() << stats.status();
        break;
      }
      uint64_t ok_rows = 0;
      for (const v1::LayerStats& l : stats->layers()) {
        auto it = l.rows_by_code().find("OK");
        if (it != l.rows_by_code().end()) ok_rows += it->second;
      }
      if (static_cast<uint64_t>(stats->server().queue_rows()) + ok_rows > 15 * 64) break;
      if (std::chrono::steady_clock::now() > give_up) {
        ADD_FAILURE() << "the server never accepted all 16";
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::thread stopper([&] { exit_status = server.Stop(SIGTERM); });
    for (auto& t : threads) t.join();
    stopper.join();
    ASSERT_GE(exit_status, 0);
    EXPECT_EQ(other.load(), 0);
    EXPECT_EQ(ok + unavailable, 16);
    if (in_time) {
      EXPECT_EQ(exit_status, 0);
      EXPECT_EQ(ok.load(), 16);
    } else {
      EXPECT_EQ(exit_status, 1);
      EXPECT_GT(unavailable.load(), 0);
    }
  }
}

}  // namespace
}  // namespace qlinear
