#include "core/mlx_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "core/dtype.h"
#include "core/half.h"
#include "core/quant_params.h"
#include "core/quantize.h"
#include "core/safetensors.h"
#include "tests/test_util.h"

namespace qlinear {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr int64_t kN = 8;
constexpr int64_t kK = 256;
const char kUp[] = "model.layers.0.mlp.up_proj";
const char kGate[] = "model.layers.0.mlp.gate_proj";
const char kDown[] = "model.layers.0.mlp.down_proj";

const QuantParams kAffine4 = {QuantMode::kAffine, 4, 64};
const QuantParams kAffine8 = {QuantMode::kAffine, 8, 32};
const QuantParams kAffine2 = {QuantMode::kAffine, 2, 128};
const QuantParams kMxfp4 = {QuantMode::kMxfp4, 4, 32};


void WriteText(const std::string& path, absl::string_view text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

std::string Message(const absl::Status& status) {
  return std::string(status.message());
}

// Weights with some spread per row and group, deterministic.
std::vector<float> MakeWeights(int64_t n, int64_t k, uint32_t seed) {
  std::vector<float> w(static_cast<size_t>(n * k));
  uint32_t state = seed;
  for (size_t i = 0; i < w.size(); ++i) {
    state = state * 1664525u + 1013904223u;
    const float unit = static_cast<float>(state >> 8) / 16777216.0f;  // [0, 1)
    w[i] = (unit - 0.5f) * (1.0f + static_cast<float>(i / 64 % 5));
  }
  return w;
}

template <typename T>
absl::Span<const uint8_t> BytesOf(const std::vector<T>& v) {
  return absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()),
                                   v.size() * sizeof(T));
}

// ---------------------------------------------------------------------------
// QuantizationConfig.

TEST(QuantizationConfigTest, GlobalFields) {
  auto config = QuantizationConfig::FromJson(
      R"({"group_size": 32, "bits": 8, "mode": "affine"})");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->global.mode, QuantMode::kAffine);
  EXPECT_EQ(config->global.bits, 8);
  EXPECT_EQ(config->global.group_size, 32);
  EXPECT_TRUE(config->layers.empty());
  EXPECT_TRUE(config->unquantized.empty());

  auto mx = QuantizationConfig::FromJson(
      R"({"mode": "mxfp4", "bits": 4, "group_size": 32})");
  ASSERT_TRUE(mx.ok()) << mx.status();
  EXPECT_EQ(mx->global.mode, QuantMode::kMxfp4);
}

TEST(QuantizationConfigTest, PerLayerObjectsAndUnquantized) {
  auto config = QuantizationConfig::FromJson(R"({
    "group_size": 64, "bits": 4,
    "model.layers.0.self_attn.q_proj": {"bits": 8, "group_size": 32},
    "model.embed_tokens": {"mode": "mxfp4"},
    "lm_head": false,
    "model.norm": true
  })");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->global.bits, 4);
  EXPECT_EQ(config->global.group_size, 64);
  ASSERT_EQ(config->layers.size(), 2u);
  const PartialQuantParams& q =
      config->layers.at("model.layers.0.self_attn.q_proj");
  EXPECT_FALSE(q.mode.has_value());
  EXPECT_EQ(q.bits, 8);
  EXPECT_EQ(q.group_size, 32);
  const PartialQuantParams& embed = config->layers.at("model.embed_tokens");
  EXPECT_EQ(embed.mode, QuantMode::kMxfp4);
  EXPECT_FALSE(embed.bits.has_value());
  EXPECT_THAT(config->unquantized, ElementsAre("lm_head"));

  EXPECT_EQ(config->Lookup("model.layers.0.self_attn.q_proj").bits, 8);
  EXPECT_EQ(config->Lookup("model.layers.1.self_attn.q_proj").bits, 4);
  EXPECT_EQ(config->Lookup("model.layers.1.self_attn.q_proj").group_size, 64);
  EXPECT_TRUE(config->Lookup("lm_head").empty());
}

TEST(QuantizationConfigTest, MissingModeIsUnset) {
  auto config = QuantizationConfig::FromJson(
      R"({"group_size": 64, "bits": 4, "other": null, "mode": null})");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->global.mode.has_value());
  EXPECT_EQ(config->global.bits, 4);

  auto empty = QuantizationConfig::FromJson("{}");
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->global.empty());
}

TEST(QuantizationConfigTest, WrongTypesAreInvalid) {
  struct Case {
    const char* json;
    std::vector<std::string> words;
  };
  const Case cases[] = {
      {R"({"bits": "4"})", {"'bits'", "integer"}},
      {R"({"bits": 4.0})", {"'bits'", "integer"}},
      {R"({"group_size": 64.5})", {"'group_size'", "integer"}},
      {R"({"group_size": [64]})", {"'group_size'"}},
      {R"({"mode": 4})", {"'mode'", "string"}},
      {R"({"mode": "int4"})", {"int4", "affine"}},
      {R"({"layer.x": {"bits": true}})", {"layer.x", "'bits'"}},
      {R"({"layer.x": {"mode": "int4"}})", {"layer.x", "int4"}},
      // Out of int range: must not wrap around to a plausible value.
      {R"({"bits": 4294967300})", {"'bits'"}},
      {R"({"group_size": 18446744073709551615})", {"'group_size'"}},
      {R"({"bits": -4294967292})", {"'bits'"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.json);
    auto config = QuantizationConfig::FromJson(c.json);
    ASSERT_FALSE(config.ok());
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    for (const std::string& word : c.words) {
      EXPECT_THAT(Message(config.status()), HasSubstr(word));
    }
  }
}

TEST(QuantizationConfigTest, NonObjectIsInvalid) {
  for (const char* text : {"[]", "4", "\"affine\"", "null", "", "{", "not json",
                           "{\"bits\": 4} {}"}) {
    SCOPED_TRACE(text);
    auto config = QuantizationConfig::FromJson(text);
    ASSERT_FALSE(config.ok());
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(config.status()), HasSubstr("JSON object"));
  }
}

TEST(QuantizationConfigTest, ToJsonRoundTrip) {
  for (const QuantParams& p :
       {kAffine4, kAffine8, kAffine2, QuantParams{QuantMode::kAffine, 3, 128},
        kMxfp4, QuantParams{QuantMode::kMxfp8, 8, 32},
        QuantParams{QuantMode::kNvfp4, 4, 16}}) {
    SCOPED_TRACE(p.ToString());
    const std::string json = QuantizationConfig::ToJson(p);
    EXPECT_THAT(json,
                HasSubstr(absl::StrCat(
                    "\"mode\":\"", std::string(QuantModeName(p.mode)), "\"")));
    auto config = QuantizationConfig::FromJson(json);
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(config->global.mode, p.mode);
    EXPECT_EQ(config->global.bits, p.bits);
    EXPECT_EQ(config->global.group_size, p.group_size);
    EXPECT_TRUE(config->layers.empty());
  }
}

// ---------------------------------------------------------------------------
// Files of real quantized layers.

class MlxFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    weights_ = MakeWeights(kN, kK, 1);
    auto affine = Quantize(kAffine4, DType::kF32, weights_.data(), kN, kK);
    ASSERT_TRUE(affine.ok()) << affine.status();
    affine_ = *std::move(affine);
    auto mxfp4 = Quantize(kMxfp4, DType::kF32, weights_.data(), kN, kK);
    ASSERT_TRUE(mxfp4.ok()) << mxfp4.status();
    mxfp4_ = *std::move(mxfp4);
  }

  // Tensors of kUp (affine b4 g64, F32 scales), kGate (the same data) and
  // kDown (mxfp4).
  std::vector<TensorToWrite> ModelTensors() const {
    std::vector<TensorToWrite> tensors = QuantizedTensors(kUp, affine_);
    for (TensorToWrite& t : QuantizedTensors(kGate, affine_))
      tensors.push_back(t);
    for (TensorToWrite& t : QuantizedTensors(kDown, mxfp4_))
      tensors.push_back(t);
    return tensors;
  }

  // WriteModel writes `tensors` with `metadata` into `path`.
  void WriteModel(const std::string& path,
                  const std::vector<TensorToWrite>& tensors,
                  const std::map<std::string, std::string>& metadata) {
    absl::Status status = WriteSafetensors(path, tensors, metadata);
    ASSERT_TRUE(status.ok()) << status;
  }

  std::unique_ptr<SafetensorsFile> OpenModel(const std::string& path) {
    auto file = SafetensorsFile::Open(path);
    EXPECT_TRUE(file.ok()) << file.status();
    return file.ok() ? *std::move(file) : nullptr;
  }

  // Resolve loads the sources of `path` and resolves `layer`.
  absl::StatusOr<QuantParams> Resolve(
      const std::string& path, const std::string& layer,
      const PartialQuantParams& overrides = {}) {
    auto file = SafetensorsFile::Open(path);
    if (!file.ok()) return file.status();
    auto sources = QuantizationSources::Load(path, **file, overrides);
    if (!sources.ok()) return sources.status();
    return ResolveLayerParams(**file, layer, *sources);
  }

  ScopedTempDir dir_{"mlx_file_test"};
  std::vector<float> weights_;
  QuantizedMatrix affine_;
  QuantizedMatrix mxfp4_;
};

TEST_F(MlxFileTest, QuantizedTensorsNamesAndShapes) {
  const std::vector<TensorToWrite> up = QuantizedTensors(kUp, affine_);
  ASSERT_EQ(up.size(), 3u);
  EXPECT_EQ(up[0].name, absl::StrCat(kUp, ".weight"));
  EXPECT_EQ(up[0].dtype, DType::kU32);
  EXPECT_THAT(up[0].shape, ElementsAre(kN, 32));
  EXPECT_EQ(up[0].data.size(), affine_.wq.size() * 4);
  EXPECT_EQ(up[1].name, absl::StrCat(kUp, ".scales"));
  EXPECT_EQ(up[1].dtype, DType::kF32);
  EXPECT_THAT(up[1].shape, ElementsAre(kN, 4));
  EXPECT_EQ(up[2].name, absl::StrCat(kUp, ".biases"));
  EXPECT_EQ(up[2].dtype, DType::kF32);
  EXPECT_THAT(up[2].shape, ElementsAre(kN, 4));

  const std::vector<TensorToWrite> down = QuantizedTensors(kDown, mxfp4_);
  ASSERT_EQ(down.size(), 2u);
  EXPECT_THAT(down[0].shape, ElementsAre(kN, 32));
  EXPECT_EQ(down[1].name, absl::StrCat(kDown, ".scales"));
  EXPECT_EQ(down[1].dtype, DType::kU8);
  EXPECT_THAT(down[1].shape, ElementsAre(kN, 8));
}

TEST_F(MlxFileTest, ResolveWithoutAnySourceListsCandidates) {
  const std::string path = dir_.File("model.safetensors");
  WriteModel(path, ModelTensors(), {});
  auto file = OpenModel(path);
  ASSERT_NE(file, nullptr);
  auto sources = QuantizationSources::Load(path, *file, {});
  ASSERT_TRUE(sources.ok()) << sources.status();
  EXPECT_FALSE(sources->metadata.has_value());
  EXPECT_FALSE(sources->config_json.has_value());

  auto up = ResolveLayerParams(*file, kUp, *sources);
  ASSERT_FALSE(up.ok());
  EXPECT_EQ(up.status().code(), absl::StatusCode::kInvalidArgument);
  // [8, 32] U32 + [8, 4] F32 scales fit three affine combinations, no more.
  EXPECT_THAT(Message(up.status()),
              AllOf(HasSubstr(absl::StrCat("'", kUp, "'")),
                    HasSubstr("affine b4 g64"), HasSubstr("affine b8 g32"),
                    HasSubstr("affine b2 g128"), Not(HasSubstr("affine b3")),
                    Not(HasSubstr("affine b4 g32")), Not(HasSubstr("mxfp4"))));

  auto down = ResolveLayerParams(*file, kDown, *sources);
  ASSERT_FALSE(down.ok());
  EXPECT_EQ(down.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(down.status()),
              AllOf(HasSubstr(absl::StrCat("'", kDown, "'")),
                    HasSubstr("fit: mxfp4 b4 g32"), Not(HasSubstr("affine b")),
                    Not(HasSubstr("nvfp4"))));
}

TEST_F(MlxFileTest, ResolvesFromMetadata) {
  const std::string path = dir_.File("model.safetensors");
  const std::string quantization = absl::StrCat(
      R"({"group_size": 64, "bits": 4, "mode": "affine", ")", kDown,
      R"(": {"mode": "mxfp4", "bits": 4, "group_size": 32}})");
  WriteModel(path, ModelTensors(), {{"quantization", quantization}});

  auto up = Resolve(path, kUp);
  ASSERT_TRUE(up.ok()) << up.status();
  EXPECT_EQ(*up, kAffine4);
  auto down = Resolve(path, kDown);
  ASSERT_TRUE(down.ok()) << down.status();
  EXPECT_EQ(*down, kMxfp4);
}

TEST_F(MlxFileTest, MetadataWithoutModeMeansAffine) {
  const std::string path = dir_.File("model.safetensors");
  WriteModel(path, QuantizedTensors(kUp, affine_),
             {{"quantization", R"({"group_size": 128, "bits": 2})"}});
  auto up = Resolve(path, kUp);
  ASSERT_TRUE(up.ok()) << up.status();
  EXPECT_EQ(*up, kAffine2);
}

TEST_F(MlxFileTest, MetadataWrittenWithToJsonResolves) {
  const std::string path = dir_.File("model.safetensors");
  WriteModel(path, QuantizedTensors(kDown, mxfp4_),
             {{"quantization", QuantizationConfig::ToJson(kMxfp4)}});
  auto down = Resolve(path, kDown);
  ASSERT_TRUE(down.ok()) << down.status();
  EXPECT_EQ(*down, kMxfp4);
}

TEST_F(MlxFileTest, OverridesBeatMetadata) {
  const std::string path = dir_.File("model.safetensors");
  WriteModel(path, ModelTensors(),
             {{"quantization", QuantizationConfig::ToJson(kAffine4)}});

  PartialQuantParams b8;
  b8.bits = 8;
  b8.group_size = 32;
  auto up = Resolve(path, kUp, b8);
  ASSERT_TRUE(up.ok()) << up.status();
  EXPECT_EQ(*up, kAffine8);

  PartialQuantParams mx;
  mx.mode = QuantMode::kMxfp4;
  mx.group_size = 32;
  auto down = Resolve(path, kDown, mx);
  ASSERT_TRUE(down.ok()) << down.status();
  EXPECT_EQ(*down, kMxfp4);

  // Overrides replace field by field: bits 8 with the metadata's group size
  // 64 is affine b8 g64, which does not fit.
  PartialQuantParams bits_only;
  bits_only.bits = 8;
  auto mixed = Resolve(path, kUp, bits_only);
  ASSERT_FALSE(mixed.ok());
  EXPECT_EQ(mixed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      Message(mixed.status()),
      AllOf(HasSubstr(kUp), HasSubstr("affine b8 g64"), HasSubstr("metadata")));
}

TEST_F(MlxFileTest, OverridesAloneSuffice) {
  const std::string path = dir_.File("model.safetensors");
  WriteModel(path, ModelTensors(), {});
  PartialQuantParams mode_only;
  mode_only.mode = QuantMode::kMxfp4;
  auto down = Resolve(path, kDown, mode_only);
  ASSERT_TRUE(down.ok()) << down.status();
  EXPECT_EQ(*down, kMxfp4);
  PartialQuantParams bits_only;
  bits_only.bits = 4;  // affine, default group size 64
  auto up = Resolve(path, kUp, bits_only);
  ASSERT_TRUE(up.ok()) << up.status();
  EXPECT_EQ(*up, kAffine4);
}

TEST_F(MlxFileTest, PerLayerMetadataBeatsGlobal) {
  const std::string path = dir_.File("model.safetensors");
  // Both b8 g32 and b4 g64 fit the shapes: only the metadata can tell.
  const std::string quantization =
      absl::StrCat(R"({"group_size": 32, "bits": 8, ")", kUp,
                   R"(": {"group_size": 64, "bits": 4}, ")", kDown,
                   R"(": {"mode": "mxfp4", "group_size": 32, "bits": 4}})");
  WriteModel(path, ModelTensors(), {{"quantization", quantization}});
  auto up = Resolve(path, kUp);
  ASSERT_TRUE(up.ok()) << up.status();
  EXPECT_EQ(*up, kAffine4);
  auto gate = Resolve(path, kGate);
  ASSERT_TRUE(gate.ok()) << gate.status();
  EXPECT_EQ(*gate, kAffine8);
}

TEST_F(MlxFileTest, ConfigJsonBesideFileIsUsedWithoutMetadata) {
  const std::string path = dir_.File("model.safetensors");
  WriteModel(path, ModelTensors(), {});
  WriteText(dir_.File("config.json"),
            absl::StrCat(R"({"model_type": "llama", "hidden_size": 256,
                             "quantization": {"group_size": 128, "bits": 2, ")",
                         kDown, R"(": {"mode": "mxfp4", "group_size": 32}}})"));
  auto file = OpenModel(path);
  ASSERT_NE(file, nullptr);
  auto sources = QuantizationSources::Load(path, *file, {});
  ASSERT_TRUE(sources.ok()) << sources.status();
  EXPECT_FALSE(sources->metadata.has_value());
  ASSERT_TRUE(sources->config_json.has_value());

  auto up = ResolveLayerParams(*file, kUp, *sources);
  ASSERT_TRUE(up.ok()) << up.status();
  EXPECT_EQ(*up, kAffine2);
  // bits 4 comes from mxfp4's default, not from the global 2.
  auto down = ResolveLayerParams(*file, kDown, *sources);
  ASSERT_TRUE(down.ok()) << down.status();
  EXPECT_EQ(*down, kMxfp4);
}

TEST_F(MlxFileTest, ConfigJsonQuantizationConfigKey) {
  const std::string path = dir_.File("model.safetensors");
  WriteModel(path, QuantizedTensors(kUp, affine_), {});
  WriteText(dir_.File("config.json"),
            R"({"quantization_config": {"group_size": 32, "bits": 8}})");
  auto up = Resolve(path, kUp);
  ASSERT_TRUE(up.ok()) << up.status();
  EXPECT_EQ(*up, kAffine8);
}

TEST_F(MlxFileTest, MetadataBeatsConfigJson) {
  const std::string path = dir_.File("model.safetensors");
  WriteModel(path, QuantizedTensors(kUp, affine_),
             {{"quantization", QuantizationConfig::ToJson(kAffine4)}});
  WriteText(dir_.File("config.json"),
            R"({"quantization": {"group_size": 32, "bits": 8}})");
  auto up = Resolve(path, kUp);
  ASSERT_TRUE(up.ok()) << up.status();
  EXPECT_EQ(*up, kAffine4);
}

TEST_F(MlxFileTest, MalformedSourcesAreInvalid) {
  const std::string path = dir_.File("model.safetensors");
  WriteModel(path, QuantizedTensors(kUp, affine_),
             {{"quantization", R"({"bits": "four"})"}});
  auto bad_metadata = Resolve(path, kUp);
  ASSERT_FALSE(bad_metadata.ok());
  EXPECT_EQ(bad_metadata.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(bad_metadata.status()),
              AllOf(HasSubstr("__metadata__"), HasSubstr("'bits'")));

  WriteModel(path, QuantizedTensors(kUp, affine_), {});
  WriteText(dir_.File("config.json"), "{not json");
  auto bad_json = Resolve(path, kUp);
  ASSERT_FALSE(bad_json.ok());
  EXPECT_EQ(bad_json.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(bad_json.status()), HasSubstr("config.json"));

  WriteText(dir_.File("config.json"), R"({"quantization": {"mode": 4}})");
  auto bad_field = Resolve(path, kUp);
  ASSERT_FALSE(bad_field.ok());
  EXPECT_EQ(bad_field.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(bad_field.status()),
              AllOf(HasSubstr("config.json"), HasSubstr("'mode'")));
}

TEST_F(MlxFileTest, ParamsThatDoNotFitAreInvalid) {
  const std::string path = dir_.File("model.safetensors");
  WriteModel(path, ModelTensors(), {});

  PartialQuantParams bits3;
  bits3.bits = 3;
  auto up = Resolve(path, kUp, bits3);
  ASSERT_FALSE(up.ok());
  EXPECT_EQ(up.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(up.status()),
              AllOf(HasSubstr(kUp), HasSubstr("3-bit"), HasSubstr("flags")));

  PartialQuantParams bits7;  // not a width MLX supports at all
  bits7.bits = 7;
  auto invalid = Resolve(path, kUp, bits7);
  ASSERT_FALSE(invalid.ok());
  EXPECT_EQ(invalid.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(invalid.status()), HasSubstr(kUp));

  // An affine layer read as mxfp4 (its scales are F32, not U8).
  PartialQuantParams mx;
  mx.mode = QuantMode::kMxfp4;
  auto wrong_mode = Resolve(path, kUp, mx);
  ASSERT_FALSE(wrong_mode.ok());
  EXPECT_EQ(wrong_mode.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(wrong_mode.status()),
              AllOf(HasSubstr(absl::StrCat(kUp, ".scales")), HasSubstr("U8")));

  // An mxfp4 layer read as nvfp4 (group 16: twice as many scales).
  PartialQuantParams nv;
  nv.mode = QuantMode::kNvfp4;
  auto wrong_groups = Resolve(path, kDown, nv);
  ASSERT_FALSE(wrong_groups.ok());
  EXPECT_EQ(wrong_groups.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      Message(wrong_groups.status()),
      AllOf(HasSubstr(absl::StrCat(kDown, ".scales")), HasSubstr("[8, 16]")));

  // A layer that is not in the file.
  PartialQuantParams b4;
  b4.bits = 4;
  auto missing = Resolve(path, "model.nope", b4);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(missing.status()), HasSubstr("model.nope.weight"));
}

TEST_F(MlxFileTest, LoadQuantizedLayerReturnsOriginalBytes) {
  const std::string path = dir_.File("model.safetensors");
  WriteModel(path, ModelTensors(), {});
  auto file = OpenModel(path);
  ASSERT_NE(file, nullptr);

  auto up = LoadQuantizedLayer(*file, kUp, kAffine4);
  ASSERT_TRUE(up.ok()) << up.status();
  EXPECT_EQ(up->params, kAffine4);
  EXPECT_EQ(up->dtype, DType::kF32);
  EXPECT_EQ(up->n, kN);
  EXPECT_EQ(up->k, kK);
  EXPECT_EQ(up->wq, affine_.wq);
  EXPECT_EQ(up->scales, affine_.scales);
  EXPECT_EQ(up->biases, affine_.biases);

  auto down = LoadQuantizedLayer(*file, kDown, kMxfp4);
  ASSERT_TRUE(down.ok()) << down.status();
  EXPECT_EQ(down->params, kMxfp4);
  EXPECT_EQ(down->n, kN);
  EXPECT_EQ(down->k, kK);
  EXPECT_EQ(down->wq, mxfp4_.wq);
  EXPECT_EQ(down->scales, mxfp4_.scales);
  EXPECT_TRUE(down->biases.empty());
  EXPECT_EQ(down->dtype, DType::kBF16);  // the file does not say; MLX's default

  // The loaded layer dequantizes exactly like the original.
  std::vector<float> a(kN * kK), b(kN * kK);
  Dequantize(affine_, DType::kF32, a.data());
  Dequantize(*up, DType::kF32, b.data());
  EXPECT_EQ(a, b);
}

TEST_F(MlxFileTest, LoadKeepsScalesDtype) {
  std::vector<uint16_t> bf16(weights_.size());
  for (size_t i = 0; i < bf16.size(); ++i)
    bf16[i] = FloatToBF16Bits(weights_[i]);
  auto q = Quantize(kAffine4, DType::kBF16, bf16.data(), kN, kK);
  ASSERT_TRUE(q.ok()) << q.status();
  const std::string path = dir_.File("model.safetensors");
  WriteModel(path, QuantizedTensors(kUp, *q), {});
  auto file = OpenModel(path);
  ASSERT_NE(file, nullptr);
  EXPECT_EQ(file->Find(absl::StrCat(kUp, ".scales"))->dtype, DType::kBF16);
  auto loaded = LoadQuantizedLayer(*file, kUp, kAffine4);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->dtype, DType::kBF16);
  EXPECT_EQ(loaded->scales, q->scales);
  EXPECT_EQ(loaded->biases, q->biases);
}

TEST_F(MlxFileTest, WrongScalesDtypeIsInvalid) {
  const std::string path = dir_.File("model.safetensors");
  const std::vector<uint8_t> u8_groups(kN * 4, 1);
  const std::vector<float> f32_scales(kN * 8, 1.0f);
  WriteModel(
      path,
      {{absl::StrCat(kUp, ".weight"),
        DType::kU32,
        {kN, 32},
        BytesOf(affine_.wq)},
       {absl::StrCat(kUp, ".scales"), DType::kU8, {kN, 4}, BytesOf(u8_groups)},
       {absl::StrCat(kUp, ".biases"), DType::kU8, {kN, 4}, BytesOf(u8_groups)},
       {absl::StrCat(kDown, ".weight"),
        DType::kU32,
        {kN, 32},
        BytesOf(mxfp4_.wq)},
       {absl::StrCat(kDown, ".scales"),
        DType::kF32,
        {kN, 8},
        BytesOf(f32_scales)}},
      {});
  auto file = OpenModel(path);
  ASSERT_NE(file, nullptr);

  auto up = LoadQuantizedLayer(*file, kUp, kAffine4);
  ASSERT_FALSE(up.ok());
  EXPECT_EQ(up.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(up.status()),
              AllOf(HasSubstr(absl::StrCat(kUp, ".scales")),
                    HasSubstr("F32, F16 or BF16"), HasSubstr("got U8")));

  auto down = LoadQuantizedLayer(*file, kDown, kMxfp4);
  ASSERT_FALSE(down.ok());
  EXPECT_EQ(down.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(down.status()),
              AllOf(HasSubstr(absl::StrCat(kDown, ".scales")), HasSubstr("U8"),
                    HasSubstr("got F32")));
}

TEST_F(MlxFileTest, WrongWeightIsInvalid) {
  const std::string path = dir_.File("model.safetensors");
  const std::vector<float> f32_weight(kN * 32, 0.0f);
  WriteModel(path,
             {{absl::StrCat(kUp, ".weight"),
               DType::kF32,
               {kN, 32},
               BytesOf(f32_weight)},
              {absl::StrCat(kUp, ".scales"),
               DType::kF32,
               {kN, 4},
               BytesOf(affine_.scales)},
              {absl::StrCat(kUp, ".biases"),
               DType::kF32,
               {kN, 4},
               BytesOf(affine_.biases)},
              {absl::StrCat(kGate, ".weight"),
               DType::kU32,
               {kN * 32},
               BytesOf(affine_.wq)},
              {absl::StrCat(kGate, ".scales"),
               DType::kF32,
               {kN, 4},
               BytesOf(affine_.scales)},
              {absl::StrCat(kGate, ".biases"),
               DType::kF32,
               {kN, 4},
               BytesOf(affine_.biases)}},
             {});
  auto file = OpenModel(path);
  ASSERT_NE(file, nullptr);
  for (const char* layer : {kUp, kGate}) {
    SCOPED_TRACE(layer);
    auto q = LoadQuantizedLayer(*file, layer, kAffine4);
    ASSERT_FALSE(q.ok());
    EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(
        Message(q.status()),
        AllOf(HasSubstr(absl::StrCat(layer, ".weight")), HasSubstr("2-D U32")));
  }
}

TEST_F(MlxFileTest, MissingOrUnexpectedBiasesAreInvalid) {
  const std::string path = dir_.File("model.safetensors");
  std::vector<TensorToWrite> tensors = QuantizedTensors(kUp, affine_);
  tensors.pop_back();  // drop .biases
  std::vector<TensorToWrite> down = QuantizedTensors(kDown, mxfp4_);
  tensors.insert(tensors.end(), down.begin(), down.end());
  const std::vector<uint8_t> extra(kN * 8, 0);
  tensors.push_back(
      {absl::StrCat(kDown, ".biases"), DType::kU8, {kN, 8}, BytesOf(extra)});
  WriteModel(path, tensors, {});
  auto file = OpenModel(path);
  ASSERT_NE(file, nullptr);

  auto up = LoadQuantizedLayer(*file, kUp, kAffine4);
  ASSERT_FALSE(up.ok());
  EXPECT_EQ(up.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(up.status()),
              HasSubstr(absl::StrCat(kUp, ".biases is missing")));

  auto down_q = LoadQuantizedLayer(*file, kDown, kMxfp4);
  ASSERT_FALSE(down_q.ok());
  EXPECT_EQ(down_q.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      Message(down_q.status()),
      AllOf(HasSubstr(absl::StrCat(kDown, ".biases")), HasSubstr("no biases")));
}

TEST_F(MlxFileTest, BiasesOfOtherDtypeAreInvalid) {
  const std::string path = dir_.File("model.safetensors");
  std::vector<TensorToWrite> tensors = QuantizedTensors(kUp, affine_);
  const std::vector<uint16_t> f16_biases(kN * 4, 0);
  tensors[2] = {
      absl::StrCat(kUp, ".biases"), DType::kF16, {kN, 4}, BytesOf(f16_biases)};
  WriteModel(path, tensors, {});
  auto file = OpenModel(path);
  ASSERT_NE(file, nullptr);
  auto up = LoadQuantizedLayer(*file, kUp, kAffine4);
  ASSERT_FALSE(up.ok());
  EXPECT_EQ(up.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(up.status()),
              AllOf(HasSubstr(absl::StrCat(kUp, ".biases")), HasSubstr("F16")));
}

TEST_F(MlxFileTest, NonFiniteScalesAreInvalid) {
  // NaN scale at row 3, group 2.
  QuantizedMatrix nan_scale = affine_;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(nan_scale.scales.data() + (3 * 4 + 2) * sizeof(float), &nan,
              sizeof(float));
  // Infinite bias at row 5, group 1.
  QuantizedMatrix inf_bias = affine_;
  const float inf = std::numeric_limits<float>::infinity();
  std::memcpy(inf_bias.biases.data() + (5 * 4 + 1) * sizeof(float), &inf,
              sizeof(float));
  // E8M0 NaN (0xFF) at row 6, group 7.
  QuantizedMatrix nan_e8m0 = mxfp4_;
  nan_e8m0.scales[6 * 8 + 7] = 0xFF;

  const std::string path = dir_.File("model.safetensors");
  std::vector<TensorToWrite> tensors = QuantizedTensors(kUp, nan_scale);
  for (TensorToWrite& t : QuantizedTensors(kGate, inf_bias))
    tensors.push_back(t);
  for (TensorToWrite& t : QuantizedTensors(kDown, nan_e8m0))
    tensors.push_back(t);
  WriteModel(path, tensors, {});
  auto file = OpenModel(path);
  ASSERT_NE(file, nullptr);

  auto up = LoadQuantizedLayer(*file, kUp, kAffine4);
  ASSERT_FALSE(up.ok());
  EXPECT_EQ(up.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      Message(up.status()),
      AllOf(HasSubstr(kUp), HasSubstr("row 3, group 2"), HasSubstr("nan")));

  auto gate = LoadQuantizedLayer(*file, kGate, kAffine4);
  ASSERT_FALSE(gate.ok());
  EXPECT_EQ(gate.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(gate.status()),
              AllOf(HasSubstr(kGate), HasSubstr("row 5, group 1")));

  auto down = LoadQuantizedLayer(*file, kDown, kMxfp4);
  ASSERT_FALSE(down.ok());
  EXPECT_EQ(down.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      Message(down.status()),
      AllOf(HasSubstr(kDown), HasSubstr("row 6, group 7"), HasSubstr("0xFF")));
}

}  // namespace
}  // namespace qlinear
