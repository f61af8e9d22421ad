#include "client/convert_rules.h"

#include <cstring>
#include <map>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/mlx_lm_json.h"
#include "core/status_macros.h"

namespace qlinear {
namespace mlx_lm {
namespace {

using OJson = nlohmann::ordered_json;

// Model types whose mlx-lm 0.32.0 module (mlx_lm/models/<type>.py) has
// rules of its own: a quant_predicate, a cast_predicate, or MoE experts
// stacked into 3-D SwitchLinear weights.
constexpr std::pair<const char*, const char*> kRuledTypes[] = {
    {"qwen3_moe",
     "quant_predicate keeps every mlp.gate at 8 bits, group size 64 (249-255); "
     "sanitize stacks the experts into 3-D switch_mlp weights (232-246)"},
    {"gpt_oss",
     "quant_predicate keeps every router at 8 bits, group size 64 (328-334); 3-D experts"},
    {"mixtral", "sanitize stacks block_sparse_moe experts into 3-D switch_mlp weights (205-224)"},
    {"qwen2_moe", "sanitize stacks the experts into 3-D switch_mlp weights (221-234)"},
    {"deepseek_v3",
     "cast_predicate keeps e_score_correction_bias out of the dtype cast "
     "(549-553); sanitize stacks 3-D experts (380-435)"},
};
// The other modules with a quant_predicate, a cast_predicate or 3-D experts.
constexpr char kOtherRuledTypes[] =
    " deepseek deepseek_v2 deepseek_v32 granitemoe olmoe phimoe llama4 Klear afmoe bailing_moe"
    " bailing_moe_linear dots1 ernie4_5_moe exaone_moe gemma4 gemma4_text glm4_moe glm4_moe_lite"
    " granitemoehybrid hunyuan jamba kimi_k25 kimi_linear kimi_vl laguna lfm2_moe longcat_flash"
    " longcat_flash_ngram mellum mimo_v2_flash minimax nemotron_h phixtral qwen3_5 qwen3_next"
    " qwen3_vl_moe rwkv7 step3p5 ";

}  // namespace

absl::StatusOr<Family> FamilyOf(const OJson& config) {
  auto mt = config.find("model_type");
  if (mt == config.end() || !mt->is_string()) {
    return absl::InvalidArgumentError("config.json has no \"model_type\" string");
  }
  std::string type = mt->get<std::string>();
  // mlx-lm's MODEL_REMAPPING (utils.py 46-57), for the entries that matter here.
  static const std::map<std::string, std::string> kRemap = {{"mistral", "llama"},
                                                            {"iquestcoder", "llama"},
                                                            {"kimi_k2", "deepseek_v3"},
                                                            {"joyai_llm_flash", "deepseek_v3"},
                                                            {"minimax_m2", "minimax"}};
  if (auto it = kRemap.find(type); it != kRemap.end()) type = it->second;
  if (type == "llama") return Family{"llama", false, true};
  if (type == "qwen2") return Family{"qwen2", false, true};
  if (type == "qwen3") return Family{"qwen3", true, false};
  const std::string asked = mt->get<std::string>();
  const char* rule = nullptr;
  for (const auto& [ruled, why] : kRuledTypes) {
    if (type == ruled) rule = why;
  }
  if (rule == nullptr && absl::StrContains(kOtherRuledTypes, absl::StrCat(" ", type, " "))) {
    rule = "";
  }
  if (rule != nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model_type '", asked, "' has per-model rules in mlx-lm (models/", type, ".py",
        *rule ? ": " : " defines a quant_predicate, a cast_predicate or 3-D expert weights", rule,
        "); convert handles only dense Llama-family decoders (llama, mistral, qwen2, qwen3)"));
  }
  return absl::FailedPreconditionError(
      absl::StrCat("model_type '", asked,
                   "' is not converted: convert knows the parameters of mlx-lm's "
                   "llama, mistral, qwen2 and qwen3 models only"));
}

std::vector<Module> ModuleList(const Family& f, const OJson& config, int64_t layers, bool tied) {
  const bool llama = f.name == "llama";
  const bool attn_bias = llama ? Truthy(config.value("attention_bias", OJson(false))) : false;
  const bool mlp_bias = llama && Truthy(config.value("mlp_bias", OJson(false)));
  std::vector<Module> m = {{"model.embed_tokens", Kind::kEmbedding}};
  for (int64_t i = 0; i < layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
      const bool bias = attn_bias || (f.name == "qwen2" && std::strcmp(proj, "o_proj") != 0);
      m.push_back({p + "self_attn." + proj, Kind::kLinear, bias});
    }
    if (f.qk_norm) {
      m.push_back({p + "self_attn.q_norm", Kind::kNorm});
      m.push_back({p + "self_attn.k_norm", Kind::kNorm});
    }
    for (const char* proj : {"gate_proj", "down_proj", "up_proj"}) {
      m.push_back({p + "mlp." + proj, Kind::kLinear, mlp_bias});
    }
    m.push_back({p + "input_layernorm", Kind::kNorm});
    m.push_back({p + "post_attention_layernorm", Kind::kNorm});
  }
  m.push_back({"model.norm", Kind::kNorm});
  if (!tied) m.push_back({"lm_head", Kind::kLinear});
  return m;
}

// mixed_quant_predicate_builder (convert.py 20-77), for paths
// model.layers.<i>.… (layer_location 2) and `num_layers` layers.
absl::StatusOr<QuantPredicate> MixedRecipe(const std::string& recipe, int64_t num_layers,
                                           std::optional<int> group_size) {
  static const std::map<std::string, std::pair<int, int>> kBits = {
      {"mixed_2_6", {2, 6}}, {"mixed_3_4", {3, 4}}, {"mixed_3_6", {3, 6}}, {"mixed_4_6", {4, 6}}};
  auto it = kBits.find(recipe);
  if (it == kBits.end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--recipe must be mixed_2_6, mixed_3_4, mixed_3_6 or mixed_4_6; got '", recipe, "'"));
  }
  const auto [low, high] = it->second;
  // The CLI's --q-group-size (default None) goes into every dict as it is.
  const std::string gs = group_size ? std::to_string(*group_size) : "null";
  return QuantPredicate([=](const std::string& path) {
    const std::vector<std::string> parts = absl::StrSplit(path, '.');
    const int64_t index = parts.size() > 2 ? std::stoll(parts[2]) : 0;
    const int64_t l8 = num_layers / 8;
    const int64_t rest = ((index - l8) % 3 + 3) % 3;  // Python's % is never negative
    const bool more = index < l8 || index >= 7 * num_layers / 8 || rest == 2;
    int bits = low;
    if ((absl::StrContains(path, "v_proj") || absl::StrContains(path, "v_a_proj") ||
         absl::StrContains(path, "v_b_proj")) &&
        more) {
      bits = high;
    } else if (absl::StrContains(path, "down_proj") && more) {
      bits = high;
    } else if (absl::StrContains(path, "lm_head")) {
      bits = high;
    }
    return ModuleRule{true, absl::StrCat("{\"group_size\": ", gs, ", \"bits\": ", bits,
                                         ", \"mode\": \"affine\"}")};
  });
}

// to_quantized(**entry): missing or null fields take the mode's default.
absl::StatusOr<QuantParams> ParamsOfEntry(const OJson& e) {
  QuantMode mode = QuantMode::kAffine;
  if (auto m = e.find("mode"); m != e.end()) {
    if (!m->is_string()) return absl::InvalidArgumentError("\"mode\" must be a string");
    QLINEAR_ASSIGN_OR_RETURN(mode, ParseQuantMode(m->get<std::string>()));
  }
  std::optional<int> fields[2];
  const char* names[2] = {"bits", "group_size"};
  for (int i = 0; i < 2; ++i) {
    auto f = e.find(names[i]);
    if (f == e.end() || f->is_null()) continue;
    if (!f->is_number_integer()) {
      return absl::InvalidArgumentError(absl::StrCat("\"", names[i], "\" must be an integer"));
    }
    if (f->get<int64_t>() != 0) fields[i] = static_cast<int>(f->get<int64_t>());  // Python's `or`
  }
  return MakeQuantParams(mode, fields[0], fields[1]);
}

}  // namespace mlx_lm
}  // namespace qlinear
