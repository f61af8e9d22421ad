#include "core/mlx_file.h"

#include <sys/stat.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace qlinear {
namespace {

using Json = nlohmann::json;

absl::StatusOr<PartialQuantParams> ParsePartial(const Json& obj,
                                                absl::string_view where) {
  PartialQuantParams p;
  if (auto it = obj.find("mode"); it != obj.end() && !it->is_null()) {
    if (!it->is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": 'mode' must be a string; got ", it->dump()));
    }
    auto mode = ParseQuantMode(it->get<std::string>());
    if (!mode.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": ", mode.status().message()));
    }
    p.mode = *mode;
  }
  for (const char* field : {"bits", "group_size"}) {
    auto it = obj.find(field);
    if (it == obj.end() || it->is_null()) continue;
    // get<int>() would silently wrap values outside int (2^32 + 4 -> 4).
    const bool in_range =
        it->is_number_unsigned()
            ? it->get<uint64_t>() <= static_cast<uint64_t>(INT_MAX)
            : it->is_number_integer() && it->get<int64_t>() >= INT_MIN &&
                  it->get<int64_t>() <= INT_MAX;
    if (!in_range) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": '", field, "' must be an integer; got ", it->dump()));
    }
    (std::strcmp(field, "bits") == 0 ? p.bits : p.group_size) = it->get<int>();
  }
  return p;
}

}  // namespace

absl::Status CheckLayerFits(const std::string& layer, const LayerTensors& t,
                            const QuantParams& params) {
  QLINEAR_RETURN_IF_ERROR(ValidateQuantParams(params));
  auto fault = [&](absl::string_view what) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer '", layer, "' (", params.ToString(), "): ", what));
  };
  if (t.weight == nullptr) return fault(absl::StrCat(layer, ".weight is missing"));
  if (t.scales == nullptr) return fault(absl::StrCat(layer, ".scales is missing"));
  const TensorInfo& w = *t.weight;
  if (w.dtype != DType::kU32 || w.shape.size() != 2 || w.shape[0] <= 0 ||
      w.shape[1] <= 0) {
    return fault(absl::StrCat("expected ", layer, ".weight to be a non-empty 2-D U32 "
                              "tensor; got ", DTypeName(w.dtype), " ",
                              w.ShapeString()));
  }
  const int64_t n = w.shape[0];
  if ((w.shape[1] * 32) % params.bits != 0) {
    return fault(absl::StrCat(layer, ".weight has ", w.shape[1],
                              " words per row, which is not a whole number of ",
                              params.bits, "-bit codes"));
  }
  const int64_t k = w.shape[1] * 32 / params.bits;
  if (k % params.group_size != 0) {
    return fault(absl::StrCat(layer, ".weight holds K=", k,
                              " codes per row, not a multiple of the group size ",
                              params.group_size));
  }
  const std::vector<int64_t> want_shape = {n, k / params.group_size};
  const std::string want_str =
      absl::StrCat("[", absl::StrJoin(want_shape, ", "), "]");
  const TensorInfo& s = *t.scales;
  if (params.has_biases() ? !IsFloatDType(s.dtype) : s.dtype != DType::kU8) {
    return fault(absl::StrCat("expected ", layer, ".scales of ",
                              params.has_biases() ? "F32, F16 or BF16" : "U8",
                              "; got ", DTypeName(s.dtype)));
  }
  if (s.shape != want_shape) {
    return fault(absl::StrCat("expected ", layer, ".scales of shape ", want_str,
                              " for ", layer, ".weight ", w.ShapeString(),
                              " (K=", k, "); got ", s.ShapeString()));
  }
  if (params.has_biases()) {
    if (t.biases == nullptr) return fault(absl::StrCat(layer, ".biases is missing"));
    if (t.biases->dtype != s.dtype || t.biases->shape != want_shape) {
      return fault(absl::StrCat("expected ", layer, ".biases of ",
                                DTypeName(s.dtype), " ", want_str, "; got ",
                                DTypeName(t.biases->dtype), " ",
                                t.biases->ShapeString()));
    }
  } else if (t.biases != nullptr) {
    return fault(absl::StrCat(QuantModeName(params.mode), " has no biases but ",
                              layer, ".biases exists"));
  }
  return absl::OkStatus();
}

absl::StatusOr<QuantizationConfig> QuantizationConfig::FromJson(
    absl::string_view text) {
  Json root = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "quantization config must be a JSON object; got '", text.substr(0, 80), "'"));
  }
  QuantizationConfig config;
  QLINEAR_ASSIGN_OR_RETURN(config.global, ParsePartial(root, "quantization"));
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it->is_object()) {
      QLINEAR_ASSIGN_OR_RETURN(
          config.layers[it.key()],
          ParsePartial(*it, absl::StrCat("quantization['", it.key(), "']")));
    } else if (it->is_boolean() && !it->get<bool>()) {
      config.unquantized.push_back(it.key());
    }
  }
  return config;
}

namespace {
Json ParamsJson(const QuantParams& params) {
  return {{"group_size", params.group_size},
          {"bits", params.bits},
          {"mode", std::string(QuantModeName(params.mode))}};
}
}  // namespace

std::string QuantizationConfig::ToJson(const QuantParams& params) {
  return ParamsJson(params).dump();
}

std::string QuantizationConfig::ToJson(
    const QuantParams& params, const std::map<std::string, QuantParams>& layers) {
  Json j = ParamsJson(params);
  for (const auto& [layer, p] : layers) j[layer] = ParamsJson(p);
  return j.dump();
}

PartialQuantParams QuantizationConfig::Lookup(const std::string& layer) const {
  if (auto it = layers.find(layer); it != layers.end()) return it->second;
  for (const std::string& u : unquantized) {
    if (u == layer) return {};
  }
  return global;
}

absl::StatusOr<QuantizationSources> QuantizationSources::Load(
    const std::string& path, const SafetensorsFile& file,
    const PartialQuantParams& overrides) {
  const size_t slash = path.find_last_of('/');
  const std::string config_path =
      (slash == std::string::npos ? std::string() : path.substr(0, slash + 1)) +
      "config.json";
  std::string text;
  std::ifstream in(config_path);
  if (in) {
    std::stringstream buffer;
    buffer << in.rdbuf();
    text = buffer.str();
    if (text.empty()) text = " ";  // an empty config.json is malformed, not absent
  }
  auto sources = FromParts(&file.metadata(), config_path, text, overrides);
  if (!sources.ok() && absl::StrContains(sources.status().message(), "__metadata__")) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' ", sources.status().message()));
  }
  return sources;
}

absl::StatusOr<QuantizationSources> QuantizationSources::FromParts(
    const std::map<std::string, std::string>* metadata, const std::string& config_path,
    const std::string& config_text, const PartialQuantParams& overrides) {
  QuantizationSources sources;
  sources.overrides = overrides;
  if (metadata != nullptr) {
    if (auto it = metadata->find("quantization"); it != metadata->end()) {
      auto config = QuantizationConfig::FromJson(it->second);
      if (!config.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("__metadata__ 'quantization': ", config.status().message()));
      }
      sources.metadata = *std::move(config);
    }
  }
  if (config_text.empty()) return sources;
  Json root = Json::parse(config_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", config_path, "' is not a JSON object (it does not parse as JSON)"));
  }
  const char* key = "quantization";
  auto q = root.find(key);
  if (q == root.end()) {
    key = "quantization_config";
    q = root.find(key);
    if (q != root.end() && q->is_object()) {
      if (auto method = q->find("quant_method"); method != q->end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "'", config_path, "' quantization_config has quant_method ", method->dump(),
            ": qlinear serves MLX quantization (affine, mxfp4, mxfp8, nvfp4) only"));
      }
    }
  }
  if (q == root.end()) return sources;
  auto config = QuantizationConfig::FromJson(q->dump());
  if (!config.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", config_path, "' '", key, "': ", config.status().message()));
  }
  sources.config_json = *std::move(config);
  return sources;
}

std::string FloatWeightSkipReason(const TensorInfo& t, const QuantParams& params) {
  if (t.dtype == DType::kF64) return "F64 is not a weight dtype MLX quantizes";
  const int64_t n = t.shape[0], k = t.shape[1];
  if (n == 0 || k == 0) return absl::StrCat("it is empty (N=", n, ", K=", k, ")");
  if (k % params.group_size != 0) {
    return absl::StrCat("K=", k, " is not a multiple of the group size ", params.group_size);
  }
  return "";
}

namespace {
LayerTensors FindLayerTensors(const SafetensorsFile& file, const std::string& layer) {
  return {file.Find(layer + ".weight"), file.Find(layer + ".scales"),
          file.Find(layer + ".biases")};
}
absl::Span<const uint8_t> DataOf(const SafetensorsFile& file, const TensorInfo* t) {
  return t == nullptr ? absl::Span<const uint8_t>() : file.Data(*t);
}
}  // namespace

absl::StatusOr<QuantParams> ResolveLayerParams(const SafetensorsFile& file,
                                               const std::string& layer,
                                               const QuantizationSources& sources) {
  return ResolveLayerParams(layer, FindLayerTensors(file, layer), sources);
}

absl::StatusOr<QuantParams> ResolveLayerParams(const std::string& layer,
                                               const LayerTensors& tensors,
                                               const QuantizationSources& sources,
                                               std::string* source_out) {
  const QuantizationConfig* config = sources.metadata      ? &*sources.metadata
                                     : sources.config_json ? &*sources.config_json
                                                           : nullptr;
  const std::string where =
      sources.metadata ? "the file's 'quantization' metadata" : "config.json";
  PartialQuantParams base;
  std::string source = "flags";
  if (config != nullptr) {
    if (auto it = config->layers.find(layer); it != config->layers.end()) {
      base = it->second;
      source = absl::StrCat(where, " entry '", layer, "'");
    } else if (std::find(config->unquantized.begin(), config->unquantized.end(), layer) !=
               config->unquantized.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer '", layer, "': ", where, " maps it to false (not quantized), but ", layer,
          ".scales exists"));
    } else if (!config->global.empty()) {
      base = config->global;
      source = where;
    }
  }
  if (source != "flags" && !sources.overrides.empty()) {
    source = absl::StrCat(source, " and flags");
  }
  if (source == "flags" && sources.overrides.empty()) {
    std::vector<std::string> fits;
    for (const QuantParams& p : AllQuantParams()) {
      if (CheckLayerFits(layer, tensors, p).ok()) fits.push_back(p.ToString());
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "layer '", layer,
        "': cannot tell its quantization parameters (no --mode/--bits/"
        "--group-size, no 'quantization' metadata, no config.json quantization "
        "entry); its shapes fit: ",
        fits.empty() ? "none" : absl::StrJoin(fits, ", ")));
  }
  const QuantMode mode = sources.overrides.mode.value_or(
      base.mode.value_or(QuantMode::kAffine));
  const std::optional<int> bits =
      sources.overrides.bits ? sources.overrides.bits : base.bits;
  const std::optional<int> group_size =
      sources.overrides.group_size ? sources.overrides.group_size : base.group_size;
  auto params = MakeQuantParams(mode, bits, group_size);
  if (!params.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer '", layer, "' (from ", source, "): ", params.status().message()));
  }
  absl::Status fits = CheckLayerFits(layer, tensors, *params);
  if (!fits.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(fits.message(), " (parameters from ", source, ")"));
  }
  if (source_out != nullptr) *source_out = source;
  return *params;
}

absl::StatusOr<QuantizedMatrix> LoadQuantizedLayer(const SafetensorsFile& file,
                                                   const std::string& layer,
                                                   const QuantParams& params) {
  const LayerTensors t = FindLayerTensors(file, layer);
  return CopyQuantizedLayer(layer, t, DataOf(file, t.weight), DataOf(file, t.scales),
                            DataOf(file, t.biases), params);
}

absl::StatusOr<QuantizedMatrix> CopyQuantizedLayer(const std::string& layer,
                                                   const LayerTensors& t,
                                                   absl::Span<const uint8_t> wq,
                                                   absl::Span<const uint8_t> scales,
                                                   absl::Span<const uint8_t> biases,
                                                   const QuantParams& params) {
  QLINEAR_RETURN_IF_ERROR(CheckLayerFits(layer, t, params));
  QuantizedMatrix q;
  q.params = params;
  q.dtype = params.has_biases() ? t.scales->dtype : DType::kBF16;
  q.n = t.weight->shape[0];
  q.k = t.weight->shape[1] * 32 / params.bits;
  q.wq.resize(wq.size() / 4);
  std::memcpy(q.wq.data(), wq.data(), wq.size());
  q.scales.assign(scales.begin(), scales.end());
  if (params.has_biases()) q.biases.assign(biases.begin(), biases.end());
  absl::Status values = ValidateQuantizedValues(q);
  if (!values.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer '", layer, "': ", values.message()));
  }
  return q;
}

std::vector<TensorToWrite> QuantizedTensors(const std::string& layer,
                                            const QuantizedMatrix& q) {
  const std::vector<int64_t> group_shape = {q.n, q.groups()};
  std::vector<TensorToWrite> out;
  out.push_back({layer + ".weight", DType::kU32,
                 {q.n, q.params.packed_cols(q.k)},
                 absl::Span<const uint8_t>(
                     reinterpret_cast<const uint8_t*>(q.wq.data()), q.wq.size() * 4)});
  out.push_back({layer + ".scales", q.scales_dtype(), group_shape,
                 absl::MakeConstSpan(q.scales)});
  if (q.params.has_biases()) {
    out.push_back({layer + ".biases", q.dtype, group_shape,
                   absl::MakeConstSpan(q.biases)});
  }
  return out;
}

}  // namespace qlinear
