// The one checkpoint reader: MLX-written mlx-lm folders as they are, their
// malformed variants (each named, nothing yielded), and single files.
#include "core/checkpoint.h"

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "core/mlx_file.h"
#include "core/reference.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace qlinear {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Json = nlohmann::json;

std::string Message(const absl::Status& s) { return std::string(s.message()); }


void WriteText(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::trunc) << text;
}

template <typename T>
absl::Span<const uint8_t> BytesOf(const std::vector<T>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(T)};
}

// A writable copy of a shared fixture folder.
class FolderCopy {
 public:
  explicit FolderCopy(const std::string& fixture) : dir_("checkpoint") {
    path_ = dir_.File(fixture);
    fs::copy(MlxLmDir() + "/" + fixture, path_);
    for (const auto& e : fs::directory_iterator(path_)) {
      fs::permissions(e.path(), fs::perms::owner_read | fs::perms::owner_write);
    }
  }
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

  // Rewrite rewrites shard `file` without the tensors `drop`, plus `add`.
  void Rewrite(const std::string& file, const std::set<std::string>& drop,
               const std::vector<TensorToWrite>& add = {}) {
    auto shard = SafetensorsFile::Open(File(file));
    ASSERT_TRUE(shard.ok()) << shard.status();
    std::vector<TensorToWrite> tensors = add;
    for (const TensorInfo& t : (*shard)->tensors()) {
      if (!drop.count(t.name)) tensors.push_back({t.name, t.dtype, t.shape, (*shard)->Data(t)});
    }
    ASSERT_TRUE(WriteSafetensors(File(file), tensors, (*shard)->metadata()).ok());
  }
  Json ReadJson(const std::string& name) const { return Json::parse(ReadFileBytes(File(name))); }
  void WriteJson(const std::string& name, const Json& j) const { WriteText(File(name), j.dump(4)); }

 private:
  ScopedTempDir dir_;
  std::string path_;
};

// The parameters config.json gives each module of the mixed fixture
// (../shared/mlx-lm/FORMAT.md §2).
QuantParams MixedParams(const std::string& layer) {
  if (layer == "model.layers.0.self_attn.v_proj") return {QuantMode::kAffine, 6, 32};
  if (absl::EndsWith(layer, "mlp.down_proj")) return {QuantMode::kAffine, 8, 64};
  if (layer == "lm_head") return {QuantMode::kAffine, 8, 128};
  return {QuantMode::kAffine, 4, 64};
}

void ExpectServesItsReference(const std::string& fixture,
                              QuantParams (*params_of)(const std::string&)) {
  auto c = Checkpoint::Open(MlxLmDir() + "/" + fixture);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE((*c)->is_folder());
  EXPECT_TRUE((*c)->warnings().empty());
  EXPECT_TRUE((*c)->skipped().empty());
  ASSERT_EQ((*c)->layers().size(), 16u);  // 2 x 7 projections, embed_tokens, lm_head
  auto ref = SafetensorsFile::Open(MlxLmDir() + "/" + fixture + "-reference.safetensors");
  ASSERT_TRUE(ref.ok()) << ref.status();
  int checked = 0;
  for (const CheckpointLayer& layer : (*c)->layers()) {
    SCOPED_TRACE(layer.name);
    EXPECT_TRUE(layer.quantized);
    EXPECT_EQ(layer.params, params_of(layer.name)) << layer.params.ToString();
    EXPECT_EQ(layer.bias != nullptr, layer.name == "model.layers.0.self_attn.q_proj");
    auto loaded = (*c)->Load(layer);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    const TensorInfo* x = (*ref)->Find(layer.name + ".x");
    if (layer.name == "model.embed_tokens") {
      EXPECT_EQ(x, nullptr);  // served as a layer, but MLX wrote no reference
      continue;
    }
    ASSERT_NE(x, nullptr);
    const TensorInfo* want_t = (*ref)->Find(layer.name + ".y_f32ref");
    ASSERT_NE(want_t, nullptr);
    const int64_t rows = x->shape[0];
    std::vector<float> xs(static_cast<size_t>(x->elements())), want(want_t->elements());
    std::memcpy(xs.data(), (*ref)->Data(*x).data(), x->size);
    std::memcpy(want.data(), (*ref)->Data(*want_t).data(), want_t->size);
    std::vector<float> y(static_cast<size_t>(rows * layer.n));
    ReferenceForward(loaded->q, DType::kF32, xs.data(), rows,
                     loaded->bias.empty() ? nullptr : loaded->bias.data(), DType::kF32, y.data());
    EXPECT_LE(NormalisedError(y, want), 1e-5);
    ++checked;
  }
  EXPECT_EQ(checked, 15);
}

TEST(CheckpointTest, ServesTheFourBitFolder) {
  ExpectServesItsReference("tiny-llama-4bit",
                           [](const std::string&) { return QuantParams{QuantMode::kAffine, 4, 64}; });
}

TEST(CheckpointTest, ServesTheMixedShardedFolderWithAModuleSplitAcrossShards) {
  ExpectServesItsReference("tiny-llama-mixed", MixedParams);
  auto c = Checkpoint::Open(MlxLmDir() + "/tiny-llama-mixed");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->files().size(), 2u);
  const std::string split = "model.layers.1.self_attn.q_proj";
  EXPECT_THAT((*c)->FileOf(*(*c)->Find(split + ".weight")), HasSubstr("model-00001-of-00002"));
  EXPECT_THAT((*c)->FileOf(*(*c)->Find(split + ".scales")), HasSubstr("model-00002-of-00002"));
}

TEST(CheckpointTest, FloatFolderYieldsLayersToQuantize) {
  CheckpointOptions options;
  options.float_params = {QuantMode::kAffine, 4, 64};
  auto c = Checkpoint::Open(MlxLmDir() + "/tiny-llama-float", options);
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ((*c)->layers().size(), 16u);
  for (const CheckpointLayer& layer : (*c)->layers()) {
    EXPECT_FALSE(layer.quantized);
    EXPECT_EQ(layer.params, options.float_params);
  }
  auto loaded = (*c)->Load((*c)->layers()[0]);
  ASSERT_TRUE(loaded.ok());
  ASSERT_TRUE(loaded->report.has_value());
  EXPECT_GT(loaded->report->rel_fro, 0.0);
}

TEST(CheckpointTest, IndexNamingAMissingFileOrTensorIsAnError) {
  {
    FolderCopy f("tiny-llama-mixed");
    Json index = f.ReadJson("model.safetensors.index.json");
    index["weight_map"]["model.norm.weight"] = "model-00003-of-00003.safetensors";
    f.WriteJson("model.safetensors.index.json", index);
    auto c = Checkpoint::Open(f.path());
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(c.status()), AllOf(HasSubstr("model.safetensors.index.json"),
                                           HasSubstr("model.norm.weight"),
                                           HasSubstr("model-00003-of-00003.safetensors")));
  }
  {
    FolderCopy f("tiny-llama-mixed");
    Json index = f.ReadJson("model.safetensors.index.json");
    index["weight_map"]["model.extra.weight"] = "model-00001-of-00002.safetensors";
    f.WriteJson("model.safetensors.index.json", index);
    auto c = Checkpoint::Open(f.path());
    ASSERT_FALSE(c.ok());
    EXPECT_THAT(Message(c.status()), AllOf(HasSubstr("model.extra.weight"),
                                           HasSubstr("model-00001-of-00002.safetensors"),
                                           HasSubstr("lacks it")));
  }
  {  // The index points at the wrong shard of a tensor that exists.
    FolderCopy f("tiny-llama-mixed");
    Json index = f.ReadJson("model.safetensors.index.json");
    index["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors";
    f.WriteJson("model.safetensors.index.json", index);
    auto c = Checkpoint::Open(f.path());
    ASSERT_FALSE(c.ok());
    EXPECT_THAT(Message(c.status()),
                AllOf(HasSubstr("model.norm.weight"), HasSubstr("lacks it"),
                      HasSubstr("it is in"), HasSubstr("model-00002-of-00002.safetensors")));
  }
  {  // A tensor the index does not list.
    FolderCopy f("tiny-llama-mixed");
    Json index = f.ReadJson("model.safetensors.index.json");
    index["weight_map"].erase("model.norm.weight");
    f.WriteJson("model.safetensors.index.json", index);
    auto c = Checkpoint::Open(f.path());
    ASSERT_FALSE(c.ok());
    EXPECT_THAT(Message(c.status()), AllOf(HasSubstr("model.norm.weight"),
                                           HasSubstr("is not in")));
  }
  {  // Without an index the shards alone decide (mlx-lm's loader globs).
    FolderCopy f("tiny-llama-mixed");
    fs::remove(f.File("model.safetensors.index.json"));
    auto c = Checkpoint::Open(f.path());
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ((*c)->layers().size(), 16u);
  }
}

TEST(CheckpointTest, ATensorInTwoShardsNamesBoth) {
  FolderCopy f("tiny-llama-mixed");
  const std::vector<uint16_t> norm(256, 0x3C00);
  f.Rewrite("model-00001-of-00002.safetensors", {},
            {{"model.norm.weight", DType::kF16, {256}, BytesOf(norm)}});
  auto c = Checkpoint::Open(f.path());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(c.status()), AllOf(HasSubstr("'model.norm.weight' is in two files"),
                                         HasSubstr("model-00001-of-00002.safetensors"),
                                         HasSubstr("model-00002-of-00002.safetensors")));
}

TEST(CheckpointTest, AWeightWithoutScalesNamesTheTensor) {
  FolderCopy f("tiny-llama-4bit");
  const std::string layer = "model.layers.1.mlp.up_proj";
  f.Rewrite("model.safetensors", {layer + ".scales"});
  fs::remove(f.File("model.safetensors.index.json"));
  auto c = Checkpoint::Open(f.path());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(c.status()), AllOf(HasSubstr("model.safetensors"), HasSubstr(layer + ".weight"),
                                         HasSubstr(layer + ".scales' is missing")));

  // Biases without scales, and scales without a weight, are broken triplets.
  FolderCopy g("tiny-llama-4bit");
  g.Rewrite("model.safetensors", {layer + ".weight"});
  fs::remove(g.File("model.safetensors.index.json"));
  c = Checkpoint::Open(g.path());
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(Message(c.status()), HasSubstr("has no '" + layer + ".weight' beside it"));
}

TEST(CheckpointTest, ScalesThatDoNotFitTheOverrideNameTheTensor) {
  FolderCopy f("tiny-llama-mixed");
  Json config = f.ReadJson("config.json");
  // v_proj of layer 0 is 6-bit g32 ([128, 48] codes, [128, 8] scales); an
  // entry saying g64 wants [128, 4] scales.
  config["quantization"]["model.layers.0.self_attn.v_proj"] = {{"group_size", 64}, {"bits", 6}};
  f.WriteJson("config.json", config);
  auto c = Checkpoint::Open(f.path());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(c.status()),
              AllOf(HasSubstr("model.layers.0.self_attn.v_proj.scales"), HasSubstr("[128, 4]"),
                    HasSubstr("[128, 8]"), HasSubstr("config.json entry")));
}

TEST(CheckpointTest, ConfigThatIsNotJsonNamesTheFile) {
  FolderCopy f("tiny-llama-4bit");
  WriteText(f.File("config.json"), "{\"quantization\": {\"bits\": 4,");
  auto c = Checkpoint::Open(f.path());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(c.status()), AllOf(HasSubstr("config.json"), HasSubstr("JSON")));
}

TEST(CheckpointTest, AnOverrideForAModuleThatDoesNotExistIsAWarning) {
  FolderCopy f("tiny-llama-4bit");
  Json config = f.ReadJson("config.json");
  config["quantization"]["model.layers.7.mlp.up_proj"] = {{"group_size", 32}, {"bits", 8}};
  f.WriteJson("config.json", config);
  auto c = Checkpoint::Open(f.path());
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ((*c)->warnings().size(), 1u);
  EXPECT_THAT((*c)->warnings()[0], HasSubstr("'model.layers.7.mlp.up_proj'"));
  EXPECT_EQ((*c)->layers().size(), 16u);
}

TEST(CheckpointTest, PerModuleEntriesFollowMlxLm) {
  // mlx-lm's load_model passes a module's own entry to to_quantized as it
  // is: no "mode" means affine (not the global mode), null bits or group
  // size mean the mode's default, false means not quantized.
  FolderCopy f("tiny-llama-mixed");
  Json config = f.ReadJson("config.json");
  Json q = config["quantization"];
  q["model.layers.0.self_attn.v_proj"] = {{"group_size", 32}, {"bits", 6}};
  q["model.layers.1.mlp.down_proj"] = {{"group_size", nullptr}, {"bits", 8}, {"mode", "affine"}};
  config["quantization"] = q;
  config.erase("quantization_config");
  f.WriteJson("config.json", config);
  auto c = Checkpoint::Open(f.path());
  ASSERT_TRUE(c.ok()) << c.status();
  for (const CheckpointLayer& l : (*c)->layers()) {
    if (l.name == "model.layers.1.mlp.down_proj") {
      EXPECT_EQ(l.params, (QuantParams{QuantMode::kAffine, 8, 64}));
    }
  }
  q["model.layers.1.mlp.up_proj"] = false;
  config["quantization"] = q;
  f.WriteJson("config.json", config);
  c = Checkpoint::Open(f.path());
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(Message(c.status()),
              AllOf(HasSubstr("model.layers.1.mlp.up_proj"), HasSubstr("false")));
}

TEST(CheckpointTest, QuantizationConfigIsReadUnlessItNamesAQuantMethod) {
  FolderCopy f("tiny-llama-mixed");
  Json config = f.ReadJson("config.json");
  config.erase("quantization");  // quantization_config holds the same
  f.WriteJson("config.json", config);
  auto c = Checkpoint::Open(f.path());
  ASSERT_TRUE(c.ok()) << c.status();
  for (const CheckpointLayer& l : (*c)->layers()) EXPECT_EQ(l.params, MixedParams(l.name)) << l.name;

  config["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 4}, {"group_size", 128}};
  f.WriteJson("config.json", config);
  c = Checkpoint::Open(f.path());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(c.status()), AllOf(HasSubstr("quant_method"), HasSubstr("gptq")));
}

TEST(CheckpointTest, ThreeDimensionalQuantizedTensorsAreRefused) {
  ScopedTempDir dir("checkpoint3d");
  const std::vector<uint32_t> codes(2 * 8 * 8, 0);
  const std::vector<uint16_t> scales(2 * 8 * 1, 0x3C00);
  ASSERT_TRUE(WriteSafetensors(dir.File("model.safetensors"),
                               {{"experts.weight", DType::kU32, {2, 8, 8}, BytesOf(codes)},
                                {"experts.scales", DType::kF16, {2, 8, 1}, BytesOf(scales)},
                                {"experts.biases", DType::kF16, {2, 8, 1}, BytesOf(scales)}},
                               {{"quantization", R"({"group_size": 64, "bits": 4})"}})
                  .ok());
  auto c = Checkpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(Message(c.status()), AllOf(HasSubstr("experts.weight"), HasSubstr("3-D"), HasSubstr("MoE")));
}

TEST(CheckpointTest, MissingPathsAndEmptyFolders) {
  auto c = Checkpoint::Open("/nonexistent/qlinear/model");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  ScopedTempDir dir("checkpoint_empty");
  WriteText(dir.File("config.json"), "{}");
  c = Checkpoint::Open(dir.path());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(c.status()), HasSubstr("model*.safetensors"));
}

// Which float weights quantize: the one rule shared by `quantize`, `upload`
// and `qlinear-server --model`.
TEST(CheckpointTest, FloatWeightsAreListedOrSkippedWithWhy) {
  ScopedTempDir dir("checkpoint_float");
  const std::string path = dir.File("m.safetensors");
  const std::vector<float> f32(4 * 64, 0.5f);
  const std::vector<uint16_t> h16(4 * 48, 0x3C00), b16(4 * 64, 0x3F80);
  const std::vector<double> f64(4 * 64, 0.5);
  const std::vector<float> zeros(4, 0.0f), norm(64, 1.0f);
  const std::vector<TensorToWrite> tensors = {
      {"a.weight", DType::kF32, {4, 64}, BytesOf(f32)},
      {"a.bias", DType::kF32, {4}, BytesOf(zeros)},
      {"b.weight", DType::kF16, {4, 48}, BytesOf(h16)},
      {"c.weight", DType::kF64, {4, 64}, BytesOf(f64)},
      {"d.weight", DType::kBF16, {0, 64}, absl::Span<const uint8_t>()},
      {"f.weight", DType::kF32, {1, 4, 64}, BytesOf(f32)},
      {"g.weight", DType::kBF16, {4, 64}, BytesOf(b16)},
      {"norm.weight", DType::kF32, {64}, BytesOf(norm)},
  };
  ASSERT_TRUE(WriteSafetensors(path, tensors, {}).ok());
  CheckpointOptions options;
  options.float_params = {QuantMode::kAffine, 4, 64};
  auto c = Checkpoint::Open(path, options);
  ASSERT_TRUE(c.ok()) << c.status();
  std::vector<std::string> layers, skipped;
  for (const CheckpointLayer& l : (*c)->layers()) layers.push_back(l.name);
  for (const SkippedTensor& s : (*c)->skipped()) skipped.push_back(s.tensor + ": " + s.reason);
  EXPECT_THAT(layers, ElementsAre("a", "g"));
  EXPECT_NE((*c)->layers()[0].bias, nullptr);
  ASSERT_EQ(skipped.size(), 4u);
  EXPECT_THAT(skipped[0], HasSubstr("b.weight: K=48 is not a multiple of the group size 64"));
  EXPECT_THAT(skipped[1], HasSubstr("c.weight: F64"));
  EXPECT_THAT(skipped[2], HasSubstr("d.weight: it is empty"));
  EXPECT_THAT(skipped[3], HasSubstr("f.weight: a 3-D weight"));
  // With nvfp4's 16-element groups, K=48 quantizes.
  options.float_params = DefaultQuantParams(QuantMode::kNvfp4);
  c = Checkpoint::Open(path, options);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->layers().size(), 3u);
}

TEST(CheckpointTest, ABiasOfTheWrongShapeOrValueIsRefused) {
  ScopedTempDir dir("checkpoint_bias");
  const std::string path = dir.File("m.safetensors");
  const std::vector<float> w(4 * 64, 0.5f), short_bias(3, 0.0f);
  std::vector<float> nan_bias(4, 0.0f);
  nan_bias[2] = std::nanf("");
  ASSERT_TRUE(WriteSafetensors(path, {{"a.weight", DType::kF32, {4, 64}, BytesOf(w)},
                                      {"a.bias", DType::kF32, {3}, BytesOf(short_bias)}},
                               {})
                  .ok());
  auto c = Checkpoint::Open(path);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(Message(c.status()), AllOf(HasSubstr("'a.bias'"), HasSubstr("[4]"), HasSubstr("[3]")));
  ASSERT_TRUE(WriteSafetensors(path, {{"a.weight", DType::kF32, {4, 64}, BytesOf(w)},
                                      {"a.bias", DType::kF32, {4}, BytesOf(nan_bias)}},
                               {})
                  .ok());
  c = Checkpoint::Open(path);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT(Message((*c)->Load((*c)->layers()[0]).status()),
              AllOf(HasSubstr("'a.bias' must be finite"), HasSubstr("index 2")));
  EXPECT_FALSE((*c)->Validate((*c)->layers()[0]).ok());
}

TEST(CheckpointTest, AFloatModuleMappedToFalseStaysFloat) {
  ScopedTempDir dir("checkpoint_false");
  const std::vector<float> w(4 * 64, 0.5f);
  ASSERT_TRUE(WriteSafetensors(dir.File("model.safetensors"),
                               {{"a.weight", DType::kF32, {4, 64}, BytesOf(w)},
                                {"b.weight", DType::kF32, {4, 64}, BytesOf(w)}},
                               {})
                  .ok());
  WriteText(dir.File("config.json"),
            R"({"quantization": {"group_size": 64, "bits": 4, "b": false}})");
  auto c = Checkpoint::Open(dir.path());
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ((*c)->layers().size(), 1u);
  EXPECT_EQ((*c)->layers()[0].name, "a");
  ASSERT_EQ((*c)->skipped().size(), 1u);
  EXPECT_THAT((*c)->skipped()[0].reason, HasSubstr("false"));
}

TEST(CheckpointTest, UnresolvedLayersCanBeListedInsteadOfFailing) {
  ScopedTempDir dir("checkpoint_unresolved");
  const std::vector<float> w(8 * 64, 0.25f);
  auto q = Quantize({QuantMode::kAffine, 4, 64}, DType::kF32, w.data(), 8, 64);
  ASSERT_TRUE(q.ok());
  ASSERT_TRUE(WriteSafetensors(dir.File("bare.safetensors"), QuantizedTensors("lin", *q), {}).ok());
  auto c = Checkpoint::Open(dir.File("bare.safetensors"));
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(Message(c.status()), AllOf(HasSubstr("layer 'lin'"), HasSubstr("affine b4 g64")));
  CheckpointOptions options;
  options.tolerate_unresolved = true;
  c = Checkpoint::Open(dir.File("bare.safetensors"), options);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE((*c)->layers().empty());
  ASSERT_EQ((*c)->skipped().size(), 1u);
  EXPECT_EQ((*c)->skipped()[0].tensor, "lin.weight");
  EXPECT_THAT((*c)->skipped()[0].reason, HasSubstr("cannot tell"));
  // A config.json beside a file is read unless the caller says not to.
  WriteText(dir.File("config.json"), "{not json");
  EXPECT_FALSE(Checkpoint::Open(dir.File("bare.safetensors"), options).ok());
  options.read_config_json = false;
  EXPECT_TRUE(Checkpoint::Open(dir.File("bare.safetensors"), options).ok());
}

}  // namespace
}  // namespace qlinear
