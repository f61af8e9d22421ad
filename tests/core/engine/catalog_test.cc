// The catalog's door: name rules, what a name costs, and no non-finite
// scale or bias published by any path (core/engine/catalog.h).
#include "core/engine/catalog.h"

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/engine/startup.h"
#include "core/half.h"
#include "core/quantize.h"
#include "core/safetensors.h"
#include "tests/test_util.h"

namespace qlinear {
namespace {

using ::testing::HasSubstr;

LoadedLayer Loaded(const std::string& name, int64_t n = 8, int64_t k = 64) {
  std::mt19937_64 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<float> w(static_cast<size_t>(n * k));
  for (float& v : w) v = normal(rng);
  return LoadedLayer{name, *Quantize({QuantMode::kAffine, 4, 64}, DType::kF32, w.data(), n, k),
                     {}, std::nullopt};
}

// Issue 14, defect 1: a name is checked before anything is reserved, and
// its bytes count in what the layer holds.
TEST(CatalogDoorTest, LongNameIsRefusedBeforeAnythingIsReserved) {
  Catalog catalog(0);
  const std::string name(40 << 20, 'n');
  absl::Status s = catalog.CheckName(name, false);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_LT(s.message().size(), 300u);
  auto published = catalog.Publish(Loaded(name), {}, false);
  EXPECT_EQ(published.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(catalog.bytes_held(), 0u);
  EXPECT_EQ(catalog.Publish(Loaded("bad\nname"), {}, false).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CatalogDoorTest, NameBytesCountInBytesHeldAndTheBudget) {
  Catalog catalog(0);
  auto a = catalog.Publish(Loaded("a"), {}, false);
  const std::string long_name(200, 'b');
  auto b = catalog.Publish(Loaded(long_name), {}, false);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ((*b)->info().bytes_held - (*a)->info().bytes_held, 199u);
  EXPECT_EQ(catalog.bytes_held(), (*a)->info().bytes_held + (*b)->info().bytes_held);

  // A budget that fits the tensors but not the name as well.
  Catalog tight((*a)->info().bytes_held + 10);
  EXPECT_TRUE(tight.Publish(Loaded("a"), {}, false).ok());
  Catalog tighter((*a)->info().bytes_held + 198);  // one byte short of the long name
  auto refused = tighter.Publish(Loaded(long_name), {}, false);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(CatalogDoorTest, MessagesQuoteAtMost64BytesOfAName) {
  Catalog catalog(0);
  const std::string name(256, 'q');
  ASSERT_TRUE(catalog.Publish(Loaded(name), {}, false).ok());
  absl::Status exists = catalog.CheckName(name, false);
  EXPECT_EQ(exists.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(exists.message(), HasSubstr("(256 bytes)"));
  EXPECT_LT(exists.message().size(), 150u);
  absl::Status missing = catalog.Unload(std::string(255, 'r'));
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_LT(missing.message().size(), 150u);
  EXPECT_LT(catalog.Get(std::string(255, 'r')).status().message().size(), 150u);
}

// Issue 14, defect 2: whatever path built it, a layer whose scale or bias
// is not finite is never published.
TEST(CatalogDoorTest, PublishRefusesANonFiniteScaleOrBias) {
  Catalog catalog(0);
  LoadedLayer layer = Loaded("nan-scale");
  StoreFloat(layer.q.dtype, layer.q.scales.data(), 3, std::numeric_limits<float>::infinity());
  auto published = catalog.Publish(layer, {}, false);
  EXPECT_EQ(published.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(published.status().message(), HasSubstr("row 3, group 0"));
  LoadedLayer biased = Loaded("nan-bias");
  StoreFloat(biased.q.dtype, biased.q.biases.data(), 0, std::nanf(""));
  EXPECT_EQ(catalog.Publish(biased, {}, false).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(catalog.Contains("nan-scale"));
  EXPECT_FALSE(catalog.Contains("nan-bias"));
  EXPECT_EQ(catalog.bytes_held(), 0u);
}

// Names from --model files follow the same rule, checked before any layer
// is read; the mlx-lm folders' module paths all fit it.
TEST(CatalogDoorTest, ModelFileNamesFollowTheRule) {
  const std::string path = ::testing::TempDir() + "catalog_test_bad_name.safetensors";
  std::vector<uint8_t> w(8 * 64 * 4, 0);
  ASSERT_TRUE(WriteSafetensors(path, {{"bad name.weight", DType::kF32, {8, 64},
                                       absl::MakeConstSpan(w)}}, {}).ok());
  auto engine = Engine::Create(Engine::Options{});
  ASSERT_TRUE(engine.ok());
  StartupOptions options;
  options.models = {path};
  std::vector<std::string> notes;
  absl::Status s = LoadAtStart(engine->get(), options, &notes);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("--model '" + path + "'"));
  EXPECT_THAT(s.message(), HasSubstr("byte 0x20 at offset 3"));
  EXPECT_EQ((*engine)->catalog().bytes_held(), 0u);

  for (const char* folder : {"tiny-llama-4bit", "tiny-llama-float", "tiny-llama-mixed"}) {
    auto e = Engine::Create(Engine::Options{});
    ASSERT_TRUE(e.ok());
    StartupOptions o;
    o.models = {MlxLmDir() + "/" + folder};
    absl::Status loaded = LoadAtStart(e->get(), o, &notes);
    EXPECT_TRUE(loaded.ok()) << folder << ": " << loaded;
    EXPECT_GT((*e)->catalog().List().size(), 0u) << folder;
  }
}

}  // namespace
}  // namespace qlinear
