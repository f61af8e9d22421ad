// Engine::Snapshot: the one reading of the engine's state that Stats and
// /metrics render.
#include "core/engine/snapshot.h"

#include <gtest/gtest.h>

#include <future>
#include <random>
#include <thread>
#include <vector>

#include "core/engine/engine.h"

namespace qlinear {
namespace {

constexpr size_t Code(absl::StatusCode code) { return static_cast<size_t>(code); }

LoadedLayer MakeLoaded(const std::string& name, int64_t n, int64_t k) {
  std::mt19937_64 rng(n);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<float> w(static_cast<size_t>(n * k));
  for (float& v : w) v = normal(rng);
  return {
      name, *Quantize({QuantMode::kAffine, 4, 64}, DType::kF32, w.data(), n, k), {}, std::nullopt};
}

absl::Status Call(Engine& engine, const std::string& layer, int64_t rows, int64_t k) {
  const std::vector<float> x(static_cast<size_t>(rows * k), 1.0f);
  Engine::ForwardRequest r;
  r.layer = layer;
  r.x = x.data();
  r.rows = rows;
  r.k = k;
  std::promise<absl::Status> done;
  absl::Status s = engine.Submit(
      std::move(r), [&](Engine::ForwardResult result) { done.set_value(result.status); });
  return s.ok() ? done.get_future().get() : s;
}

class SnapshotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto e = Engine::Create({.threads = 1, .max_memory_bytes = 1 << 24});
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = *std::move(e);
    ASSERT_TRUE(engine_->catalog()
                    .Publish(MakeLoaded("a", 16, 128), {OriginKind::kModel, "f"}, false)
                    .ok());
    ASSERT_TRUE(engine_->catalog().Publish(MakeLoaded("b", 8, 64), {}, false).ok());
  }
  std::unique_ptr<Engine> engine_;
};

TEST_F(SnapshotTest, CountsByLayerAndCode) {
  ASSERT_TRUE(Call(*engine_, "a", 3, 128).ok());
  ASSERT_TRUE(Call(*engine_, "a", 2, 128).ok());
  EXPECT_EQ(Call(*engine_, "a", 2, 64).code(), absl::StatusCode::kInvalidArgument);
  engine_->RecordRejected("a", absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(Call(*engine_, "b", 1, 64).ok());

  const EngineSnapshot s = engine_->Snapshot();
  ASSERT_EQ(s.layers.size(), 2u);
  const LayerSnapshot& a = s.layers[0];
  EXPECT_EQ(a.info.name, "a");
  EXPECT_EQ(a.info.n, 16);
  EXPECT_EQ(a.info.k, 128);
  EXPECT_EQ(a.info.origin.kind, OriginKind::kModel);
  EXPECT_EQ(a.requests[Code(absl::StatusCode::kOk)], 2u);
  EXPECT_EQ(a.rows[Code(absl::StatusCode::kOk)], 5u);
  EXPECT_EQ(a.requests[Code(absl::StatusCode::kInvalidArgument)], 2u);
  EXPECT_EQ(a.rows[Code(absl::StatusCode::kInvalidArgument)], 2u);  // the rejected one counts 0
  EXPECT_EQ(a.batches, 2u);
  EXPECT_EQ(a.batch_rows.count, 2u);
  // Latency histograms hold the requests the engine ran.
  EXPECT_EQ(a.queue_us.count, 2u);
  EXPECT_EQ(a.compute_us.count, 2u);
  EXPECT_EQ(a.total_us.count, 2u);
  EXPECT_EQ(s.layers[1].requests[Code(absl::StatusCode::kOk)], 1u);

  EXPECT_EQ(s.layer_count, 2);
  EXPECT_EQ(s.layers_by_origin[static_cast<size_t>(OriginKind::kModel)], 1);
  EXPECT_EQ(s.layers_by_origin[static_cast<size_t>(OriginKind::kUpload)], 1);
  EXPECT_EQ(s.bytes_held, a.info.bytes_held + s.layers[1].info.bytes_held);
  EXPECT_EQ(s.memory_budget_bytes, 1u << 24);
  EXPECT_EQ(s.rows_queued, 0);
  // The slot is freed just after the last answer left: poll (bounded).
  bool idle = false;
  for (int i = 0; i < 5000 && !idle; ++i) {
    idle = engine_->Snapshot().batches_in_flight == 0;
    if (!idle) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_TRUE(idle);
  EXPECT_EQ(s.threads, 1);
  EXPECT_FALSE(s.simd_target.empty());
}

TEST_F(SnapshotTest, UnknownNamesShareOneEntry) {
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(Call(*engine_, "gone-" + std::to_string(i), 2, 64).code(),
              absl::StatusCode::kNotFound);
  }
  engine_->RecordRejected("also-gone", absl::StatusCode::kInvalidArgument);
  const EngineSnapshot s = engine_->Snapshot();
  EXPECT_EQ(s.layers.size(), 2u);
  EXPECT_EQ(s.not_loaded_requests[Code(absl::StatusCode::kNotFound)], 20u);
  EXPECT_EQ(s.not_loaded_rows[Code(absl::StatusCode::kNotFound)], 40u);
  EXPECT_EQ(s.not_loaded_requests[Code(absl::StatusCode::kInvalidArgument)], 1u);
}

TEST_F(SnapshotTest, UploadsByOutcome) {
  engine_->RecordUpload(absl::StatusCode::kOk);
  engine_->RecordUpload(absl::StatusCode::kOk);
  engine_->RecordUpload(absl::StatusCode::kAlreadyExists);
  const EngineSnapshot s = engine_->Snapshot();
  EXPECT_EQ(s.uploads[Code(absl::StatusCode::kOk)], 2u);
  EXPECT_EQ(s.uploads[Code(absl::StatusCode::kAlreadyExists)], 1u);
}

TEST_F(SnapshotTest, OneLayerKeepsTheServerTotals) {
  auto one = engine_->Snapshot("b");
  ASSERT_TRUE(one.ok()) << one.status();
  ASSERT_EQ(one->layers.size(), 1u);
  EXPECT_EQ(one->layers[0].info.name, "b");
  EXPECT_EQ(one->layer_count, 2);
  EXPECT_EQ(one->bytes_held, engine_->Snapshot().bytes_held);
  EXPECT_EQ(engine_->Snapshot("nope").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace qlinear
