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

// QuantizationSources gathers everything resolution may consult for one file.
struct QuantizationSources {
  PartialQuantParams overrides;
  std::optional<QuantizationConfig> metadata;     // from __metadata__
  std::optional<QuantizationConfig> config_json;  // from config.json beside

  // Load reads the metadata of `file` and the config.json in the folder of
  // `path` (when present). INVALID_ARGUMENT when either is malformed.
  static absl::StatusOr<QuantizationSources> Load(
      const std::string& path, const SafetensorsFile& file,
      const PartialQuantParams& overrides);
};

// FindQuantizedLayers lists the prefixes P with a U32 P.weight and a P.scales.
std::vector<std::string> FindQuantizedLayers(const SafetensorsFile& file);

// A float `P.weight` of a file to quantize: every 2-D tensor whose name ends
// in ".weight" and whose dtype is F32, F16, BF16 or F64. It quantizes with
// `params` when skip_reason is empty; otherwise it stays as it is, like
// mlx-lm leaves such layers (F64, an empty dimension, or K not a multiple
// of the group size), and skip_reason says why in words.
struct FloatWeight {
  const TensorInfo* tensor;
  std::string layer;  // the prefix P
  std::string skip_reason;
};

// FindFloatWeights lists the float weights of `file` in file order.
std::vector<FloatWeight> FindFloatWeights(const SafetensorsFile& file, const QuantParams& params);

// ResolveLayerParams decides the parameters of `layer` (see the file comment)
// and checks that they fit its tensors' shapes. INVALID_ARGUMENT otherwise.
absl::StatusOr<QuantParams> ResolveLayerParams(const SafetensorsFile& file,
                                               const std::string& layer,
                                               const QuantizationSources& sources);

// LoadQuantizedLayer copies the triplet of `layer` into a QuantizedMatrix,
// validating dtypes, shapes and values against `params`. INVALID_ARGUMENT
// naming the tensor and what was expected otherwise.
absl::StatusOr<QuantizedMatrix> LoadQuantizedLayer(const SafetensorsFile& file,
                                                   const std::string& layer,
                                                   const QuantParams& params);

// QuantizedTensors returns views of q's tensors named P.weight, P.scales and
// (affine) P.biases, for WriteSafetensors. They borrow from q.
std::vector<TensorToWrite> QuantizedTensors(const std::string& layer,
                                            const QuantizedMatrix& q);

}  // namespace qlinear

#endif  // QLINEAR_CORE_MLX_FILE_H_
