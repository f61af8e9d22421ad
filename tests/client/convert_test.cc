// `qlinear convert` against mlx-lm's own output (the fixtures of
// ../shared/mlx-lm, made with mlx-lm's algorithms) and against the rules of
// mlx-lm 0.32.0's source, restated here independently of the converter.
#include <dirent.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "client/convert_command.h"
#include "core/half.h"
#include "core/quantize.h"
#include "core/safetensors.h"
#include "nlohmann/json.hpp"
#include "tests/server_process.h"
#include "tests/test_util.h"

namespace qlinear {
namespace {

using ::testing::HasSubstr;
using OJson = nlohmann::ordered_json;
namespace fs = std::filesystem;

const std::string kFixtures = QLINEAR_MLX_LM_DIR;
const std::string kFloat = kFixtures + "/tiny-llama-float";


void WriteText(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

struct RunResult {
  int exit_code = -1;
  std::string out, err;
};

RunResult RunCli(const ScopedTempDir& dir, const std::string& args) {
  const std::string out = dir.File("cli.stdout"), err = dir.File("cli.stderr");
  const int status = std::system(
      (std::string(QLINEAR_BINARY) + " " + args + " >'" + out + "' 2>'" + err + "'").c_str());
  RunResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = ReadFileBytes(out);
  r.err = ReadFileBytes(err);
  return r;
}

// Tensor is one tensor of a folder, with the file it lives in.
struct Tensor {
  std::string file;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

// ReadFolder merges every model*.safetensors of `dir`.
std::map<std::string, Tensor> ReadFolder(const std::string& dir,
                                         std::map<std::string, std::string>* metadata = nullptr) {
  std::map<std::string, Tensor> all;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename();
    if (name.rfind("model", 0) != 0 || e.path().extension() != ".safetensors") continue;
    auto f = SafetensorsFile::Open(e.path());
    EXPECT_TRUE(f.ok()) << f.status();
    if (!f.ok()) continue;
    if (metadata != nullptr) (*metadata)[name] = OJson((*f)->metadata()).dump();
    for (const TensorInfo& t : (*f)->tensors()) {
      auto d = (*f)->Data(t);
      EXPECT_EQ(all.count(t.name), 0u) << t.name << " twice";
      all[t.name] = {name, t.dtype, t.shape, {d.begin(), d.end()}};
    }
  }
  return all;
}

void ExpectSameTensors(const std::string& got_dir, const std::string& want_dir,
                       bool same_files = true) {
  const auto got = ReadFolder(got_dir), want = ReadFolder(want_dir);
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, w] : want) {
    auto g = got.find(name);
    ASSERT_NE(g, got.end()) << name << " missing";
    EXPECT_EQ(g->second.dtype, w.dtype) << name;
    EXPECT_EQ(g->second.shape, w.shape) << name;
    EXPECT_TRUE(g->second.bytes == w.bytes) << name << " differs";
    if (same_files) {
      EXPECT_EQ(g->second.file, w.file) << name;
    }
  }
}

OJson ReadJson(const std::string& path) { return OJson::parse(ReadFileBytes(path)); }

// CopyFloatFolder copies tiny-llama-float into `dst` with `edit` applied to
// its config (the index is left out: an HF folder may lack one).
void CopyFloatFolder(const std::string& dst, const std::function<void(OJson&)>& edit = {}) {
  fs::create_directories(dst);
  fs::copy_file(kFloat + "/model.safetensors", dst + "/model.safetensors");
  OJson config = ReadJson(kFloat + "/config.json");
  if (edit) edit(config);
  WriteText(dst + "/config.json", config.dump(4));
}

// NoLeftovers: `parent` holds neither `name` nor a staging sibling of it.
void ExpectNoLeftovers(const std::string& parent, const std::string& name) {
  for (const auto& e : fs::directory_iterator(parent)) {
    const std::string f = e.path().filename();
    EXPECT_NE(f, name);
    EXPECT_EQ(f.rfind(name + ".tmp-", 0), std::string::npos) << "left behind: " << f;
  }
}

// Parameter order of mlx-lm's llama.Model (FORMAT.md 1.1: llama.py 61-64,
// 116-118, 130-135, 160-165, 205-207), restated for the tiny fixtures.
std::vector<std::string> TinyLlamaModules() {
  std::vector<std::string> m = {"model.embed_tokens"};
  for (int i = 0; i < 2; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    for (const char* s : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                          "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj", "mlp.up_proj"}) {
      m.push_back(p + s);
    }
  }
  m.push_back("lm_head");
  return m;  // the quantizable ones (norms are 1-D)
}

TEST(ConvertTest, DefaultsReproduceTinyLlama4bit) {
  ScopedTempDir dir("convert_default");
  const std::string out = dir.File("q");
  RunResult r = RunCli(dir, "convert --in " + kFloat + " --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("model.layers.0.self_attn.q_proj: [256, 256] F16 -> affine b4 g64"));
  const std::string want = kFixtures + "/tiny-llama-4bit";
  ExpectSameTensors(out, want);
  const OJson got_config = ReadJson(out + "/config.json"),
              want_config = ReadJson(want + "/config.json");
  EXPECT_EQ(got_config["quantization"], want_config["quantization"]);
  EXPECT_EQ(got_config["quantization_config"], want_config["quantization_config"]);
  EXPECT_EQ(ReadJson(out + "/model.safetensors.index.json"),
            ReadJson(want + "/model.safetensors.index.json"));
  // Stronger: both JSON files are byte-identical to what mlx-lm's json.dump wrote.
  EXPECT_EQ(ReadFileBytes(out + "/config.json"), ReadFileBytes(want + "/config.json"));
  EXPECT_EQ(ReadFileBytes(out + "/model.safetensors.index.json"),
            ReadFileBytes(want + "/model.safetensors.index.json"));
  std::map<std::string, std::string> meta;
  ReadFolder(out, &meta);
  EXPECT_EQ(meta["model.safetensors"], R"({"format":"mlx"})");
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(out)) files.push_back(e.path().filename());
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{"config.json", "model.safetensors",
                                             "model.safetensors.index.json"}));
  for (const auto& e : fs::directory_iterator(dir.path())) {  // no staging folder left
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  }
}

// convert.py 130-145: every floating tensor is cast to torch_dtype first, so
// a float32 copy of the float16 model quantizes to the same bytes (casting
// back is exact), and a tie is rounded to even.
TEST(ConvertTest, CastsToTorchDtypeBeforeQuantizing) {
  ScopedTempDir dir("convert_cast");
  const std::string in = dir.File("f32");
  fs::create_directories(in);
  fs::copy_file(kFloat + "/config.json", in + "/config.json");
  auto f = SafetensorsFile::Open(kFloat + "/model.safetensors");
  ASSERT_TRUE(f.ok());
  std::deque<std::vector<uint8_t>> buffers;
  std::vector<TensorToWrite> tensors;
  // Halfway cases: f16 1+2^-11 -> 1 (even), 1+3*2^-11 -> 1+2^-9; bf16
  // 0x3F808000 -> 0x3F80, 0x3F818000 -> 0x3F82.
  const uint32_t ties[4] = {0x3F800000u | (1u << 12), 0x3F800000u | (3u << 12), 0x3F808000u,
                            0x3F818000u};
  for (const TensorInfo& t : (*f)->tensors()) {
    std::vector<uint8_t> w(static_cast<size_t>(t.elements()) * 4);
    for (int64_t i = 0; i < t.elements(); ++i) {
      StoreFloat(DType::kF32, w.data(), i, LoadFloat(t.dtype, (*f)->Data(t).data(), i));
    }
    if (t.name == "model.norm.weight") std::memcpy(w.data(), ties, sizeof(ties));
    buffers.push_back(std::move(w));
    tensors.push_back({t.name, DType::kF32, t.shape, absl::MakeConstSpan(buffers.back())});
  }
  ASSERT_TRUE(WriteSafetensors(in + "/model.safetensors", tensors, {{"format", "pt"}}).ok());

  RunResult r = RunCli(dir, "convert --in " + in + " --out " + dir.File("q16"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto got = ReadFolder(dir.File("q16"));
  const auto want = ReadFolder(kFixtures + "/tiny-llama-4bit");
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, w] : want) {
    ASSERT_TRUE(got.count(name)) << name;
    EXPECT_EQ(got.at(name).dtype, w.dtype) << name;
    if (name != "model.norm.weight") {
      EXPECT_TRUE(got.at(name).bytes == w.bytes) << name;
    }
  }
  const std::vector<uint8_t>& norm16 = got.at("model.norm.weight").bytes;
  uint16_t h[4];
  std::memcpy(h, norm16.data(), 8);
  EXPECT_EQ(h[0], 0x3C00);                        // 1 + 2^-11: even neighbour 1.0
  EXPECT_EQ(h[1], 0x3C02);                        // 1 + 3*2^-11: even neighbour 1 + 2^-9
  EXPECT_EQ(h[2], FloatToHalfBits(1.00390625f));  // 0x3F808000 = 1 + 2^-8, exact in f16

  r = RunCli(dir, "convert --in " + in + " --out " + dir.File("qbf") + " --dtype bf16");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto bf = ReadFolder(dir.File("qbf"));
  EXPECT_EQ(bf.at("model.layers.0.self_attn.q_proj.scales").dtype, DType::kBF16);
  EXPECT_EQ(bf.at("model.layers.0.self_attn.q_proj.bias").dtype, DType::kBF16);
  EXPECT_EQ(bf.at("model.layers.0.input_layernorm.weight").dtype, DType::kBF16);
  std::memcpy(h, bf.at("model.norm.weight").bytes.data(), 8);
  EXPECT_EQ(h[2], 0x3F80);  // halfway: to even
  EXPECT_EQ(h[3], 0x3F82);
}

// tiny-llama-mixed was made with a model-style predicate (dicts without
// "mode") and make_shards' cap lowered to 658,944 bytes, splitting
// layers.1.self_attn.q_proj across the two shards. The same predicate and
// cap must rebuild it: same shards, same tensors, same JSON bytes.
TEST(ConvertTest, PredicateAndTinyCapRebuildTinyLlamaMixed) {
  ScopedTempDir dir("convert_mixed");
  ConvertOptions o;
  o.in = kFloat;
  o.out = dir.File("mixed");
  o.max_shard_bytes = 658944;
  o.predicate = [](const std::string& path) -> ModuleRule {
    if (path == "model.layers.0.self_attn.v_proj") {
      return {true, R"({"group_size": 32, "bits": 6})"};
    }
    if (path.find("mlp.down_proj") != std::string::npos) {
      return {true, R"({"group_size": 64, "bits": 8})"};
    }
    if (path == "lm_head") return {true, R"({"group_size": 128, "bits": 8})"};
    return {};
  };
  auto result = ConvertFolder(o);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->shards, (std::vector<std::string>{"model-00001-of-00002.safetensors",
                                                      "model-00002-of-00002.safetensors"}));
  const std::string want = kFixtures + "/tiny-llama-mixed";
  ExpectSameTensors(o.out, want, /*same_files=*/true);
  for (const char* json : {"/config.json", "/model.safetensors.index.json"}) {
    EXPECT_EQ(ReadFileBytes(o.out + json), ReadFileBytes(want + json)) << json;
  }
}

// make_shards (utils.py 642-663), restated: greedy in parameter order, a new
// shard when the next tensor would pass the cap.
TEST(ConvertTest, TinyCapShardsMatchTheirIndex) {
  for (uint64_t cap : {uint64_t{200000}, uint64_t{1000}}) {
    ScopedTempDir dir("convert_shards");
    ConvertOptions o;
    o.in = kFloat;
    o.out = dir.File("q");
    o.max_shard_bytes = cap;
    auto result = ConvertFolder(o);
    ASSERT_TRUE(result.ok()) << result.status();
    // The expected assignment, from the 4-bit fixture's tensor sizes.
    const auto ref = ReadFolder(kFixtures + "/tiny-llama-4bit");
    std::vector<std::string> order;
    for (const std::string& m : TinyLlamaModules()) {
      if (m == "lm_head") order.push_back("model.norm.weight");
      for (const char* leaf : {".weight", ".scales", ".biases", ".bias"}) {
        if (ref.count(m + leaf)) order.push_back(m + leaf);
      }
      if (m.find("up_proj") != std::string::npos) {
        const std::string layer = m.substr(0, m.find(".mlp."));
        order.push_back(layer + ".input_layernorm.weight");
        order.push_back(layer + ".post_attention_layernorm.weight");
      }
    }
    ASSERT_EQ(order.size(), ref.size());
    std::vector<std::vector<std::string>> shards(1);
    uint64_t size = 0;
    for (const std::string& name : order) {
      const uint64_t bytes = ref.at(name).bytes.size();
      if (size + bytes > cap) shards.emplace_back(), size = 0;
      shards.back().push_back(name);
      size += bytes;
    }
    const size_t n = shards.size();
    ASSERT_GT(n, 2u);
    if (cap == 1000) {
      EXPECT_TRUE(shards[0].empty());  // mlx-lm's quirk: the first shard is empty
    }
    std::map<std::string, std::string> metadata;
    const auto got = ReadFolder(o.out, &metadata);
    const OJson index = ReadJson(o.out + "/model.safetensors.index.json");
    uint64_t total = 0;
    for (size_t s = 0; s < n; ++s) {
      char file[64];
      std::snprintf(file, sizeof(file), "model-%05zu-of-%05zu.safetensors", s + 1, n);
      EXPECT_EQ(result->shards[s], file);
      EXPECT_EQ(metadata[file], R"({"format":"mlx"})") << file;
      for (const std::string& name : shards[s]) {
        ASSERT_TRUE(got.count(name)) << name;
        EXPECT_EQ(got.at(name).file, file) << name;
        EXPECT_EQ(index["weight_map"][name], file) << name;
        EXPECT_TRUE(got.at(name).bytes == ref.at(name).bytes) << name;
        total += got.at(name).bytes.size();
      }
    }
    EXPECT_EQ(metadata.size(), n);
    EXPECT_EQ(index["weight_map"].size(), got.size());
    EXPECT_EQ(index["metadata"]["total_size"], total);
    EXPECT_EQ(index["metadata"]["total_parameters"], 1836544);
  }
}

// The predicates of convert.py 56-75 (mixed_quant_predicate), restated: the
// layer index is path component 2 (0 for embed_tokens and lm_head);
// use_more_bits = i < L//8 or i >= 7L//8 or (i - L//8) % 3 == 2 (Python's %);
// v_proj and down_proj get high bits when use_more_bits, lm_head always, the
// rest low bits; the dict carries the CLI's --q-group-size (None if absent).
int RecipeBits(const std::string& recipe, const std::string& path, int layers) {
  const int low = recipe == "mixed_2_6" ? 2 : recipe == "mixed_4_6" ? 4 : 3;
  const int high = recipe == "mixed_3_4" ? 4 : 6;
  int index = 0;
  if (path.rfind("model.layers.", 0) == 0) index = std::stoi(path.substr(13));
  const int l8 = layers / 8;
  const bool more = index < l8 || index >= 7 * layers / 8 || (((index - l8) % 3) + 3) % 3 == 2;
  const bool v = path.find("v_proj") != std::string::npos;
  const bool down = path.find("down_proj") != std::string::npos;
  if ((v || down) && more) return high;
  if (path.find("lm_head") != std::string::npos) return high;
  return low;
}

// Forward a few random rows through every layer `server` serves from
// `folder` and compare with x * dequantize(W)^T (+ bias) computed from the
// folder's own tensors.
void ExpectServesItsOwnWeights(ServerProcess& server, const std::string& folder,
                               const OJson& quantization) {
  ASSERT_TRUE(server.started());
  ASSERT_TRUE(server.WaitServing()) << folder << ": " << server.Log();
  auto client = Client::Connect(server.target());
  const auto tensors = ReadFolder(folder);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0, 1);
  for (const std::string& layer : TinyLlamaModules()) {
    const OJson& e = quantization.contains(layer) ? quantization[layer] : quantization;
    auto mode = ParseQuantMode(e.value("mode", std::string("affine")));
    ASSERT_TRUE(mode.ok());
    const QuantParams def = DefaultQuantParams(*mode);
    QuantizedMatrix q;
    q.params = {*mode, e["bits"].is_null() ? def.bits : e["bits"].get<int>(),
                e["group_size"].is_null() ? def.group_size : e["group_size"].get<int>()};
    const Tensor& w = tensors.at(layer + ".weight");
    const Tensor& s = tensors.at(layer + ".scales");
    q.n = w.shape[0];
    q.k = w.shape[1] * 32 / q.params.bits;
    q.dtype = q.params.has_biases() ? s.dtype : DType::kBF16;
    q.wq.resize(w.bytes.size() / 4);
    std::memcpy(q.wq.data(), w.bytes.data(), w.bytes.size());
    q.scales = s.bytes;
    if (q.params.has_biases()) q.biases = tensors.at(layer + ".biases").bytes;
    std::vector<float> wdq(static_cast<size_t>(q.n * q.k));
    Dequantize(q, DType::kF32, wdq.data());
    const int rows = 3;
    std::vector<float> x(static_cast<size_t>(rows * q.k));
    for (float& v : x) v = normal(rng);
    v1::ForwardRequest request;
    request.set_layer(layer);
    request.mutable_input()->set_dtype(v1::F32);
    request.mutable_input()->add_shape(rows);
    request.mutable_input()->add_shape(q.k);
    request.mutable_input()->set_data(x.data(), x.size() * 4);
    request.set_output_dtype(v1::F32);
    auto response = client->Forward(request);
    ASSERT_TRUE(response.ok()) << layer << ": " << response.status();
    ASSERT_EQ(response->output().data().size(), static_cast<size_t>(rows * q.n) * 4) << layer;
    std::vector<float> y(static_cast<size_t>(rows * q.n)), want(y.size());
    std::memcpy(y.data(), response->output().data().data(), y.size() * 4);
    const auto bias = tensors.find(layer + ".bias");
    for (int r = 0; r < rows; ++r) {
      for (int64_t o = 0; o < q.n; ++o) {
        double acc = 0;
        for (int64_t c = 0; c < q.k; ++c) {
          acc += static_cast<double>(x[r * q.k + c]) * wdq[o * q.k + c];
        }
        if (bias != tensors.end()) {
          acc += LoadFloat(bias->second.dtype, bias->second.bytes.data(), o);
        }
        want[r * q.n + o] = static_cast<float>(acc);
      }
    }
    EXPECT_LE(NormalisedError(y, want), 1e-5) << folder << " " << layer;
  }
}

struct ModeCase {
  std::string flags;
  std::string recipe;  // "" for a plain mode
  OJson global;
  std::optional<int> recipe_group_size;
};

TEST(ConvertTest, ModesAndRecipesFollowMlxLmPredicatesAndServe) {
  const std::vector<ModeCase> cases = {
      {"--mode mxfp4", "", {{"group_size", 32}, {"bits", 4}, {"mode", "mxfp4"}}, {}},
      {"--mode nvfp4", "", {{"group_size", 16}, {"bits", 4}, {"mode", "nvfp4"}}, {}},
      {"--mode mxfp8", "", {{"group_size", 32}, {"bits", 8}, {"mode", "mxfp8"}}, {}},
      {"--recipe mixed_2_6",
       "mixed_2_6",
       {{"group_size", 64}, {"bits", 4}, {"mode", "affine"}},
       {}},
      {"--recipe mixed_3_4",
       "mixed_3_4",
       {{"group_size", 64}, {"bits", 4}, {"mode", "affine"}},
       {}},
      {"--recipe mixed_3_6",
       "mixed_3_6",
       {{"group_size", 64}, {"bits", 4}, {"mode", "affine"}},
       {}},
      {"--recipe mixed_4_6",
       "mixed_4_6",
       {{"group_size", 64}, {"bits", 4}, {"mode", "affine"}},
       {}},
      {"--recipe mixed_3_4 --group-size 32 --bits 8",
       "mixed_3_4",
       {{"group_size", 32}, {"bits", 8}, {"mode", "affine"}},
       32},
  };
  ScopedTempDir dir("convert_modes");
  std::vector<std::string> outs;
  std::vector<OJson> wants;
  for (const ModeCase& c : cases) {
    SCOPED_TRACE(c.flags);
    const std::string out = dir.File(absl::StrCat("q", outs.size()));
    RunResult r = RunCli(dir, "convert --in " + kFloat + " --out " + out + " " + c.flags);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    OJson want = c.global;
    if (!c.recipe.empty()) {  // a dict for every quantizable module, in module order
      for (const std::string& m : TinyLlamaModules()) {
        want[m] = {{"group_size", c.recipe_group_size ? OJson(*c.recipe_group_size) : OJson()},
                   {"bits", RecipeBits(c.recipe, m, 2)},
                   {"mode", "affine"}};
      }
    }
    const OJson config = ReadJson(out + "/config.json");
    EXPECT_EQ(config["quantization"].dump(), want.dump());
    EXPECT_EQ(config["quantization_config"].dump(), want.dump());
    // The tensors agree with the parameters the config gives each module.
    const auto tensors = ReadFolder(out);
    const auto ref = ReadFolder(kFloat);
    for (const std::string& m : TinyLlamaModules()) {
      const OJson& e = want.contains(m) ? want[m] : want;
      const QuantMode mode = *ParseQuantMode(e["mode"].get<std::string>());
      const int bits = e["bits"], gs = e["group_size"].is_null() ? 64 : e["group_size"].get<int>();
      const std::vector<int64_t> shape = ref.at(m + ".weight").shape;
      EXPECT_EQ(tensors.at(m + ".weight").shape,
                (std::vector<int64_t>{shape[0], shape[1] * bits / 32}))
          << m;
      EXPECT_EQ(tensors.at(m + ".scales").shape, (std::vector<int64_t>{shape[0], shape[1] / gs}))
          << m;
      EXPECT_EQ(tensors.at(m + ".scales").dtype,
                mode == QuantMode::kAffine ? DType::kF16 : DType::kU8);
      EXPECT_EQ(tensors.count(m + ".biases"), mode == QuantMode::kAffine ? 1u : 0u) << m;
    }
    outs.push_back(out);
    wants.push_back(want);
  }
  // Every folder served by its own server; started together, because each
  // start waits out gRPC's reconnect backoff in WaitServing.
  std::vector<std::unique_ptr<ServerProcess>> servers;
  for (const std::string& out : outs) {
    ServerProcess::Options options;
    options.log = absl::StrCat(out, ".server.log");
    servers.push_back(std::make_unique<ServerProcess>(
        QLINEAR_SERVER_BINARY, std::vector<std::string>{"--threads", "1", "--model", out},
        options));
  }
  for (size_t i = 0; i < outs.size(); ++i) {
    SCOPED_TRACE(cases[i].flags);
    ExpectServesItsOwnWeights(*servers[i], outs[i], wants[i]);
  }
}

TEST(ConvertTest, TiedLmHeadIsDroppedAndOtherFilesAreCopied) {
  ScopedTempDir dir("convert_tied");
  const std::string in = dir.File("in");
  // tie_word_embeddings absent: mlx-lm's llama defaults it to True (llama.py 33).
  CopyFloatFolder(in, [](OJson& c) {
    c.erase("tie_word_embeddings");
    c["_name_or_path"] = "somewhere/tiny";
    c["x_floats"] = OJson::parse(
        "[1e16, 1234567890123456.0, 1.5e-7, 0.0001, 1e-5, -0.0, 1E5, "
        "0.1, 2.5, 1e22, 123456789.125]");
    c["x_text"] = "\u00e9\U0001F600\x7f\t\"\\ /";
  });
  WriteText(in + "/tokenizer.json", "{\"version\": \"1.0\"}");
  WriteText(in + "/generation_config.json", "{\"eos_token_id\": [2, 7]}");
  WriteText(in + "/modeling_tiny.py", "# custom code\n");
  RunResult r = RunCli(dir, "convert --in " + in + " --out " + dir.File("q"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("dropped 'lm_head.weight'"));
  const auto tensors = ReadFolder(dir.File("q"));
  EXPECT_EQ(tensors.count("lm_head.weight"), 0u);
  EXPECT_EQ(tensors.count("model.embed_tokens.scales"), 1u);
  const OJson config = ReadJson(dir.File("q/config.json"));
  EXPECT_EQ(config["eos_token_id"], OJson::parse("[2, 7]"));  // load_config, utils.py 281-291
  EXPECT_FALSE(config.contains("_name_or_path"));
  EXPECT_FALSE(config.contains("tie_word_embeddings"));
  // json.dump's layout of floats (repr) and strings (ensure_ascii), as
  // Python 3 prints these values.
  EXPECT_THAT(ReadFileBytes(dir.File("q/config.json")),
              HasSubstr("    \"x_floats\": [\n        1e+16,\n        1234567890123456.0,\n"
                        "        1.5e-07,\n        0.0001,\n        1e-05,\n        -0.0,\n"
                        "        100000.0,\n        0.1,\n        2.5,\n        1e+22,\n"
                        "        123456789.125\n    ],\n"
                        "    \"x_text\": \"\\u00e9\\ud83d\\ude00\\u007f\\t\\\"\\\\ /\"\n}"));
  for (const char* f : {"/tokenizer.json", "/generation_config.json", "/modeling_tiny.py"}) {
    EXPECT_EQ(ReadFileBytes(dir.File("q") + f), ReadFileBytes(in + f)) << f;
  }
  const OJson index = ReadJson(dir.File("q/model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_parameters"], 1836544 - 512 * 256);
}

// mistral is llama (MODEL_REMAPPING, utils.py 46-57); qwen3 adds
// self_attn.q_norm / k_norm after o_proj (qwen3.py 44-50) and requires
// tie_word_embeddings (qwen3.py 28).
TEST(ConvertTest, MistralAndQwen3) {
  ScopedTempDir dir("convert_families");
  CopyFloatFolder(dir.File("mistral"), [](OJson& c) { c["model_type"] = "mistral"; });
  ConvertOptions o;
  o.in = dir.File("mistral");
  o.out = dir.File("q_mistral");
  ASSERT_TRUE(ConvertFolder(o).ok());
  ExpectSameTensors(o.out, kFixtures + "/tiny-llama-4bit");

  const std::string qwen3 = dir.File("qwen3");
  CopyFloatFolder(qwen3, [](OJson& c) { c["model_type"] = "qwen3"; });
  std::vector<uint8_t> norm(64 * 2);
  for (size_t i = 0; i < 64; ++i) StoreFloat(DType::kF16, norm.data(), i, 1.0f + i / 128.0f);
  std::vector<TensorToWrite> norms;
  for (const char* n :
       {"model.layers.0.self_attn.q_norm.weight", "model.layers.0.self_attn.k_norm.weight",
        "model.layers.1.self_attn.q_norm.weight", "model.layers.1.self_attn.k_norm.weight"}) {
    norms.push_back({n, DType::kF16, {64}, absl::MakeConstSpan(norm)});
  }
  ASSERT_TRUE(WriteSafetensors(qwen3 + "/model-norms.safetensors", norms, {}).ok());
  o.in = qwen3;
  o.out = dir.File("q_qwen3");
  o.max_shard_bytes = 1;  // one tensor per shard: the shard number is the parameter position
  ASSERT_TRUE(ConvertFolder(o).ok());
  const auto got = ReadFolder(o.out);
  EXPECT_TRUE(got.at("model.layers.1.self_attn.k_norm.weight").bytes == norm);
  auto position = [&](const std::string& name) {
    return std::stoi(got.at(name).file.substr(6, 5));
  };
  const int o_biases = position("model.layers.1.self_attn.o_proj.biases");
  EXPECT_EQ(position("model.layers.1.self_attn.q_norm.weight"), o_biases + 1);
  EXPECT_EQ(position("model.layers.1.self_attn.k_norm.weight"), o_biases + 2);
  EXPECT_EQ(position("model.layers.1.mlp.gate_proj.weight"), o_biases + 3);

  OJson config = ReadJson(qwen3 + "/config.json");
  config.erase("tie_word_embeddings");
  WriteText(qwen3 + "/config.json", config.dump());
  o.out = dir.File("q_qwen3_untied");
  auto result = ConvertFolder(o);
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("tie_word_embeddings"));
}

TEST(ConvertTest, RefusesWhatMlxLmWouldNotConvertHere) {
  ScopedTempDir dir("convert_refuse");
  // OUT exists: refused, and left as it was.
  fs::create_directories(dir.File("exists"));
  WriteText(dir.File("exists/keep"), "mine");
  RunResult r = RunCli(dir, "convert --in " + kFloat + " --out " + dir.File("exists"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("already exists"));
  EXPECT_EQ(ReadFileBytes(dir.File("exists/keep")), "mine");
  // Not a folder; missing; already quantized.
  r = RunCli(dir, "convert --in " + kFloat + "/model.safetensors --out " + dir.File("o"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("is not a folder"));
  r = RunCli(dir, "convert --in " + dir.File("nothing") + " --out " + dir.File("o"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("nothing"));
  r = RunCli(dir, "convert --in " + kFixtures + "/tiny-llama-4bit --out " + dir.File("o"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("already quantized"));
  // Model types with per-model rules, and one convert does not know.
  const std::vector<std::pair<std::string, std::string>> types = {
      {"qwen3_moe", "mlp.gate at 8 bits"},
      {"mixtral", "3-D switch_mlp"},
      {"olmoe", "3-D expert"},
      {"gpt_oss", "router at 8 bits"},
      {"deepseek_v3", "cast_predicate"},
      {"kimi_k2", "deepseek_v3"},
      {"gemma2", "is not converted"}};
  for (const auto& [type, rule] : types) {
    CopyFloatFolder(dir.File(type), [&](OJson& c) { c["model_type"] = type; });
    r = RunCli(dir, "convert --in " + dir.File(type) + " --out " + dir.File("o"));
    EXPECT_EQ(r.exit_code, 1) << type;
    EXPECT_THAT(r.err, HasSubstr(rule)) << type;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  // qwen2 has q/k/v biases (qwen2.py 44-46); the fixture has q_proj's only.
  CopyFloatFolder(dir.File("qwen2"), [](OJson& c) { c["model_type"] = "qwen2"; });
  r = RunCli(dir, "convert --in " + dir.File("qwen2") + " --out " + dir.File("o"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("'model.layers.0.self_attn.k_proj.bias'"));
  // A 3-D weight is named.
  const std::string moe = dir.File("moe");
  CopyFloatFolder(moe);
  std::vector<uint8_t> experts(4 * 8 * 64 * 2);
  ASSERT_TRUE(WriteSafetensors(moe + "/model-extra.safetensors",
                               {{"model.layers.0.mlp.switch_mlp.up_proj.weight",
                                 DType::kF16,
                                 {4, 8, 64},
                                 absl::MakeConstSpan(experts)}},
                               {})
                  .ok());
  r = RunCli(dir, "convert --in " + moe + " --out " + dir.File("o"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("'model.layers.0.mlp.switch_mlp.up_proj.weight'"));
  EXPECT_THAT(r.err, HasSubstr("3-D"));
  ExpectNoLeftovers(dir.path(), "o");
  // Bad flags exit 2.
  for (const std::string& flags :
       {std::string("--in a"), std::string("--in a --out b --recipe mixed_9_9"),
        std::string("--in a --out b --recipe mixed_4_6 --mode mxfp4"),
        std::string("--in a --out b --bits 7"), std::string("--in a --out b --dtype f64"),
        std::string("--in a --out b --mode mxfp4 --group-size 64"),
        std::string("--in a --out b --frobnicate 1")}) {
    r = RunCli(dir, "convert " + flags);
    EXPECT_EQ(r.exit_code, 2) << flags << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr("usage: qlinear convert")) << flags;
  }
}

TEST(ConvertTest, FailedOrInterruptedConvertLeavesNothing) {
  ScopedTempDir dir("convert_fail");
  ConvertOptions o;
  o.in = kFloat;
  o.out = dir.File("q");
  o.max_shard_bytes = 200000;
  // A failure after the second shard reached the staging folder.
  int written = 0;
  o.after_shard = [&](const std::string&) {
    return ++written == 2 ? absl::DataLossError("injected") : absl::OkStatus();
  };
  auto result = ConvertFolder(o);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(written, 2);
  ExpectNoLeftovers(dir.path(), "q");
  // An interruption (what SIGINT / SIGTERM set) noticed after a shard.
  std::atomic<bool> cancel{false};
  o.cancel = &cancel;
  o.after_shard = [&](const std::string&) {
    cancel = true;
    return absl::OkStatus();
  };
  result = ConvertFolder(o);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled);
  ExpectNoLeftovers(dir.path(), "q");
  // The output's parent is a file: nothing can be created.
  WriteText(dir.File("file"), "x");
  o.after_shard = nullptr;
  o.cancel = nullptr;
  o.out = dir.File("file/q");
  result = ConvertFolder(o);
  EXPECT_FALSE(result.ok());
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("file/q"));
  ExpectNoLeftovers(dir.path(), "q");
  // And with nothing in the way it succeeds.
  o.out = dir.File("q");
  EXPECT_TRUE(ConvertFolder(o).ok());
}

}  // namespace
}  // namespace qlinear
