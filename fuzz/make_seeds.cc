// fuzz_seeds GOLDEN_DIR OUT_DIR: writes each fuzz target's seed corpus,
// OUT_DIR/<target>/, from slices of the MLX golden files: the first two rows
// of each file's tensors (so seeds stay a few KB while keeping MLX's exact
// bytes), in the input form each target reads (see its header comment).
// Run by fuzz/run.sh; the seeds are rebuilt, never committed.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/mlx_file.h"
#include "core/safetensors.h"
#include "fuzz/fuzz_input.h"
#include "proto/wire.h"
#include "qlinear/v1/qlinear.pb.h"

namespace qlinear::fuzz {
namespace {

namespace fs = std::filesystem;

constexpr char kLayer[] = "model.layers.0.mlp.up_proj";

struct Slice {
  std::string stem;  // golden file name without extension
  QuantParams params;
  DType dtype = DType::kF32;
  int64_t n = 0, k = 0;
  std::map<std::string, std::string> metadata;
  // name -> (dtype, shape, bytes) of the first rows
  struct T {
    DType dtype;
    std::vector<int64_t> shape;
    std::string bytes;
  };
  std::map<std::string, T> tensors;
};

std::string ReadAll(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void Write(const fs::path& path, absl::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// SliceOf reads the first `rows` rows of every tensor of a golden file.
std::optional<Slice> SliceOf(const fs::path& path, int64_t rows) {
  auto file = SafetensorsFile::Open(path.string());
  if (!file.ok()) return std::nullopt;
  Slice s;
  s.stem = path.stem().string();
  s.metadata = (*file)->metadata();
  auto mode = ParseQuantMode(s.metadata["mode"]);
  int bits = 0, gs = 0;
  auto dtype = ParseFloatDType(s.metadata["dtype"]);
  if (!mode.ok() || !dtype || !absl::SimpleAtoi(s.metadata["bits"], &bits) ||
      !absl::SimpleAtoi(s.metadata["group_size"], &gs)) {
    return std::nullopt;
  }
  s.params = QuantParams{*mode, bits, gs};
  s.dtype = *dtype;
  for (const TensorInfo& t : (*file)->tensors()) {
    if (t.shape.size() != 2) continue;
    const int64_t r = std::min(rows, t.shape[0]);
    const size_t row_bytes = static_cast<size_t>(t.shape[1]) * DTypeSize(t.dtype);
    auto data = (*file)->Data(t);
    s.tensors[t.name] = {t.dtype, {r, t.shape[1]},
                         std::string(reinterpret_cast<const char*>(data.data()), r * row_bytes)};
  }
  if (!s.tensors.count("wq") || !s.tensors.count("w") || !s.tensors.count("x")) return std::nullopt;
  s.n = s.tensors["wq"].shape[0];
  s.k = s.tensors["w"].shape[1];
  return s;
}

// FileBytes writes tensors (renamed by `names`: golden name -> file name)
// to a safetensors file and returns its bytes.
std::string FileBytes(const Slice& s, const std::map<std::string, std::string>& names,
                      const std::map<std::string, std::string>& metadata, const fs::path& tmp) {
  std::vector<TensorToWrite> tensors;
  for (const auto& [from, to] : names) {
    auto it = s.tensors.find(from);
    if (it == s.tensors.end()) continue;
    tensors.push_back({to, it->second.dtype, it->second.shape, Bytes(it->second.bytes)});
  }
  if (!WriteSafetensors(tmp.string(), tensors, metadata).ok()) return "";
  return ReadAll(tmp);
}

std::string Serialized(const google::protobuf::Message& m) { return m.SerializeAsString(); }

void WriteSeeds(const Slice& s, size_t index, const fs::path& out) {
  const fs::path tmp = out / "tmp.safetensors";
  const std::string quant_json = QuantizationConfig::ToJson(s.params);
  const std::string config = absl::StrCat(R"({"model_type": "llama", "quantization": )",
                                          quant_json, "}");
  const std::string name = s.stem;

  // safetensors_fuzz: the slice as it is, golden names and metadata.
  Write(out / "safetensors_fuzz" / name,
        FileBytes(s, {{"w", "w"}, {"wq", "wq"}, {"scales", "scales"}, {"biases", "biases"},
                      {"x", "x"}, {"y", "y"}},
                  s.metadata, tmp));

  // params_fuzz: metadata quantization, config.json, control bytes + layer.
  const auto& wq = s.tensors.at("wq");
  const auto& sc = s.tensors.at("scales");
  const uint8_t sdtype = sc.dtype == DType::kU8 ? 4 : s.dtype == DType::kF16 ? 1
                                                  : s.dtype == DType::kBF16 ? 2 : 3;
  std::string control;
  control.push_back(0);  // U32 weight
  control.push_back(static_cast<char>(s.n - 1));
  control.push_back(static_cast<char>(wq.shape[1] & 0xff));
  control.push_back(static_cast<char>(wq.shape[1] >> 8));
  control.push_back(static_cast<char>(sdtype));
  control.push_back(static_cast<char>(sc.shape[1] & 0xff));
  control.push_back(static_cast<char>(sc.shape[1] >> 8));
  control.push_back(static_cast<char>(s.params.has_biases() ? 8 : 0));
  control.append(5, '\0');  // no overrides
  control += kLayer;
  const std::string per_layer = QuantizationConfig::ToJson(
      DefaultQuantParams(QuantMode::kAffine), {{kLayer, s.params}});
  Write(out / "params_fuzz" / name, JoinParts({quant_json, "", control}));
  Write(out / "params_fuzz" / (name + "-config"), JoinParts({"", config, control}));
  Write(out / "params_fuzz" / (name + "-layer"), JoinParts({per_layer, config, control}));

  // checkpoint_fuzz: a folder (one or two shards, with or without index)
  // or a single file describing itself.
  const std::string P = kLayer;
  std::map<std::string, std::string> quantized = {
      {"wq", P + ".weight"}, {"scales", P + ".scales"}, {"biases", P + ".biases"}};
  std::map<std::string, std::string> all = quantized;
  all["w"] = "model.layers.0.mlp.gate_proj.weight";
  switch (index % 3) {
    case 0:
      Write(out / "checkpoint_fuzz" / name,
            JoinParts({config, "", FileBytes(s, all, {}, tmp)}));
      break;
    case 1: {
      const std::string a = FileBytes(s, quantized, {}, tmp);
      const std::string b = FileBytes(s, {{"w", "model.layers.0.mlp.gate_proj.weight"}}, {}, tmp);
      std::string index_json = R"({"metadata": {}, "weight_map": {)";
      for (const auto& [from, to] : quantized) {
        if (!s.tensors.count(from)) continue;
        absl::StrAppend(&index_json, "\"", to, "\": \"model-00001-of-00002.safetensors\", ");
      }
      absl::StrAppend(&index_json,
                      R"("model.layers.0.mlp.gate_proj.weight": "model-00002-of-00002.safetensors"}})");
      Write(out / "checkpoint_fuzz" / name, JoinParts({config, index_json, a, b}));
      break;
    }
    default:
      Write(out / "checkpoint_fuzz" / name,
            FileBytes(s, all, {{"quantization", quant_json}}, tmp));
  }

  // quantize_stream_fuzz: header, the weight in two chunks, the bias.
  {
    const auto& w = s.tensors.at("w");
    v1::QuantizeChunk header;
    auto* h = header.mutable_header();
    h->set_name("fuzz");
    h->set_out_features(s.n);
    h->set_in_features(s.k);
    h->set_dtype(ToProto(s.dtype));
    *h->mutable_spec() = ToProto(s.params);
    h->set_has_bias(index % 2 == 0);
    h->set_replace(true);
    std::vector<std::string> parts = {Serialized(header)};
    const size_t cut = w.bytes.size() / 3;
    v1::QuantizeChunk c;
    c.set_weight(w.bytes.substr(0, cut));
    parts.push_back(Serialized(c));
    c.set_weight(w.bytes.substr(cut));
    parts.push_back(Serialized(c));
    if (h->has_bias()) {
      // The bias is the first N values of w's first row (N <= K).
      c.set_bias(w.bytes.substr(0, static_cast<size_t>(s.n) * DTypeSize(s.dtype)));
      parts.push_back(Serialized(c));
    }
    Write(out / "quantize_stream_fuzz" / name, JoinParts(parts));
  }

  // load_stream_fuzz: header, weight, scales, biases (affine), bias.
  {
    v1::LoadQuantizedChunk header;
    auto* h = header.mutable_header();
    h->set_name("fuzz");
    h->set_out_features(s.n);
    h->set_in_features(s.k);
    *h->mutable_spec() = ToProto(s.params);
    h->set_scales_dtype(ToProto(sc.dtype));
    h->set_has_bias(index % 2 == 0);
    h->set_bias_dtype(v1::F32);
    h->set_replace(true);
    std::vector<std::string> parts = {Serialized(header)};
    v1::LoadQuantizedChunk c;
    c.set_weight(wq.bytes);
    parts.push_back(Serialized(c));
    c.set_scales(sc.bytes);
    parts.push_back(Serialized(c));
    if (s.params.has_biases()) {
      c.set_biases(s.tensors.at("biases").bytes);
      parts.push_back(Serialized(c));
    }
    if (h->has_bias()) {
      c.set_bias(std::string(static_cast<size_t>(s.n) * 4, '\0'));
      parts.push_back(Serialized(c));
    }
    Write(out / "load_stream_fuzz" / name, JoinParts(parts));
  }

  // forward_fuzz: one row of x for the layer forward_fuzz serves at this K
  // ("k256": affine b4 g64, "k384": mxfp4 g32; forward_fuzz.cc).
  {
    const auto& x = s.tensors.at("x");
    v1::ForwardRequest r;
    r.set_layer(absl::StrCat("k", s.k));
    r.mutable_input()->set_dtype(ToProto(x.dtype));
    r.mutable_input()->add_shape(1);
    r.mutable_input()->add_shape(s.k);
    r.mutable_input()->set_data(x.bytes.substr(0, static_cast<size_t>(s.k) * DTypeSize(x.dtype)));
    r.set_output_dtype(index % 2 ? v1::F32 : v1::DTYPE_UNSPECIFIED);
    r.set_request_id(absl::StrCat(index));
    Write(out / "forward_fuzz" / name, Serialized(r));
  }
  fs::remove(tmp);
}

int Main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: fuzz_seeds GOLDEN_DIR OUT_DIR\n");
    return 2;
  }
  const fs::path golden = argv[1], out = argv[2];
  for (const char* t : {"safetensors_fuzz", "params_fuzz", "checkpoint_fuzz",
                        "quantize_stream_fuzz", "load_stream_fuzz", "forward_fuzz"}) {
    fs::create_directories(out / t);
  }
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(golden)) {
    if (e.path().extension() == ".safetensors") files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  size_t written = 0;
  for (size_t i = 0; i < files.size(); ++i) {
    auto slice = SliceOf(files[i], 2);
    if (!slice) {
      std::fprintf(stderr, "fuzz_seeds: skipped %s (not a golden file)\n", files[i].c_str());
      continue;
    }
    WriteSeeds(*slice, i, out);
    ++written;
  }
  if (written == 0) {
    std::fprintf(stderr, "fuzz_seeds: no golden file in %s\n", golden.c_str());
    return 1;
  }
  std::printf("fuzz_seeds: %zu golden files -> seeds in %s\n", written, out.c_str());
  return 0;
}

}  // namespace
}  // namespace qlinear::fuzz

int main(int argc, char** argv) { return qlinear::fuzz::Main(argc, argv); }
