// The serving core without gRPC: catalog, memory budget, batcher, stats.
// Tests of batching time inject a FakeClock (Engine::Options::clock) and
// step it: none sleeps for a batch to form or a deadline to pass.
#include "core/engine/engine.h"

#include <atomic>
#include <cstring>
#include <future>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/engine/clock.h"
#include "core/half.h"
#include "core/kernels/qmm.h"

namespace qlinear {
namespace {

using ::testing::HasSubstr;
using Clock = Engine::Clock;
using std::chrono::microseconds;

QuantizedMatrix MakeMatrix(int64_t n, int64_t k, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<float> w(static_cast<size_t>(n * k));
  for (float& v : w) v = normal(rng);
  return *Quantize({QuantMode::kAffine, 4, 64}, DType::kF32, w.data(), n, k);
}

LoadedLayer MakeLoaded(const std::string& name, int64_t n, int64_t k, uint64_t seed,
                       bool bias = true) {
  LoadedLayer layer{name, MakeMatrix(n, k, seed), {}, std::nullopt};
  if (bias) {
    for (int64_t i = 0; i < n; ++i) layer.bias.push_back(0.01f * static_cast<float>(i));
  }
  return layer;
}

// An unpublished copy, to compute the answers a layer will give.
std::shared_ptr<const Layer> Unpublished(const LoadedLayer& l) {
  return Layer::Create(l.name, l.q, l.bias, std::nullopt, 0, Reservation());
}

// MakeLayer publishes a seeded layer through the catalog.
std::shared_ptr<const Layer> MakeLayer(Engine& engine, const std::string& name, int64_t n,
                                       int64_t k, uint64_t seed, bool bias = true) {
  auto layer = engine.catalog().Publish(MakeLoaded(name, n, k, seed, bias), {}, false);
  EXPECT_TRUE(layer.ok()) << layer.status();
  return layer.ok() ? *layer : nullptr;
}

std::vector<float> RandomRows(int64_t rows, int64_t k, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(rows * k));
  for (float& v : x) v = normal(rng);
  return x;
}

// The row computed alone, directly by the kernel: the reference for bits.
std::vector<float> Solo(const Layer& layer, const float* x, int64_t rows,
                        Precision precision = Precision::kExact) {
  std::vector<float> y(static_cast<size_t>(rows * layer.info().n));
  MatmulOptions mo;
  mo.precision = precision;
  QuantizedMatmul(layer.packed(), DType::kF32, x, rows, layer.bias(), DType::kF32, y.data(), mo);
  return y;
}

// Submits and waits (for tests only).
Engine::ForwardResult Call(Engine& engine, Engine::ForwardRequest req, absl::Status* submit = nullptr) {
  std::promise<Engine::ForwardResult> promise;
  auto future = promise.get_future();
  absl::Status s = engine.Submit(std::move(req), [&](Engine::ForwardResult r) {
    promise.set_value(std::move(r));
  });
  if (submit != nullptr) *submit = s;
  if (!s.ok()) {
    Engine::ForwardResult r;
    r.status = s;
    return r;
  }
  return future.get();
}

Engine::ForwardRequest Request(const std::string& layer, const void* x, int64_t rows, int64_t k) {
  Engine::ForwardRequest r;
  r.layer = layer;
  r.x = x;
  r.rows = rows;
  r.k = k;
  return r;
}

std::unique_ptr<Engine> MakeEngine(Engine::Options o = {}) {
  o.threads = o.threads ? o.threads : 2;
  auto e = Engine::Create(o);
  EXPECT_TRUE(e.ok()) << e.status();
  return *std::move(e);
}

// A layer reserves the most its shape can hold, then gives back what
// packing did not need (16-bit scales take half the bytes of float32 ones).
TEST(RegistryTest, ReservationShrinksToWhatTheLayerHolds) {
  MemoryBudget budget(1 << 20);
  {
    ASSERT_TRUE(budget.TryReserve(600, "test").ok());
    Reservation r(&budget, 600);
    r.ShrinkTo(800);
    EXPECT_EQ(budget.used(), 600u);
    r.ShrinkTo(200);
    EXPECT_EQ(budget.used(), 200u);
    EXPECT_EQ(r.bytes(), 200u);
  }
  EXPECT_EQ(budget.used(), 0u);

  const int64_t n = 64, k = 256;
  std::vector<uint16_t> w(static_cast<size_t>(n * k));
  for (size_t i = 0; i < w.size(); ++i) w[i] = FloatToHalfBits(0.01f * static_cast<float>(i % 97));
  auto q = Quantize({QuantMode::kAffine, 4, 64}, DType::kF16, w.data(), n, k);
  ASSERT_TRUE(q.ok());
  const uint64_t most = Layer::PackedBytes(q->params, n, k, false);
  ASSERT_TRUE(budget.TryReserve(most, "layer").ok());
  auto layer = Layer::Create("h", *q, {}, std::nullopt, 1, Reservation(&budget, most));
  EXPECT_LT(layer->info().bytes_held, most);
  EXPECT_EQ(budget.used(), layer->info().bytes_held);
  layer.reset();
  EXPECT_EQ(budget.used(), 0u);
}

TEST(CatalogTest, PublishReplaceUnloadAndMemory) {
  auto engine = MakeEngine({.max_memory_bytes = 1 << 20});
  Catalog& catalog = engine->catalog();
  auto v1 = MakeLayer(*engine, "a", 32, 128, 1);
  const uint64_t one = catalog.bytes_held();
  EXPECT_GT(one, 0u);
  EXPECT_EQ(one, v1->info().bytes_held);
  EXPECT_EQ(v1->info().origin.kind, OriginKind::kUpload);
  auto dup = catalog.Publish(MakeLoaded("a", 32, 128, 2), {}, false);
  EXPECT_EQ(dup.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(dup.status().message(), HasSubstr("'a'"));
  EXPECT_EQ(catalog.bytes_held(), one);  // a refused layer holds nothing
  dup = catalog.Publish(MakeLoaded("a", 32, 128, 2), {OriginKind::kModel, "m"}, true);
  ASSERT_TRUE(dup.ok()) << dup.status();
  EXPECT_EQ(catalog.Get("a")->layer->info().version, (*dup)->info().version);
  EXPECT_EQ((*dup)->info().origin.source, "m");
  EXPECT_GT((*dup)->info().version, v1->info().version);
  // Both versions are held while someone holds the old one.
  EXPECT_EQ(catalog.bytes_held(), 2 * one);
  v1.reset();
  EXPECT_EQ(catalog.bytes_held(), one);
  dup->reset();
  EXPECT_EQ(catalog.bytes_held(), one);  // still published
  ASSERT_TRUE(catalog.Unload("a").ok());
  EXPECT_EQ(catalog.bytes_held(), 0u);
  EXPECT_EQ(catalog.Get("a").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(catalog.Unload("a").code(), absl::StatusCode::kNotFound);
  // The budget refuses what does not fit, naming the layer.
  auto big = catalog.Publish(MakeLoaded("huge", 4096, 512, 3), {}, false);
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(big.status().message(), HasSubstr("layer 'huge'"));
  EXPECT_EQ(catalog.bytes_held(), 0u);
  // A bias that is not finite, and an empty name, are refused.
  LoadedLayer nan = MakeLoaded("nan", 8, 64, 4);
  nan.bias[3] = std::nanf("");
  EXPECT_EQ(catalog.Publish(nan, {}, false).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(catalog.Publish(MakeLoaded("", 8, 64, 4), {}, false).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Versions continue above a seed (a state dir's largest), never reused.
  catalog.SeedVersions(100);
  auto seeded = catalog.Publish(MakeLoaded("s", 8, 64, 5), {}, false);
  ASSERT_TRUE(seeded.ok());
  EXPECT_EQ((*seeded)->info().version, 101u);
  catalog.SeedVersions(50);  // never goes back
  EXPECT_EQ((*catalog.Publish(MakeLoaded("t", 8, 64, 5), {}, false))->info().version, 102u);
  // Draining refuses every change.
  engine->Drain(Clock::now());
  EXPECT_EQ(catalog.Unload("s").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(catalog.Publish(MakeLoaded("u", 8, 64, 5), {}, false).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST(EngineTest, ForwardMatchesTheKernelAndValidates) {
  auto engine = MakeEngine();
  auto layer = MakeLayer(*engine, "l", 48, 256, 3);
  const std::vector<float> x = RandomRows(3, 256, 4);
  Engine::ForwardResult r = Call(*engine, Request("l", x.data(), 3, 256));
  ASSERT_TRUE(r.status.ok()) << r.status;
  const std::vector<float> want = Solo(*layer, x.data(), 3);
  ASSERT_EQ(r.y.size(), want.size() * 4);
  EXPECT_EQ(std::memcmp(r.y.data(), want.data(), r.y.size()), 0);
  EXPECT_EQ(r.version, layer->info().version);
  EXPECT_EQ(r.batch_rows, 3);
  EXPECT_EQ(r.batch_requests, 1);

  // F16 in, BF16 out: the float32 result rounded once.
  std::vector<uint16_t> xh(x.size());
  for (size_t i = 0; i < x.size(); ++i) xh[i] = FloatToHalfBits(x[i]);
  Engine::ForwardRequest req = Request("l", xh.data(), 3, 256);
  req.x_dtype = DType::kF16;
  req.y_dtype = DType::kBF16;
  r = Call(*engine, req);
  ASSERT_TRUE(r.status.ok());
  std::vector<float> xr(x.size());
  for (size_t i = 0; i < x.size(); ++i) xr[i] = HalfBitsToFloat(xh[i]);
  const std::vector<float> want_h = Solo(*layer, xr.data(), 3);
  for (size_t i = 0; i < want_h.size(); ++i) {
    ASSERT_EQ(LoadFloat(DType::kBF16, r.y.data(), i), RoundTo(DType::kBF16, want_h[i]));
  }

  absl::Status s;
  Call(*engine, Request("nope", x.data(), 1, 256), &s);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  Call(*engine, Request("l", x.data(), 1, 100), &s);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("expects input [..., 256]; got [..., 100]"));
  Call(*engine, Request("l", x.data(), 0, 256), &s);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  req = Request("l", x.data(), 1, 256);
  req.x_dtype = DType::kU8;
  Call(*engine, req, &s);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  auto stats = engine->catalog().Get("l")->stats;
  EXPECT_EQ(stats->requests(absl::StatusCode::kOk), 2u);
  EXPECT_EQ(stats->rows(absl::StatusCode::kOk), 6u);
  EXPECT_EQ(stats->requests(absl::StatusCode::kInvalidArgument), 3u);
}

// 64 concurrent single-row requests coalesce into batches, and each gets its
// own row back, bit-identical to the row computed alone, whichever of the
// two slots ran it. Time stands still: only full batches (16 rows) run.
TEST(EngineTest, ConcurrentRowsBatchAndStayBitIdentical) {
  FakeClock clock;  // outlives the engine, whose workers wait on it
  auto engine = MakeEngine(
      {.slots = 2, .max_batch_rows = 16, .max_batch_delay_us = 20000, .clock = &clock});
  EXPECT_EQ(engine->slots(), 2);
  auto layer = MakeLayer(*engine, "l", 80, 512, 5);
  const int kClients = 64;
  const std::vector<float> x = RandomRows(kClients, 512, 6);
  std::vector<Engine::ForwardResult> results(kClients);
  std::vector<std::thread> threads;
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] { results[c] = Call(*engine, Request("l", x.data() + c * 512, 1, 512)); });
  }
  for (auto& t : threads) t.join();
  for (int c = 0; c < kClients; ++c) {
    ASSERT_TRUE(results[c].status.ok()) << results[c].status;
    const std::vector<float> want = Solo(*layer, x.data() + c * 512, 1);
    ASSERT_EQ(std::memcmp(results[c].y.data(), want.data(), want.size() * 4), 0) << "client " << c;
    EXPECT_EQ(results[c].batch_rows, 16) << "client " << c;
    EXPECT_EQ(results[c].batch_requests, 16) << "client " << c;
    EXPECT_EQ(results[c].queue_us, 0) << "no time passed";
  }
  auto stats = engine->catalog().Get("l")->stats;
  EXPECT_EQ(stats->batches(), 4u);
  EXPECT_EQ(stats->rows(absl::StatusCode::kOk), static_cast<uint64_t>(kClients));
  EXPECT_EQ(stats->batch_rows.Read().max, 16.0);
}

// A batch that is not full waits max_batch_delay_us after its first
// request arrived, on the engine's clock, and not a microsecond less; the
// request's queue time is that wait.
TEST(EngineTest, PartialBatchWaitsForTheDelayOnTheInjectedClock) {
  FakeClock clock;
  auto engine = MakeEngine({.max_batch_rows = 8, .max_batch_delay_us = 1000, .clock = &clock});
  auto layer = MakeLayer(*engine, "l", 24, 128, 5);
  const std::vector<float> x = RandomRows(2, 128, 6);
  const Clock::time_point ready = clock.Now() + microseconds(1000);
  std::promise<Engine::ForwardResult> first, second;
  const uint64_t w = clock.waits();
  ASSERT_TRUE(engine->Submit(Request("l", x.data(), 1, 128), [&](Engine::ForwardResult r) {
    first.set_value(std::move(r));
  }).ok());
  ASSERT_TRUE(clock.BlockUntilWaiting(ready, w));  // a slot waits for the delay
  clock.AdvanceBy(microseconds(600));
  ASSERT_TRUE(engine->Submit(Request("l", x.data() + 128, 1, 128), [&](Engine::ForwardResult r) {
    second.set_value(std::move(r));
  }).ok());
  clock.AdvanceBy(microseconds(399));
  EXPECT_EQ(engine->unanswered(), 2);
  EXPECT_EQ(engine->queued_rows(), 2);
  clock.AdvanceBy(microseconds(1));  // head arrival + delay: both go in one batch
  const Engine::ForwardResult a = first.get_future().get();
  const Engine::ForwardResult b = second.get_future().get();
  ASSERT_TRUE(a.status.ok()) << a.status;
  ASSERT_TRUE(b.status.ok()) << b.status;
  EXPECT_EQ(a.batch_rows, 2);
  EXPECT_EQ(a.queue_us, 1000);
  EXPECT_EQ(b.queue_us, 400);
  const std::vector<float> want = Solo(*layer, x.data(), 2);
  EXPECT_EQ(std::memcmp(a.y.data(), want.data(), 24 * 4), 0);
  EXPECT_EQ(std::memcmp(b.y.data(), want.data() + 24, 24 * 4), 0);
  EXPECT_EQ(engine->catalog().Get("l")->stats->batches(), 1u);
}

// With two slots, two batches of one request may run at once, each writing
// its own rows of the answer.
TEST(EngineTest, LargeRequestsSplitAcrossBatches) {
  for (int slots : {1, 2}) {
    auto engine = MakeEngine({.slots = slots, .max_batch_rows = 16});
    auto layer = MakeLayer(*engine, "l", 40, 128, 7);
    const std::vector<float> x = RandomRows(53, 128, 8);
    for (DType yd : {DType::kF32, DType::kBF16}) {
      Engine::ForwardRequest req = Request("l", x.data(), 53, 128);
      req.y_dtype = yd;
      Engine::ForwardResult r = Call(*engine, req);
      ASSERT_TRUE(r.status.ok()) << r.status;
      const std::vector<float> want = Solo(*layer, x.data(), 53);
      ASSERT_EQ(r.y.size(), want.size() * DTypeSize(yd));
      for (size_t i = 0; i < want.size(); ++i) {
        ASSERT_EQ(LoadFloat(yd, r.y.data(), i), RoundTo(yd, want[i])) << "slots " << slots << ", " << i;
      }
      EXPECT_EQ(r.batch_rows, 16);
    }
    EXPECT_EQ(engine->catalog().Get("l")->stats->batches(), 8u) << "slots " << slots;
  }
}

TEST(EngineTest, DeadlineCancelAndQueueLimits) {
  FakeClock clock;
  auto engine = MakeEngine({.max_batch_rows = 1024, .max_batch_delay_us = 200000,
                            .max_queue_rows = 10, .clock = &clock});
  auto layer = MakeLayer(*engine, "l", 16, 64, 9);
  const std::vector<float> x = RandomRows(8, 64, 10);
  std::promise<Engine::ForwardResult> expired, cancelled, ok;
  std::atomic<int> asked{0};
  Engine::ForwardRequest a = Request("l", x.data(), 1, 64);
  a.deadline = clock.Now() + std::chrono::milliseconds(20);
  ASSERT_TRUE(engine->Submit(a, [&](Engine::ForwardResult r) { expired.set_value(std::move(r)); }).ok());
  Engine::ForwardRequest b = Request("l", x.data(), 1, 64);
  b.cancelled = [&asked] {
    asked++;
    return true;
  };
  ASSERT_TRUE(engine->Submit(b, [&](Engine::ForwardResult r) { cancelled.set_value(std::move(r)); }).ok());
  ASSERT_TRUE(engine->Submit(Request("l", x.data(), 8, 64),
                             [&](Engine::ForwardResult r) { ok.set_value(std::move(r)); }).ok());
  // 10 rows queued now: the next one does not fit.
  absl::Status full = engine->Submit(Request("l", x.data(), 1, 64), [](Engine::ForwardResult) {
    ADD_FAILURE() << "a refused request must not be answered";
  });
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(full.message(), HasSubstr("10 of 10 rows queued"));
  // The deadline passes while the batch waits for more rows; nothing is
  // answered until the delay ends.
  clock.AdvanceBy(std::chrono::milliseconds(20));
  EXPECT_EQ(engine->unanswered(), 3);
  EXPECT_EQ(asked.load(), 0);
  clock.AdvanceBy(std::chrono::milliseconds(180));
  const Engine::ForwardResult timed_out = expired.get_future().get();
  EXPECT_EQ(timed_out.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(timed_out.queue_us, 200000);
  EXPECT_TRUE(timed_out.y.empty());
  EXPECT_EQ(cancelled.get_future().get().status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(asked.load(), 1);  // asked once, just before it would have run
  const Engine::ForwardResult ran = ok.get_future().get();
  EXPECT_TRUE(ran.status.ok());
  EXPECT_EQ(ran.batch_requests, 1);
  EXPECT_EQ(ran.queue_us, 200000);
  auto stats = engine->catalog().Get("l")->stats;
  EXPECT_EQ(stats->requests(absl::StatusCode::kDeadlineExceeded), 1u);
  EXPECT_EQ(stats->requests(absl::StatusCode::kCancelled), 1u);
  EXPECT_EQ(stats->requests(absl::StatusCode::kResourceExhausted), 1u);
}

// Every accepted request is answered exactly once, whether drain finishes
// in time or not; nothing is accepted after it starts.
TEST(EngineTest, DrainAnswersEveryAcceptedRequest) {
  for (bool in_time : {true, false}) {
    auto engine = MakeEngine({.max_batch_rows = 4});
    auto layer = MakeLayer(*engine, "l", 512, 1024, 11);
    const std::vector<float> x = RandomRows(8, 1024, 12);
    std::atomic<int> answered{0}, ok{0}, unavailable{0};
    const int kRequests = 200;
    for (int i = 0; i < kRequests; ++i) {
      ASSERT_TRUE(engine->Submit(Request("l", x.data(), 8, 1024), [&](Engine::ForwardResult r) {
        answered++;
        if (r.status.ok()) ok++;
        if (r.status.code() == absl::StatusCode::kUnavailable) unavailable++;
      }).ok());
    }
    Engine::DrainCounts counts;
    const bool drained =
        engine->Drain(in_time ? Clock::now() + std::chrono::seconds(60) : Clock::now(), &counts);
    EXPECT_EQ(drained, in_time);
    EXPECT_EQ(answered.load(), kRequests);
    EXPECT_EQ(ok + unavailable, kRequests);
    // What the drain reports (the server logs it): the requests it found
    // unanswered, each answered by the work or UNAVAILABLE at the deadline.
    EXPECT_LE(counts.pending, kRequests);
    EXPECT_EQ(counts.unavailable, unavailable.load());
    EXPECT_EQ(counts.answered + counts.unavailable, counts.pending);
    EXPECT_EQ(counts.refused, 0);
    EXPECT_EQ(engine->unanswered(), 0);
    if (in_time) EXPECT_EQ(ok.load(), kRequests);
    else EXPECT_GT(unavailable.load(), 0);
    absl::Status after = engine->Submit(Request("l", x.data(), 1, 1024), [](Engine::ForwardResult) {});
    EXPECT_EQ(after.code(), absl::StatusCode::kUnavailable);
  }
}

// Replacing a layer under load: every answer is exactly the old layer's or
// exactly the new one's.
TEST(EngineTest, ReplaceUnderLoadNeverMixes) {
  auto engine = MakeEngine({.max_batch_rows = 32});
  auto v1 = MakeLayer(*engine, "l", 64, 256, 13);
  const LoadedLayer v2_loaded = MakeLoaded("l", 64, 256, 14);
  auto v2 = Unpublished(v2_loaded);
  std::atomic<uint64_t> v2_version{0};
  const std::vector<float> x = RandomRows(1, 256, 15);
  const std::vector<float> y1 = Solo(*v1, x.data(), 1), y2 = Solo(*v2, x.data(), 1);
  std::atomic<bool> stop{false};
  std::atomic<int> old_seen{0}, new_seen{0}, bad{0};
  // The new answers' versions, checked once Publish has said which it is
  // (an answer can come back before the test thread has stored it).
  absl::Mutex new_mu;
  std::set<uint64_t> new_versions;
  std::vector<std::thread> clients;
  for (int c = 0; c < 32; ++c) {
    clients.emplace_back([&] {
      while (!stop) {
        Engine::ForwardResult r = Call(*engine, Request("l", x.data(), 1, 256));
        if (!r.status.ok()) continue;
        if (std::memcmp(r.y.data(), y1.data(), y1.size() * 4) == 0 && r.version == v1->info().version) {
          old_seen++;
        } else if (std::memcmp(r.y.data(), y2.data(), y2.size() * 4) == 0 &&
                   r.version != v1->info().version) {
          new_seen++;
          absl::MutexLock lock(&new_mu);
          new_versions.insert(r.version);
        } else {
          bad++;
        }
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // load, not timing
  auto published = engine->catalog().Publish(v2_loaded, {}, true);
  ASSERT_TRUE(published.ok());
  v2_version = (*published)->info().version;
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_TRUE(engine->catalog().Unload("l").ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  stop = true;
  for (auto& t : clients) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(old_seen.load(), 0);
  EXPECT_GT(new_seen.load(), 0);
  {
    absl::MutexLock lock(&new_mu);
    EXPECT_EQ(new_versions, std::set<uint64_t>{v2_version.load()});
  }
  absl::Status s;
  Call(*engine, Request("l", x.data(), 1, 256), &s);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
}

// Issue 14, defect 4: an answer larger than the caller can send is refused
// before it is queued (the layer's N is the pinned version's), naming both
// sizes and the setting; it counts as RESOURCE_EXHAUSTED, never OK.
TEST(EngineTest, AnswerLargerThanTheLimitIsRefusedBeforeQueueing) {
  auto engine = MakeEngine();
  MakeLayer(*engine, "wide", 512, 64, 3);
  const std::vector<float> x = RandomRows(1024, 64, 4);
  Engine::ForwardRequest req = Request("wide", x.data(), 1024, 64);
  req.max_answer_bytes = 1 << 20;
  req.answer_overhead_bytes = 100;
  absl::Status submit;
  Engine::ForwardResult r = Call(*engine, req, &submit);
  EXPECT_EQ(submit.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(submit.message(), HasSubstr("2097252 bytes"));  // 1024 * 512 * 4 + 100
  EXPECT_THAT(submit.message(), HasSubstr("1048576"));
  EXPECT_THAT(submit.message(), HasSubstr("--max-message-mb"));
  EXPECT_EQ(engine->queued_rows(), 0);
  auto snap = engine->Snapshot("wide");
  ASSERT_TRUE(snap.ok());
  EXPECT_EQ(snap->layers[0].requests[static_cast<int>(absl::StatusCode::kResourceExhausted)], 1u);
  EXPECT_EQ(snap->layers[0].requests[0], 0u);

  // Rows that fit are served; a huge row count cannot overflow the check.
  req.rows = 100;
  EXPECT_TRUE(Call(*engine, req).status.ok());
  req.rows = int64_t{1} << 40;
  EXPECT_EQ(Call(*engine, req).status.code(), absl::StatusCode::kResourceExhausted);
}

// Stats count what the client received: an answer that failed to leave is
// moved from OK to the code the server records for it.
TEST(EngineTest, RecordUndeliveredMovesTheCount) {
  auto engine = MakeEngine();
  MakeLayer(*engine, "l", 8, 64, 5);
  const std::vector<float> x = RandomRows(3, 64, 6);
  Engine::ForwardResult r = Call(*engine, Request("l", x.data(), 3, 64));
  ASSERT_TRUE(r.status.ok());
  Engine::RecordUndelivered(r, 3, absl::StatusCode::kCancelled);
  auto snap = engine->Snapshot("l");
  ASSERT_TRUE(snap.ok());
  EXPECT_EQ(snap->layers[0].requests[0], 0u);
  EXPECT_EQ(snap->layers[0].rows[0], 0u);
  EXPECT_EQ(snap->layers[0].requests[static_cast<int>(absl::StatusCode::kCancelled)], 1u);
  EXPECT_EQ(snap->layers[0].rows[static_cast<int>(absl::StatusCode::kCancelled)], 3u);
  // The per-precision counts (OK answers) follow.
  EXPECT_EQ(snap->layers[0].requests_by_precision[static_cast<int>(Precision::kExact)], 0u);
  EXPECT_EQ(snap->layers[0].rows_by_precision[static_cast<int>(Precision::kExact)], 0u);
}

// Issue 16: each precision answers with the mode that ran, bit for bit the
// kernel's product in that mode, and is counted under it.
TEST(EngineTest, EachPrecisionAnswersWithTheModeThatRan) {
  auto engine = MakeEngine();
  auto layer = MakeLayer(*engine, "l", 48, 256, 3);
  const std::vector<float> x = RandomRows(3, 256, 4);
  std::vector<std::vector<uint8_t>> answers;
  for (Precision p : {Precision::kExact, Precision::kInt8, Precision::kBf16}) {
    Engine::ForwardRequest req = Request("l", x.data(), 3, 256);
    req.precision = p;
    Engine::ForwardResult r = Call(*engine, req);
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(r.precision, p);
    const std::vector<float> want = Solo(*layer, x.data(), 3, p);
    ASSERT_EQ(r.y.size(), want.size() * 4);
    EXPECT_EQ(std::memcmp(r.y.data(), want.data(), r.y.size()), 0) << PrecisionName(p);
    answers.push_back(r.y);
  }
  // The modes really differ (the request reached the kernel).
  EXPECT_NE(answers[0], answers[1]);
  EXPECT_NE(answers[0], answers[2]);
  auto snap = engine->Snapshot("l");
  ASSERT_TRUE(snap.ok());
  for (int p = 0; p < kPrecisionCount; ++p) {
    EXPECT_EQ(snap->layers[0].requests_by_precision[p], 1u) << p;
    EXPECT_EQ(snap->layers[0].rows_by_precision[p], 3u) << p;
  }

  // INT8 of an mxfp8 layer runs BF16, says so and is counted so.
  std::vector<float> w = RandomRows(32, 256, 5);
  LoadedLayer mx{"mx", *Quantize({QuantMode::kMxfp8, 8, 32}, DType::kF32, w.data(), 32, 256), {},
                 std::nullopt};
  auto published = engine->catalog().Publish(mx, {}, false);
  ASSERT_TRUE(published.ok()) << published.status();
  Engine::ForwardRequest req = Request("mx", x.data(), 2, 256);
  req.precision = Precision::kInt8;
  Engine::ForwardResult r = Call(*engine, req);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.precision, Precision::kBf16);
  const std::vector<float> want = Solo(**published, x.data(), 2, Precision::kBf16);
  EXPECT_EQ(std::memcmp(r.y.data(), want.data(), want.size() * 4), 0);
  snap = engine->Snapshot("mx");
  ASSERT_TRUE(snap.ok());
  EXPECT_EQ(snap->layers[0].requests_by_precision[static_cast<int>(Precision::kBf16)], 1u);
  EXPECT_EQ(snap->layers[0].requests_by_precision[static_cast<int>(Precision::kInt8)], 0u);
}

// A precision outside Options::precisions is refused at Submit, naming the
// allowed set, counted as INVALID_ARGUMENT, and nothing is computed.
TEST(EngineTest, PrecisionNotEnabledIsRefused) {
  auto set = PrecisionSet::Parse("exact,bf16");
  ASSERT_TRUE(set.ok());
  auto engine = MakeEngine({.precisions = *set});
  MakeLayer(*engine, "l", 16, 64, 9);
  const std::vector<float> x = RandomRows(2, 64, 10);
  Engine::ForwardRequest req = Request("l", x.data(), 2, 64);
  req.precision = Precision::kInt8;
  absl::Status s = engine->Submit(req, [](Engine::ForwardResult) {
    ADD_FAILURE() << "a refused request must not be answered";
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "precision int8 is not enabled on this server (--precisions exact,bf16)");
  EXPECT_EQ(engine->queued_rows(), 0);
  auto snap = engine->Snapshot("l");
  ASSERT_TRUE(snap.ok());
  EXPECT_EQ(snap->layers[0].requests[static_cast<int>(absl::StatusCode::kInvalidArgument)], 1u);
  EXPECT_EQ(snap->layers[0].batches, 0u);
  req.precision = Precision::kBf16;
  EXPECT_TRUE(Call(*engine, req).status.ok());
}

// No mode outside the set runs: INT8 asked of an mxfp8 layer would run
// BF16, so with --precisions exact,int8 it is refused, naming both.
TEST(EngineTest, PrecisionThatWouldRunIsCheckedToo) {
  auto set = PrecisionSet::Parse("exact,int8");
  ASSERT_TRUE(set.ok());
  auto engine = MakeEngine({.precisions = *set});
  std::vector<float> w = RandomRows(32, 256, 5);
  LoadedLayer mx{"mx", *Quantize({QuantMode::kMxfp8, 8, 32}, DType::kF32, w.data(), 32, 256), {},
                 std::nullopt};
  ASSERT_TRUE(engine->catalog().Publish(mx, {}, false).ok());
  const std::vector<float> x = RandomRows(2, 256, 6);
  Engine::ForwardRequest req = Request("mx", x.data(), 2, 256);
  req.precision = Precision::kInt8;
  absl::Status s = engine->Submit(req, [](Engine::ForwardResult) {
    ADD_FAILURE() << "a refused request must not be answered";
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "precision int8 runs as bf16 on mxfp8 layer 'mx', and bf16 is not enabled on this "
            "server (--precisions exact,int8)");
  // INT8 of an affine layer runs INT8, which is enabled.
  auto layer = MakeLayer(*engine, "l", 16, 256, 9);
  Engine::ForwardRequest ok = Request("l", x.data(), 2, 256);
  ok.precision = Precision::kInt8;
  EXPECT_TRUE(Call(*engine, ok).status.ok());
}

// A queue of exact and int8 requests to one layer: batches form per
// precision in FIFO order (exact, exact | int8 × 3 | exact), never mixed,
// and every answer is its own mode's bits.
TEST(EngineTest, MixedPrecisionQueueNeverMixesABatch) {
  FakeClock clock;
  auto engine = MakeEngine({.max_batch_rows = 64, .max_batch_delay_us = 300000, .clock = &clock});
  auto layer = MakeLayer(*engine, "l", 40, 128, 7);
  const std::vector<Precision> order = {Precision::kExact, Precision::kExact, Precision::kInt8,
                                        Precision::kInt8,  Precision::kInt8,  Precision::kExact};
  const std::vector<int64_t> batch_of = {2, 2, 3, 3, 3, 1};  // requests in each one's batch
  const std::vector<float> x = RandomRows(static_cast<int64_t>(order.size()), 128, 8);
  std::vector<std::promise<Engine::ForwardResult>> promises(order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    Engine::ForwardRequest req = Request("l", x.data() + i * 128, 1, 128);
    req.precision = order[i];
    ASSERT_TRUE(engine->Submit(req, [&promises, i](Engine::ForwardResult r) {
      promises[i].set_value(std::move(r));
    }).ok());
  }
  // The first two runs are closed (a request of another precision follows);
  // the last one waits for the delay.
  clock.AdvanceBy(microseconds(300000));
  for (size_t i = 0; i < order.size(); ++i) {
    Engine::ForwardResult r = promises[i].get_future().get();
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(r.precision, order[i]) << i;
    EXPECT_EQ(r.batch_requests, batch_of[i]) << i;
    const std::vector<float> want = Solo(*layer, x.data() + i * 128, 1, order[i]);
    EXPECT_EQ(std::memcmp(r.y.data(), want.data(), want.size() * 4), 0) << i;
  }
  auto snap = engine->Snapshot("l");
  ASSERT_TRUE(snap.ok());
  EXPECT_EQ(snap->layers[0].batches, 3u);
  EXPECT_EQ(snap->layers[0].requests_by_precision[static_cast<int>(Precision::kExact)], 3u);
  EXPECT_EQ(snap->layers[0].requests_by_precision[static_cast<int>(Precision::kInt8)], 3u);
  EXPECT_EQ(snap->layers[0].requests_by_precision[static_cast<int>(Precision::kBf16)], 0u);
}

TEST(EngineTest, MalformedRequestsAreCountedByRpc) {
  auto engine = MakeEngine();
  engine->RecordMalformed("Forward");
  engine->RecordMalformed("Forward");
  engine->RecordMalformed("Quantize");
  const EngineSnapshot s = engine->Snapshot();
  EXPECT_EQ(s.malformed_requests.at("Forward"), 2u);
  EXPECT_EQ(s.malformed_requests.at("Quantize"), 1u);
}

TEST(HistogramTest, PercentilesFromBuckets) {
  Histogram h(Histogram::PowersOfTwo(1024));
  for (int i = 1; i <= 100; ++i) h.Record(i);
  const Histogram::Snapshot s = h.Read();
  EXPECT_EQ(s.count, 100u);
  EXPECT_DOUBLE_EQ(s.max, 100);
  EXPECT_DOUBLE_EQ(s.Mean(), 50.5);
  EXPECT_DOUBLE_EQ(s.Percentile(50), 64);   // the 50th value (50) is in (32, 64]
  EXPECT_DOUBLE_EQ(s.Percentile(99), 100);  // capped by the max
  EXPECT_DOUBLE_EQ(s.Percentile(1), 1);
}

}  // namespace
}  // namespace qlinear
