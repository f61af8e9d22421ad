// `qlinear convert`: a float mlx-lm / Hugging Face model folder in, the folder
// `mlx_lm.convert -q` would write out (mlx-lm 0.32.0; the rules and their
// source lines are in ../shared/mlx-lm/FORMAT.md). The model rules are in
// client/convert_rules.h, the JSON layout in client/mlx_lm_json.h.
//
//   qlinear convert --in FLOAT_FOLDER --out QUANTIZED_FOLDER [--bits B]
//       [--group-size G] [--mode affine|mxfp4|mxfp8|nvfp4]
//       [--dtype f32|f16|bf16] [--recipe mixed_2_6|mixed_3_4|mixed_3_6|mixed_4_6]
//
// What it writes, as mlx-lm does:
//   - every floating tensor cast (round to nearest even) to --dtype, else to
//     config.json's "torch_dtype" (else text_config's "dtype"), before
//     quantizing, so scales, biases and norms come out in that dtype;
//   - every Linear / Embedding whose input dim divides by the global group
//     size quantized (embed_tokens too; norms stay float); a tied lm_head is
//     dropped;
//   - shards greedy in module definition order at a 5 GiB cap
//     (model.safetensors, or model-0000i-of-0000n.safetensors), each with
//     metadata {"format": "mlx"}, and model.safetensors.index.json always;
//   - config.json as save_config writes it, with "quantization" and its copy
//     "quantization_config";
//   - every other file of the folder (tokenizer files, generation_config.json,
//     *.py, ...) copied; weight files mlx-lm does not read are not.
// Only dense Llama-family decoders are converted: model_type llama, mistral,
// qwen2, qwen3 (their parameter lists are known here); types that carry
// their own rules in mlx-lm (MoE gates kept at 8 bits, 3-D expert weights,
// cast exceptions) are refused naming the rule.
//
// Crash safety: everything is written into a fresh sibling folder
// OUT.tmp-<pid>-XXXXXX, each file fsynced, then the folder is fsynced and
// renamed onto OUT (which must not exist) without replacing anything. On any
// failure, or SIGINT/SIGTERM (noticed between tensors and between shards),
// the sibling is removed: OUT either appears whole or not at all. Only a
// SIGKILL can leave an OUT.tmp-* folder behind.
//
// Errors: INVALID_ARGUMENT naming the file or tensor and what was expected;
// ALREADY_EXISTS when OUT exists; FAILED_PRECONDITION for an input that is
// already quantized or a model type that is not converted; CANCELLED when
// interrupted; NOT_FOUND / PERMISSION_DENIED / INTERNAL for I/O, naming the
// path.
//
// Thread safety: ConvertFolder may run concurrently on distinct outputs.
#ifndef QLINEAR_CLIENT_CONVERT_COMMAND_H_
#define QLINEAR_CLIENT_CONVERT_COMMAND_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/dtype.h"
#include "core/quant_params.h"

namespace qlinear {

// ModuleRule is what an mlx-lm quant predicate answers for one module path:
// false leaves it float; true quantizes it with the global parameters; a
// dict (here `entry_json`, a JSON object) is written verbatim as
// config["quantization"][path] and quantizes it with its own group_size,
// bits and mode (missing or null = the mode's default; no mode = affine).
struct ModuleRule {
  bool quantize = true;
  std::string entry_json;  // empty: no per-module entry
};
using QuantPredicate = std::function<ModuleRule(const std::string& module_path)>;

struct ConvertOptions {
  std::string in;   // the float model folder
  std::string out;  // the folder to create; must not exist
  // The global parameters; unset bits / group size take the mode's default.
  QuantMode mode = QuantMode::kAffine;
  std::optional<int> bits;
  std::optional<int> group_size;
  // Unset: config.json's torch_dtype (no cast when it names none of
  // float16, bfloat16, float32).
  std::optional<DType> dtype;
  // "", or one of mlx-lm's mixed recipes (affine only).
  std::string recipe;
  // Replaces the recipe when set: a predicate as mlx-lm's models define
  // them (tests use it to rebuild fixtures made with one).
  QuantPredicate predicate;
  // make_shards' cap (mlx-lm: 5 << 30 bytes); tests lower it.
  uint64_t max_shard_bytes = uint64_t{5} << 30;
  // Set (by a signal handler, or a test) to abandon the conversion.
  const std::atomic<bool>* cancel = nullptr;
  // Called after each shard is written into the staging folder, with its
  // file name; a non-OK status abandons the conversion (tests inject
  // failures with it).
  std::function<absl::Status(const std::string& shard)> after_shard;
  // Receives one line per quantized module and per note (no newline).
  std::function<void(const std::string&)> log;
};

struct ConvertResult {
  std::vector<std::string> shards;  // file names, in order
  std::vector<std::string> copied;  // other files copied
  int quantized_modules = 0;
  int float_modules = 0;  // Linear / Embedding left float (input dim, predicate)
  uint64_t total_size = 0;
  uint64_t total_parameters = 0;
};

// ConvertFolder converts options.in into options.out (see the file comment).
absl::StatusOr<ConvertResult> ConvertFolder(const ConvertOptions& options);

// RunConvert is the CLI: argv[1] == "convert". Exit 0 on success, 2 for bad
// flags, 1 for any failure, with one line on stderr.
int RunConvert(int argc, char** argv);

}  // namespace qlinear

#endif  // QLINEAR_CLIENT_CONVERT_COMMAND_H_
