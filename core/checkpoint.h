// Checkpoint: the one reader that turns a file or an mlx-lm model folder into
// layers. Server start (--model, --state-dir), `qlinear upload`, `quantize`,
// `inspect`, `dequantize` and `convert` all read through it: one loop over a
// checkpoint's layers, one set of messages.
//
// A checkpoint is either
//   - one .safetensors file (its "quantization" metadata, else the
//     config.json beside it, says how its triplets are quantized), or
//   - an mlx-lm model folder: every model*.safetensors in it, merged, with
//     config.json beside (mlx-lm's load_model rules, ../shared/mlx-lm/
//     FORMAT.md): a module's .weight, .scales and .biases may sit in
//     different shards; when model.safetensors.index.json exists it must
//     agree with the files.
//
// Open validates everything that can be checked without reading values:
// the index against the shards (a tensor mapped to a file that lacks it, a
// tensor in two files, a tensor no index entry names), each layer's
// parameters against its tensors' shapes and dtypes, every .bias. Load then
// reads one layer's values (copying a quantized triplet, validating its
// scales; or quantizing a float weight, MLX-exact, with its error report).
//
// Parameters of a quantized module P, as mlx-lm resolves them:
//   - P has its own entry in "quantization": that entry alone (no "mode" =
//     affine, a missing or null bits/group_size = the mode's default; `false`
//     = not quantized, so P.scales is an error);
//   - otherwise the global group_size, bits and mode (no "mode" = affine).
//   "quantization_config" is read the same way when "quantization" is absent
//   and it has no "quant_method"; with one (gptq, awq, ...) Open refuses,
//   naming it. Flags (CheckpointOptions::overrides) replace the fields they
//   give. An entry for a module that does not exist is a warning.
//
// Float 2-D P.weight tensors (F32/F16/BF16) without P.scales become layers
// to quantize with CheckpointOptions::float_params; those that cannot be
// (F64, empty, K not a multiple of the group size) are listed in skipped()
// with the reason, as mlx-lm leaves them float. A 3-D quantized weight (MoE
// experts) is refused naming the tensor.
//
// Errors: INVALID_ARGUMENT naming the file and the tensor and what was
// expected and found; NOT_FOUND for a path that does not exist or a folder
// without model*.safetensors.
//
// Thread safety: immutable after Open; Load may run concurrently. The
// TensorInfo pointers it hands out live as long as the Checkpoint.
#ifndef QLINEAR_CORE_CHECKPOINT_H_
#define QLINEAR_CORE_CHECKPOINT_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/quant_params.h"
#include "core/quantize.h"
#include "core/safetensors.h"

namespace qlinear {

struct CheckpointOptions {
  // Fields given on the command line; each replaces that field of a
  // quantized layer's resolved parameters.
  PartialQuantParams overrides;
  // How float weights are quantized.
  QuantParams float_params;
  // Read config.json beside a single file (a state-dir file describes
  // itself in its metadata and must not depend on a stray config.json).
  bool read_config_json = true;
  // List a quantized layer whose parameters cannot be resolved in skipped()
  // with the reason, instead of failing Open (for `inspect`).
  bool tolerate_unresolved = false;
};

// CheckpointLayer is one layer a checkpoint yields. Tensor pointers borrow
// from the Checkpoint.
struct CheckpointLayer {
  std::string name;        // the module path P, e.g. model.layers.0.mlp.up_proj
  bool quantized = false;  // true: an MLX triplet; false: a float weight to quantize
  QuantParams params;      // resolved (quantized) or float_params
  int64_t n = 0;           // out features
  int64_t k = 0;           // in features
  const TensorInfo* weight = nullptr;  // P.weight (U32 codes, or the float weight)
  const TensorInfo* scales = nullptr;  // quantized only
  const TensorInfo* biases = nullptr;  // affine quantized only
  const TensorInfo* bias = nullptr;    // P.bias when present
  std::string params_source;  // where the parameters came from, in words
};

// SkippedTensor is a weight the checkpoint holds but does not serve.
struct SkippedTensor {
  std::string tensor;
  std::string reason;
};

// LoadedLayer is a layer's values, ready to publish or write.
struct LoadedLayer {
  std::string name;
  QuantizedMatrix q;
  std::vector<float> bias;             // empty or q.n values
  std::optional<ErrorReport> report;   // set when quantized here
};

class Checkpoint {
 public:
  // Open reads and validates `path` (a .safetensors file or a folder).
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& path,
                                                          const CheckpointOptions& options = {});

  const std::string& path() const { return path_; }
  bool is_folder() const { return is_folder_; }
  // files() are the safetensors files read, sorted.
  const std::vector<std::string>& files() const { return files_; }
  // layers() in name order.
  const std::vector<CheckpointLayer>& layers() const { return layers_; }
  const std::vector<SkippedTensor>& skipped() const { return skipped_; }
  // warnings() in words (e.g. an override for a module that does not exist).
  const std::vector<std::string>& warnings() const { return warnings_; }

  // tensors() lists every tensor of every file, sorted by name.
  const std::vector<const TensorInfo*>& tensors() const { return tensors_; }
  // Find returns the tensor named `name` in any file, or nullptr.
  const TensorInfo* Find(const std::string& name) const;
  // Data returns the bytes of `t` (from this checkpoint), unaligned.
  absl::Span<const uint8_t> Data(const TensorInfo& t) const;
  // FileOf names the file that holds `t`.
  const std::string& FileOf(const TensorInfo& t) const;
  // metadata() of a single file; empty for folders.
  const std::map<std::string, std::string>& metadata() const;
  // config_json() is config.json's text (the folder's, or the one beside the
  // file), empty when there is none.
  const std::string& config_json() const { return config_json_; }

  // Load reads one layer's values. INVALID_ARGUMENT naming the layer for
  // non-finite weights, scales or biases (E8M0 0xFF included), or a bias
  // that is not finite.
  absl::StatusOr<LoadedLayer> Load(const CheckpointLayer& layer) const;
  // Validate checks what Load would, without quantizing a float weight (its
  // values must be finite): for a client that sends the layer as it is.
  absl::Status Validate(const CheckpointLayer& layer) const;

 private:
  Checkpoint() = default;
  absl::Status ReadFiles(bool read_config);
  absl::Status CheckIndex();
  absl::Status FindLayers(const CheckpointOptions& options);
  absl::StatusOr<std::vector<float>> BiasOf(const CheckpointLayer& layer) const;

  std::string path_;
  bool is_folder_ = false;
  std::vector<std::string> files_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::map<std::string, std::pair<const TensorInfo*, size_t>> by_name_;  // -> shard index
  std::map<const TensorInfo*, size_t> shard_of_;
  std::vector<const TensorInfo*> tensors_;
  std::string config_json_;
  std::string config_path_;
  std::vector<CheckpointLayer> layers_;
  std::vector<SkippedTensor> skipped_;
  std::vector<std::string> warnings_;
};

}  // namespace qlinear

#endif  // QLINEAR_CORE_CHECKPOINT_H_
