// MLX / mlx-lm quantized checkpoints: how a file says what it holds.
//
// A quantized layer P is the triplet P.weight (U32 packed codes), P.scales and
// (affine only) P.biases, exactly as mlx-lm writes them. Packed shapes alone
// are ambiguous ([N,512] + [N,64] fits b4/g64, b8/g32 and b2/g128), so each
// layer's parameters are resolved from:
//   1. explicit overrides (CLI flags): each given field wins;
//   2. the file's "__metadata__" key "quantization": a JSON string holding
//      mlx-lm's config.json "quantization" object (global group_size, bits,
//      mode, plus per-layer objects keyed by the layer path);
//   3. the "quantization" (or "quantization_config") object of a config.json
//      beside the file.
// The base entry is the layer's own object in the metadata if any, else the
// metadata's global fields, else the same two from config.json; flags then
// replace the fields they give, and fields still missing take the mode's
// defaults (a missing mode means affine). When neither flags nor any entry
// apply, resolution fails naming the layer and the candidates that fit its
// shapes: it never guesses. A malformed metadata entry or config.json is an
// error even when another source would have sufficed.
#ifndef QLINEAR_CORE_MLX_FILE_H_
#define QLINEAR_CORE_MLX_FILE_H_

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/quant_params.h"
#include "core/quantize.h"
#include "core/safetensors.h"

namespace qlinear {

// QuantizationConfig is mlx-lm's "quantization" object.
struct QuantizationConfig {
  PartialQuantParams global;
  std::map<std::string, PartialQuantParams> layers;
  std::vector<std::string> unquantized;  // layers mapped to false

  // FromJson parses the object (as text). INVALID_ARGUMENT on malformed JSON
  // or wrongly typed fields.
  static absl::StatusOr<QuantizationConfig> FromJson(absl::string_view text);
  // ToJson gives {"group_size": G, "bits": B, "mode": M}.
  static std::string ToJson(const QuantParams& params);
  // ToJson with per-layer entries (for layers that differ from `params`).
  static std::string ToJson(const QuantParams& params,
                            const std::map<std::string, QuantParams>& layers);
  // Lookup returns the per-layer entry if any, else the global one (possibly
  // empty).
  PartialQuantParams Lookup(const std::string& layer) const;
};

// QuantizationSources gathers everything resolution may consult for one
// checkpoint.
struct QuantizationSources {
  PartialQuantParams overrides;
  std::optional<QuantizationConfig> metadata;     // from a file's __metadata__
  std::optional<QuantizationConfig> config_json;  // from config.json

  // Load reads the metadata of `file` and the config.json in the folder of
  // `path` (when present). INVALID_ARGUMENT when either is malformed.
  static absl::StatusOr<QuantizationSources> Load(
      const std::string& path, const SafetensorsFile& file,
      const PartialQuantParams& overrides);
  // FromParts reads `metadata` (the file's metadata; nullptr for a folder)
  // and the config.json text `config_text` (empty: none), read from
  // `config_path`. config.json's "quantization" is used, else a
  // "quantization_config" without "quant_method"; one with a quant_method
  // (gptq, awq, ...) is INVALID_ARGUMENT naming the method.
  static absl::StatusOr<QuantizationSources> FromParts(
      const std::map<std::string, std::string>* metadata, const std::string& config_path,
      const std::string& config_text, const PartialQuantParams& overrides);
};

// LayerTensors are the tensors of one quantized module P (borrowed).
struct LayerTensors {
  const TensorInfo* weight = nullptr;  // P.weight
  const TensorInfo* scales = nullptr;  // P.scales
  const TensorInfo* biases = nullptr;  // P.biases (affine)
};

// CheckLayerFits returns OK when `params` is consistent with the layer's
// tensors; INVALID_ARGUMENT naming the tensor and what was expected.
absl::Status CheckLayerFits(const std::string& layer, const LayerTensors& tensors,
                            const QuantParams& params);

// ResolveLayerParams decides the parameters of `layer` and checks that they
// fit its tensors' shapes; the source used is written to `*source` when
// given. The config (the metadata's when present, else config.json's) gives
// the layer's own entry alone when it has one (no "mode" = affine, missing
// fields = the mode's defaults), refuses a layer its entry maps to false,
// and otherwise gives the global fields; flags replace the fields they set.
// INVALID_ARGUMENT otherwise, listing the parameters the shapes fit when no
// source applies: it never guesses.
absl::StatusOr<QuantParams> ResolveLayerParams(const std::string& layer,
                                               const LayerTensors& tensors,
                                               const QuantizationSources& sources,
                                               std::string* source = nullptr);
// The same for a layer of one file.
absl::StatusOr<QuantParams> ResolveLayerParams(const SafetensorsFile& file,
                                               const std::string& layer,
                                               const QuantizationSources& sources);

// CopyQuantizedLayer copies a triplet (tensors and their bytes) into a
// QuantizedMatrix, validating dtypes, shapes and values against `params`.
// INVALID_ARGUMENT naming the tensor and what was expected otherwise.
absl::StatusOr<QuantizedMatrix> CopyQuantizedLayer(const std::string& layer,
                                                   const LayerTensors& tensors,
                                                   absl::Span<const uint8_t> weight,
                                                   absl::Span<const uint8_t> scales,
                                                   absl::Span<const uint8_t> biases,
                                                   const QuantParams& params);
// The same for a layer of one file.
absl::StatusOr<QuantizedMatrix> LoadQuantizedLayer(const SafetensorsFile& file,
                                                   const std::string& layer,
                                                   const QuantParams& params);

// FloatWeightSkipReason says why a float `.weight` tensor is left as it is
// (as mlx-lm leaves it): F64, an empty dimension, or K not a multiple of
// the group size. Empty when it quantizes with `params`.
std::string FloatWeightSkipReason(const TensorInfo& weight, const QuantParams& params);

// QuantizedTensors returns views of q's tensors named P.weight, P.scales and
// (affine) P.biases, for WriteSafetensors. They borrow from q.
std::vector<TensorToWrite> QuantizedTensors(const std::string& layer,
                                            const QuantizedMatrix& q);

}  // namespace qlinear

#endif  // QLINEAR_CORE_MLX_FILE_H_
