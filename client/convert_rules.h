// The mlx-lm 0.32.0 rules `qlinear convert` follows, apart from the folder
// and file handling of ConvertFolder (client/convert_command.h):
//   - the model families convert knows (llama, qwen2, qwen3 after mlx-lm's
//     MODEL_REMAPPING, so mistral is llama), and the refusal table of model
//     types whose mlx-lm module carries per-model rules (a quant_predicate,
//     a cast_predicate, MoE experts stacked into 3-D weights);
//   - each family's modules in definition order (tree_flatten order, hence
//     the order of the shards and of config["quantization"]);
//   - the recipes' predicates (mixed_2_6, mixed_3_4, mixed_3_6, mixed_4_6)
//     and the parsing of the per-module dicts a predicate answers.
// The source lines each rule restates are cited beside it, and listed in
// ../shared/mlx-lm/FORMAT.md.
//
//   QLINEAR_ASSIGN_OR_RETURN(const mlx_lm::Family f, mlx_lm::FamilyOf(config));
//   std::vector<mlx_lm::Module> modules = mlx_lm::ModuleList(f, config, 28, true);
//
// Errors: FamilyOf returns INVALID_ARGUMENT when config.json has no
// "model_type" string and FAILED_PRECONDITION for a type that is not
// converted, naming the mlx-lm rule when there is one; MixedRecipe and
// ParamsOfEntry return INVALID_ARGUMENT naming what was expected.
//
// Thread safety: every function is pure and may be called from any thread;
// a QuantPredicate MixedRecipe returns holds only copies and may be called
// concurrently.
#ifndef QLINEAR_CLIENT_CONVERT_RULES_H_
#define QLINEAR_CLIENT_CONVERT_RULES_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/convert_command.h"
#include "core/quant_params.h"
#include "core/safetensors.h"
#include "nlohmann/json.hpp"

namespace qlinear {
// Generic names (Family, Kind, Module) live apart from the rest of qlinear.
namespace mlx_lm {

// Family is one mlx-lm model module whose parameters convert knows.
struct Family {
  std::string name;             // the mlx-lm module, after MODEL_REMAPPING
  bool qk_norm = false;         // qwen3: self_attn.q_norm / k_norm
  bool drops_inv_freq = false;  // sanitize drops self_attn.rotary_emb.inv_freq
};

enum class Kind { kEmbedding, kLinear, kNorm };

// Module is one module of the model that holds parameters. `weight` and
// `bias` are null until the caller pairs the checkpoint's tensors with it;
// they borrow from the Checkpoint, which must outlive the Module.
struct Module {
  std::string path;
  Kind kind;
  bool bias_required = false;
  const TensorInfo* weight = nullptr;
  const TensorInfo* bias = nullptr;
};

// FamilyOf maps config.json's "model_type" to the family convert converts,
// or refuses it (see the file comment).
absl::StatusOr<Family> FamilyOf(const nlohmann::ordered_json& config);

// ModuleList lists family `f`'s modules for `layers` layers, in definition
// order: embed_tokens; each layer's q/k/v/o projections, qwen3's q/k norms,
// gate/down/up projections and its two norms; the final norm; lm_head
// unless `tied`. Biases are required as the family's
// ModelArgs say (qwen2's q/k/v projections; llama's attention_bias and
// mlp_bias from `config`).
std::vector<Module> ModuleList(const Family& f, const nlohmann::ordered_json& config,
                               int64_t layers, bool tied);

// MixedRecipe is mixed_quant_predicate_builder (convert.py 20-77) for
// `recipe` and `num_layers` layers: every module a dict with `group_size`
// (null when unset, as the CLI's default None) and the recipe's low or high
// bits. INVALID_ARGUMENT for an unknown recipe.
absl::StatusOr<QuantPredicate> MixedRecipe(const std::string& recipe, int64_t num_layers,
                                           std::optional<int> group_size);

// ParamsOfEntry is to_quantized(**entry) for a predicate's dict: missing or
// null fields take the mode's default, as does a 0 (Python's `or`).
// INVALID_ARGUMENT for a field of the wrong type, an unknown mode, or
// parameters MakeQuantParams rejects.
absl::StatusOr<QuantParams> ParamsOfEntry(const nlohmann::ordered_json& entry);

}  // namespace mlx_lm
}  // namespace qlinear

#endif  // QLINEAR_CLIENT_CONVERT_RULES_H_
