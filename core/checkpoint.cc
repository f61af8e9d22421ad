#include "core/checkpoint.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/half.h"
#include "core/mlx_file.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace qlinear {
namespace {

using Json = nlohmann::json;

constexpr char kIndexName[] = "model.safetensors.index.json";

absl::Status ErrnoStatus(int err, const std::string& what) {
  const std::string message = absl::StrCat(what, ": ", std::strerror(err));
  if (err == ENOENT || err == ENOTDIR) return absl::NotFoundError(message);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(message);
  return absl::InternalError(message);
}

// ReadText reads a whole file; an absent file is OK with `*exists` false.
absl::Status ReadText(const std::string& path, std::string* text, bool* exists) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      *exists = false;
      return absl::OkStatus();
    }
    return ErrnoStatus(errno, absl::StrCat("cannot read '", path, "'"));
  }
  std::ifstream in(path);
  if (!in) return ErrnoStatus(errno, absl::StrCat("cannot read '", path, "'"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  *text = buffer.str();
  *exists = true;
  return absl::OkStatus();
}

std::string Basename(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string Join(const std::string& dir, const std::string& name) {
  return absl::EndsWith(dir, "/") ? dir + name : absl::StrCat(dir, "/", name);
}

// ModelFiles lists dir/model*.safetensors (mlx-lm's glob), sorted.
absl::StatusOr<std::vector<std::string>> ModelFiles(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return ErrnoStatus(errno, absl::StrCat("cannot list folder '", dir, "'"));
  std::vector<std::string> names;
  while (dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (absl::StartsWith(name, "model") && absl::EndsWith(name, ".safetensors")) {
      names.push_back(name);
    }
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

// ModulePaths are the prefixes P of every tensor "P.<leaf>".
std::set<std::string> ModulePaths(const std::vector<const TensorInfo*>& tensors) {
  std::set<std::string> paths;
  for (const TensorInfo* t : tensors) {
    const size_t dot = t->name.find_last_of('.');
    if (dot != std::string::npos) paths.insert(t->name.substr(0, dot));
  }
  return paths;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& path,
                                                             const CheckpointOptions& options) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return ErrnoStatus(errno, absl::StrCat("cannot open '", path, "'"));
  }
  std::unique_ptr<Checkpoint> c(new Checkpoint());
  c->path_ = path;
  c->is_folder_ = S_ISDIR(st.st_mode);
  if (!c->is_folder_ && !S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", path, "' is neither a .safetensors file nor an mlx-lm model folder"));
  }
  QLINEAR_RETURN_IF_ERROR(c->ReadFiles(options.read_config_json || c->is_folder_));
  if (c->is_folder_) QLINEAR_RETURN_IF_ERROR(c->CheckIndex());
  QLINEAR_RETURN_IF_ERROR(c->FindLayers(options));
  return c;
}

absl::Status Checkpoint::ReadFiles(bool read_config) {
  std::string dir;
  if (is_folder_) {
    dir = path_;
    QLINEAR_ASSIGN_OR_RETURN(std::vector<std::string> names, ModelFiles(dir));
    if (names.empty()) {
      return absl::NotFoundError(absl::StrCat(
          "folder '", path_, "' holds no model*.safetensors file (an mlx-lm model folder has "
          "model.safetensors or model-00001-of-0000N.safetensors shards)"));
    }
    for (const std::string& n : names) files_.push_back(Join(dir, n));
  } else {
    const size_t slash = path_.find_last_of('/');
    dir = slash == std::string::npos ? "." : path_.substr(0, slash + 1);
    files_.push_back(path_);
  }
  config_path_ = Join(dir, "config.json");
  bool exists = false;
  if (read_config) QLINEAR_RETURN_IF_ERROR(ReadText(config_path_, &config_json_, &exists));
  if (exists && config_json_.empty()) config_json_ = " ";  // present but empty: malformed

  for (size_t i = 0; i < files_.size(); ++i) {
    auto file = SafetensorsFile::Open(files_[i]);
    if (!file.ok()) {
      return absl::Status(file.status().code(),
                          absl::StrCat("'", files_[i], "': ", file.status().message()));
    }
    shards_.push_back(*std::move(file));
    for (const TensorInfo& t : shards_.back()->tensors()) {
      auto [it, inserted] = by_name_.emplace(t.name, std::make_pair(&t, i));
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor '", t.name, "' is in two files: '", files_[it->second.second], "' and '",
            files_[i], "'"));
      }
      shard_of_[&t] = i;
    }
  }
  for (const auto& [name, entry] : by_name_) tensors_.push_back(entry.first);
  return absl::OkStatus();
}

absl::Status Checkpoint::CheckIndex() {
  const std::string index_path = Join(path_, kIndexName);
  std::string text;
  bool exists = false;
  QLINEAR_RETURN_IF_ERROR(ReadText(index_path, &text, &exists));
  if (!exists) return absl::OkStatus();
  Json root = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", index_path, "' is not a JSON object (it does not parse as JSON)"));
  }
  auto map = root.find("weight_map");
  if (map == root.end() || !map->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", index_path, "' has no \"weight_map\" object"));
  }
  std::map<std::string, size_t> shard_by_base;
  for (size_t i = 0; i < files_.size(); ++i) shard_by_base[Basename(files_[i])] = i;
  for (auto it = map->begin(); it != map->end(); ++it) {
    if (!it->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", index_path, "' maps '", it.key(), "' to ", it->dump(), "; expected a file name"));
    }
    const std::string file = it->get<std::string>();
    auto shard = shard_by_base.find(file);
    if (shard == shard_by_base.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", index_path, "' maps tensor '", it.key(), "' to '", file,
          "', which is not a model*.safetensors file of the folder"));
    }
    auto t = by_name_.find(it.key());
    if (t == by_name_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("'", index_path, "' maps tensor '", it.key(),
                                                     "' to '", file, "', which lacks it"));
    }
    if (t->second.second != shard->second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", index_path, "' maps tensor '", it.key(), "' to '", file, "', which lacks it; it is in '",
          files_[t->second.second], "'"));
    }
  }
  for (const TensorInfo* t : tensors_) {
    if (!map->contains(t->name)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t->name, "' of '",
                                                     files_[shard_of_.at(t)], "' is not in '",
                                                     index_path, "'"));
    }
  }
  return absl::OkStatus();
}

absl::Status Checkpoint::FindLayers(const CheckpointOptions& options) {
  QLINEAR_ASSIGN_OR_RETURN(
      QuantizationSources sources,
      QuantizationSources::FromParts(is_folder_ ? nullptr : &shards_[0]->metadata(), config_path_,
                                     config_json_, options.overrides));
  const std::set<std::string> modules = ModulePaths(tensors_);
  for (const QuantizationConfig* config :
       {sources.metadata ? &*sources.metadata : nullptr,
        sources.config_json ? &*sources.config_json : nullptr}) {
    if (config == nullptr) continue;
    std::vector<std::string> keys;
    for (const auto& [name, p] : config->layers) keys.push_back(name);
    keys.insert(keys.end(), config->unquantized.begin(), config->unquantized.end());
    for (const std::string& key : keys) {
      if (!modules.count(key)) {
        warnings_.push_back(absl::StrCat("quantization entry '", key,
                                         "' names a module the checkpoint does not hold; ignored"));
      }
    }
  }

  for (const TensorInfo* t : tensors_) {
    if (!absl::EndsWith(t->name, ".weight")) continue;
    const std::string name = t->name.substr(0, t->name.size() - 7);
    CheckpointLayer layer;
    layer.name = name;
    layer.weight = t;
    layer.bias = Find(name + ".bias");
    const TensorInfo* scales = Find(name + ".scales");
    if (scales != nullptr) {
      if (t->shape.size() != 2) {
        return absl::InvalidArgumentError(absl::StrCat(
            "'", FileOf(*t), "': quantized tensor '", t->name, "' is ", t->shape.size(), "-D ",
            t->ShapeString(), "; only 2-D quantized weights are served (3-D ones are MoE experts)"));
      }
      layer.quantized = true;
      layer.scales = scales;
      layer.biases = Find(name + ".biases");
      auto params = ResolveLayerParams(name, {t, scales, layer.biases}, sources,
                                       &layer.params_source);
      if (!params.ok() && options.tolerate_unresolved) {
        skipped_.push_back({t->name, std::string(params.status().message())});
        continue;
      }
      if (!params.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("'", path_, "': ", params.status().message()));
      }
      layer.params = *params;
      layer.n = t->shape[0];
      layer.k = t->shape[1] * 32 / params->bits;
    } else if (t->dtype == DType::kU32) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", FileOf(*t), "': '", t->name, "' holds packed U32 codes but '", name,
          ".scales' is missing", is_folder_ ? " from every shard" : ""));
    } else {
      if (!IsFloatDType(t->dtype) && t->dtype != DType::kF64) continue;
      if (t->shape.size() != 2) {
        if (t->shape.size() > 2) {
          skipped_.push_back({t->name, absl::StrCat("a ", t->shape.size(), "-D weight ",
                                                    t->ShapeString(), " is not a linear layer")});
        }
        continue;  // 1-D: a norm's weight
      }
      std::string reason = FloatWeightSkipReason(*t, options.float_params);
      for (const QuantizationConfig* config :
           {sources.metadata ? &*sources.metadata : nullptr,
            sources.config_json ? &*sources.config_json : nullptr}) {
        if (config != nullptr && std::find(config->unquantized.begin(), config->unquantized.end(),
                                           name) != config->unquantized.end()) {
          reason = "the checkpoint's quantization maps it to false (not quantized)";
        }
      }
      if (!reason.empty()) {
        skipped_.push_back({t->name, reason});
        continue;
      }
      layer.params = options.float_params;
      layer.params_source = "quantized here";
      layer.n = t->shape[0];
      layer.k = t->shape[1];
    }
    if (layer.bias != nullptr &&
        (!IsFloatDType(layer.bias->dtype) || layer.bias->shape != std::vector<int64_t>{layer.n})) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", FileOf(*layer.bias), "': '", layer.bias->name, "' must be a float vector [",
          layer.n, "] (F32, F16 or BF16); got ", DTypeName(layer.bias->dtype), " ",
          layer.bias->ShapeString()));
    }
    layers_.push_back(std::move(layer));
  }
  // Orphans: scales or biases without a U32 weight are a broken triplet.
  for (const TensorInfo* t : tensors_) {
    for (const char* suffix : {".scales", ".biases"}) {
      if (!absl::EndsWith(t->name, suffix)) continue;
      const std::string name = t->name.substr(0, t->name.size() - std::strlen(suffix));
      if (Find(name + ".weight") == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("'", FileOf(*t), "': '", t->name,
                                                       "' has no '", name, ".weight' beside it"));
      }
      if (std::strcmp(suffix, ".biases") == 0 && Find(name + ".scales") == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("'", FileOf(*t), "': '", t->name,
                                                       "' has no '", name, ".scales' beside it"));
      }
    }
  }
  return absl::OkStatus();
}

const TensorInfo* Checkpoint::Find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second.first;
}

absl::Span<const uint8_t> Checkpoint::Data(const TensorInfo& t) const {
  return shards_[shard_of_.at(&t)]->Data(t);
}

const std::string& Checkpoint::FileOf(const TensorInfo& t) const {
  return files_[shard_of_.at(&t)];
}

const std::map<std::string, std::string>& Checkpoint::metadata() const {
  static const std::map<std::string, std::string> kNone;
  return is_folder_ ? kNone : shards_[0]->metadata();
}

absl::Status Checkpoint::Validate(const CheckpointLayer& layer) const {
  if (layer.quantized) return Load(layer).status();
  absl::Status s = CheckFinite(layer.weight->dtype, Data(*layer.weight).data(), layer.n, layer.k);
  if (!s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("'", FileOf(*layer.weight), "': tensor '",
                                                   layer.weight->name, "': ", s.message()));
  }
  return BiasOf(layer).status();
}

absl::StatusOr<std::vector<float>> Checkpoint::BiasOf(const CheckpointLayer& layer) const {
  std::vector<float> bias;
  if (layer.bias == nullptr) return bias;
  const auto bytes = Data(*layer.bias);
  bias.resize(static_cast<size_t>(layer.n));
  for (size_t i = 0; i < bias.size(); ++i) {
    bias[i] = LoadFloat(layer.bias->dtype, bytes.data(), i);
    if (!std::isfinite(bias[i])) {
      return absl::InvalidArgumentError(absl::StrCat("'", FileOf(*layer.bias), "': '",
                                                     layer.bias->name, "' must be finite; got ",
                                                     bias[i], " at index ", i));
    }
  }
  return bias;
}

absl::StatusOr<LoadedLayer> Checkpoint::Load(const CheckpointLayer& layer) const {
  LoadedLayer out;
  out.name = layer.name;
  const TensorInfo& w = *layer.weight;
  if (layer.quantized) {
    auto q = CopyQuantizedLayer(
        layer.name, {layer.weight, layer.scales, layer.biases}, Data(w), Data(*layer.scales),
        layer.biases != nullptr ? Data(*layer.biases) : absl::Span<const uint8_t>(), layer.params);
    if (!q.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("'", path_, "': ", q.status().message()));
    }
    out.q = *std::move(q);
  } else {
    const auto data = Data(w);
    auto q = Quantize(layer.params, w.dtype, data.data(), layer.n, layer.k);
    if (!q.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", FileOf(w), "': tensor '", w.name, "': ", q.status().message()));
    }
    out.report = ComputeErrorReport(*q, w.dtype, data.data());
    out.q = *std::move(q);
  }
  QLINEAR_ASSIGN_OR_RETURN(out.bias, BiasOf(layer));
  return out;
}

}  // namespace qlinear
