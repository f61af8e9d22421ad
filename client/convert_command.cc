#include "client/convert_command.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/command.h"
#include "client/convert_rules.h"
#include "client/mlx_lm_json.h"
#include "core/checkpoint.h"
#include "core/flags.h"
#include "core/half.h"
#include "core/quantize.h"
#include "core/safetensors.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace qlinear {
namespace {

using OJson = nlohmann::ordered_json;
using mlx_lm::Family;
using mlx_lm::FamilyOf;
using mlx_lm::Kind;
using mlx_lm::MixedRecipe;
using mlx_lm::Module;
using mlx_lm::ModuleList;
using mlx_lm::ParamsOfEntry;

absl::StatusOr<int64_t> IntField(const OJson& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end() || !it->is_number_integer() || it->get<int64_t>() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: \"", key, "\" must be a non-negative integer"));
  }
  return it->get<int64_t>();
}

// ---- Files.

absl::Status Errno(const std::string& what, const std::string& path) {
  const int err = errno;
  const std::string msg = absl::StrCat(what, " '", path, "': ", std::strerror(err));
  if (err == ENOENT || err == ENOTDIR) return absl::NotFoundError(msg);
  if (err == EACCES || err == EPERM || err == EROFS) return absl::PermissionDeniedError(msg);
  if (err == EEXIST || err == ENOTEMPTY) return absl::AlreadyExistsError(msg);
  return absl::InternalError(msg);
}

absl::Status FsyncFolder(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Errno("cannot open", path);
  const int rc = ::fsync(fd);
  ::close(fd);
  return rc == 0 ? absl::OkStatus() : Errno("cannot fsync", path);
}

// WriteFile creates `path` holding `bytes` and fsyncs it.
absl::Status WriteFile(const std::string& path, absl::string_view bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("cannot create", path);
  absl::Status status;
  for (size_t done = 0; done < bytes.size() && status.ok();) {
    const ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0 && errno != EINTR) status = Errno("cannot write", path);
    if (w > 0) done += static_cast<size_t>(w);
  }
  if (status.ok() && ::fsync(fd) != 0) status = Errno("cannot fsync", path);
  if (::close(fd) != 0 && status.ok()) status = Errno("cannot close", path);
  return status;
}

// CopyFile copies a (small: tokenizer, code) file whole, durably.
absl::Status CopyFile(const std::string& from, const std::string& to) {
  std::ifstream in(from, std::ios::binary);
  if (!in) return Errno("cannot read", from);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return Errno("cannot read", from);
  return WriteFile(to, bytes);
}

// StagingFolder is the sibling OUT.tmp-<pid>-XXXXXX; removed unless Publish
// renamed it onto OUT.
class StagingFolder {
 public:
  ~StagingFolder() {
    std::error_code ignored;
    if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
  }
  absl::Status Create(const std::string& out) {
    std::string tmpl = absl::StrCat(out, ".tmp-", getpid(), "-XXXXXX");
    // Unlike mlx-lm's mkdir(parents=True), a missing parent is an error: a
    // failed convert then leaves no folder at all behind.
    if (mkdtemp(tmpl.data()) == nullptr) {
      return Errno("cannot create a staging folder (its parent must exist) beside", out);
    }
    path_ = tmpl;
    if (::chmod(path_.c_str(), 0755) != 0) return Errno("cannot chmod", path_);
    return absl::OkStatus();
  }
  const std::string& path() const { return path_; }
  // Publish renames the folder onto `out`, never replacing an existing one.
  absl::Status Publish(const std::string& out) {
    QLINEAR_RETURN_IF_ERROR(FsyncFolder(path_));
    if (::renameat2(AT_FDCWD, path_.c_str(), AT_FDCWD, out.c_str(), RENAME_NOREPLACE) != 0) {
      if (errno == EEXIST) {
        return absl::AlreadyExistsError(absl::StrCat("'", out, "' already exists"));
      }
      if (errno != EINVAL && errno != ENOSYS) return Errno("cannot rename onto", out);
      struct stat st;  // a file system without RENAME_NOREPLACE
      if (::lstat(out.c_str(), &st) == 0) {
        return absl::AlreadyExistsError(absl::StrCat("'", out, "' already exists"));
      }
      if (::rename(path_.c_str(), out.c_str()) != 0) return Errno("cannot rename onto", out);
    }
    path_.clear();
    const std::filesystem::path parent = std::filesystem::path(out).parent_path();
    return FsyncFolder(parent.empty() ? "." : parent.string());
  }

 private:
  std::string path_;
};

// ---- The conversion plan: every output tensor in parameter order.

struct QModule {
  const Module* module;
  QuantParams params;
  int parts_left = 0;
  std::optional<QuantizedMatrix> q;  // while some part is still to be written
};

struct OutTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  size_t bytes = 0;
  const TensorInfo* source = nullptr;  // part < 0: written from it (cast)
  int part = -1;                       // 0 weight, 1 scales, 2 biases of qmodules[qm]
  size_t qm = 0;
};

// Cast converts `t`'s values to `to`, rounding to nearest even (F64 goes
// through float32 first).
std::vector<uint8_t> Cast(const TensorInfo& t, absl::Span<const uint8_t> src, DType to) {
  const size_t n = static_cast<size_t>(t.elements());
  std::vector<uint8_t> out(n * DTypeSize(to));
  for (size_t i = 0; i < n; ++i) {
    float v;
    if (t.dtype == DType::kF64) {
      double d;
      std::memcpy(&d, src.data() + 8 * i, 8);
      v = static_cast<float>(d);
    } else {
      v = LoadFloat(t.dtype, src.data(), i);
    }
    StoreFloat(to, out.data(), i, v);
  }
  return out;
}

bool IsFloat(DType d) { return IsFloatDType(d) || d == DType::kF64; }

// Converter runs one ConvertFolder call: the steps of mlx-lm's convert(),
// each a method that fills the members the next one reads.
class Converter {
 public:
  explicit Converter(const ConvertOptions& o) : o_(o) {}

  absl::StatusOr<ConvertResult> Run() {
    QLINEAR_ASSIGN_OR_RETURN(global_, MakeQuantParams(o_.mode, o_.bits, o_.group_size));
    if (!o_.recipe.empty() && o_.mode != QuantMode::kAffine) {
      return absl::InvalidArgumentError(
          "--recipe supports only --mode affine (mlx-lm convert.py 121-123)");
    }
    out_ = o_.out;
    while (out_.size() > 1 && absl::EndsWith(out_, "/")) out_.pop_back();
    QLINEAR_RETURN_IF_ERROR(Open());
    QLINEAR_RETURN_IF_ERROR(MatchTensors());
    QLINEAR_RETURN_IF_ERROR(Plan());
    QLINEAR_RETURN_IF_ERROR(staging_.Create(out_));
    QLINEAR_RETURN_IF_ERROR(WriteShards());
    QLINEAR_RETURN_IF_ERROR(WriteJson());
    QLINEAR_RETURN_IF_ERROR(CopyOthers());
    if (Cancelled()) return CancelledStatus();
    QLINEAR_RETURN_IF_ERROR(staging_.Publish(out_));
    return result_;
  }

 private:
  void Log(const std::string& line) const {
    if (o_.log) o_.log(line);
  }
  bool Cancelled() const { return o_.cancel != nullptr && o_.cancel->load(); }
  absl::Status CancelledStatus() const {
    return absl::CancelledError(absl::StrCat("interrupted; '", out_, "' was not created"));
  }
  DType DTypeOf(const TensorInfo& t) const { return cast_ && IsFloat(t.dtype) ? *cast_ : t.dtype; }

  // Open reads the folder and refuses what convert does not handle.
  absl::Status Open() {
    struct stat st;
    if (::stat(o_.in.c_str(), &st) != 0) return Errno("cannot open", o_.in);
    if (!S_ISDIR(st.st_mode)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--in '", o_.in, "' is not a folder; convert reads a model folder"));
    }
    if (::lstat(out_.c_str(), &st) == 0) {  // as convert.py 105-109
      return absl::AlreadyExistsError(
          absl::StrCat("'", out_,
                       "' already exists; convert never writes into an existing folder: remove it "
                       "or choose another --out"));
    }
    CheckpointOptions options;
    options.float_params = global_;
    QLINEAR_ASSIGN_OR_RETURN(ckpt_, Checkpoint::Open(o_.in, options));
    config_path_ = absl::StrCat(o_.in, "/config.json");
    if (ckpt_->config_json().empty()) {
      return absl::InvalidArgumentError(absl::StrCat("'", config_path_, "' is missing"));
    }
    config_ = OJson::parse(ckpt_->config_json(), nullptr, /*allow_exceptions=*/false);
    if (config_.is_discarded() || !config_.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat("'", config_path_, "' is not a JSON object"));
    }
    for (const CheckpointLayer& layer : ckpt_->layers()) {
      if (layer.quantized) {
        return absl::FailedPreconditionError(
            absl::StrCat("'", o_.in, "' is already quantized ('", layer.name, "' is ",
                         layer.params.ToString(), "); convert needs a float model folder"));
      }
    }
    const OJson text = config_.value("text_config", OJson::object());
    for (const char* key : {"quantization", "quantization_config"}) {
      if (config_.contains(key) || (text.is_object() && text.contains(key))) {
        return absl::FailedPreconditionError(
            absl::StrCat("'", o_.in, "' is already quantized: '", config_path_, "' has \"", key,
                         "\"; convert needs a float model folder"));
      }
    }
    QLINEAR_ASSIGN_OR_RETURN(family_, FamilyOf(config_));
    if (family_.name == "qwen3" && !config_.contains("tie_word_embeddings")) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", config_path_,
                       "' lacks \"tie_word_embeddings\", which mlx-lm's qwen3 ModelArgs "
                       "requires (models/qwen3.py 28)"));
    }
    // ModelArgs defaults tie_word_embeddings to True (llama.py 33, qwen2.py 29).
    tied_ = Truthy(config_.value("tie_word_embeddings", OJson(true)));
    if (family_.name == "llama" && config_.contains("layer_types") &&
        config_["layer_types"].is_array()) {
      num_layers_ = static_cast<int64_t>(config_["layer_types"].size());  // llama.py 41-42, 161
    } else {
      QLINEAR_ASSIGN_OR_RETURN(num_layers_, IntField(config_, "num_hidden_layers"));
    }
    // convert.py 130-145: --dtype, else torch_dtype, else text_config's dtype.
    cast_ = o_.dtype;
    if (!cast_) {
      OJson name = config_.value("torch_dtype", OJson());
      if (name.is_null() && text.is_object() && Truthy(text)) name = text.value("dtype", OJson());
      static const std::map<std::string, DType> kDTypes = {
          {"float16", DType::kF16}, {"bfloat16", DType::kBF16}, {"float32", DType::kF32}};
      if (name.is_string() && kDTypes.count(name.get<std::string>())) {
        cast_ = kDTypes.at(name.get<std::string>());
      }
    }
    return absl::OkStatus();
  }

  // MatchTensors pairs every tensor with a model parameter, as sanitize and
  // load_weights(strict=True) do.
  absl::Status MatchTensors() {
    modules_ = ModuleList(family_, config_, num_layers_, tied_);
    std::map<std::string, Module*> by_path;
    for (Module& m : modules_) by_path[m.path] = &m;
    for (const TensorInfo* t : ckpt_->tensors()) {
      const std::string where = absl::StrCat("tensor '", t->name, "' of '", ckpt_->FileOf(*t), "'");
      if (t->shape.size() > 2) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, " is ", t->shape.size(), "-D ", t->ShapeString(),
                         ": 3-D weights are MoE "
                         "experts (mlx-lm's SwitchLinear), which convert does not handle"));
      }
      if (family_.drops_inv_freq && absl::StrContains(t->name, "self_attn.rotary_emb.inv_freq")) {
        Log(absl::StrCat("note: dropped '", t->name, "', as mlx-lm's sanitize does"));
        continue;
      }
      if (tied_ && t->name == "lm_head.weight") {
        Log("note: dropped 'lm_head.weight': tie_word_embeddings is true (or absent: mlx-lm's "
            "default), so embed_tokens serves as lm_head, as mlx-lm's sanitize does");
        continue;
      }
      const size_t dot = t->name.find_last_of('.');
      auto m = dot == std::string::npos ? by_path.end() : by_path.find(t->name.substr(0, dot));
      const std::string leaf = dot == std::string::npos ? "" : t->name.substr(dot + 1);
      if (m != by_path.end() && leaf == "weight") {
        m->second->weight = t;
      } else if (m != by_path.end() && leaf == "bias" && m->second->kind == Kind::kLinear) {
        m->second->bias = t;  // allowed on any Linear (the fixtures' q_proj carries one)
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat(where, " is not a parameter of mlx-lm's ", family_.name, " model (models/",
                         family_.name, ".py, ", num_layers_, " layers, tie_word_embeddings ",
                         tied_ ? "true" : "false", ")"));
      }
      const size_t dims = leaf == "weight" && m->second->kind != Kind::kNorm ? 2 : 1;
      if (!IsFloat(t->dtype) || t->shape.size() != dims) {
        return absl::InvalidArgumentError(absl::StrCat(where, " must be a ", dims,
                                                       "-D float tensor; got ", DTypeName(t->dtype),
                                                       " ", t->ShapeString()));
      }
    }
    for (const Module& m : modules_) {
      for (const auto& [t, leaf] : {std::pair{m.weight, ".weight"}, std::pair{m.bias, ".bias"}}) {
        if (t == nullptr && (leaf[1] == 'w' || m.bias_required)) {
          return absl::InvalidArgumentError(absl::StrCat("'", o_.in, "' lacks tensor '", m.path,
                                                         leaf, "', which mlx-lm's ", family_.name,
                                                         " model requires"));
        }
      }
    }
    return absl::OkStatus();
  }

  void AddFloat(const TensorInfo* t) {
    const DType d = DTypeOf(*t);
    plan_.push_back({t->name, d, t->shape, static_cast<size_t>(t->elements()) * DTypeSize(d), t});
    result_.total_parameters += static_cast<uint64_t>(t->elements());
  }

  // ModuleParams is wrapped_predicate (utils.py 867-879) for one module:
  // its parameters, or nullopt to leave it float.
  absl::StatusOr<std::optional<QuantParams>> ModuleParams(const Module& m, OJson* quantization) {
    if (m.kind == Kind::kNorm) return std::nullopt;
    if (m.weight->shape[1] % global_.group_size != 0) {
      Log(absl::StrCat("note: '", m.path, "' stays float: its input dim ", m.weight->shape[1],
                       " does not divide by the group size ", global_.group_size));
      return std::nullopt;
    }
    const ModuleRule rule = predicate_ ? predicate_(m.path) : ModuleRule{};
    if (rule.entry_json.empty()) return rule.quantize ? std::optional(global_) : std::nullopt;
    OJson entry = OJson::parse(rule.entry_json, nullptr, false);
    if (entry.is_discarded() || !entry.is_object()) {
      return absl::InternalError(absl::StrCat("predicate entry for '", m.path,
                                              "' is not a JSON object: ", rule.entry_json));
    }
    (*quantization)[m.path] = entry;         // a dict is written even when empty...
    if (entry.empty()) return std::nullopt;  // ...but an empty one is falsy
    auto p = ParamsOfEntry(entry);
    if (!p.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("module '", m.path, "': ", p.status().message()));
    }
    return std::optional(*p);
  }

  // Plan is quantize_model (utils.py 818-894) and make_shards (642-663)
  // without the arithmetic: every output tensor, its size and its shard.
  absl::Status Plan() {
    predicate_ = o_.predicate;
    if (!predicate_ && !o_.recipe.empty()) {
      if (num_layers_ == 0) {  // convert.py 38-40
        return absl::InvalidArgumentError("Model does not have expected keys for mixed quant.");
      }
      QLINEAR_ASSIGN_OR_RETURN(predicate_, MixedRecipe(o_.recipe, num_layers_, o_.group_size));
    }
    quantization_ = {{"group_size", global_.group_size},
                     {"bits", global_.bits},
                     {"mode", std::string(QuantModeName(global_.mode))}};
    for (const Module& m : modules_) {
      QLINEAR_ASSIGN_OR_RETURN(const std::optional<QuantParams> params,
                               ModuleParams(m, &quantization_));
      if (!params) {
        AddFloat(m.weight);
        if (m.bias != nullptr) AddFloat(m.bias);
        if (m.kind != Kind::kNorm) ++result_.float_modules;
        continue;
      }
      const int64_t n = m.weight->shape[0], k = m.weight->shape[1];
      if (absl::Status s = ValidateInputDim(*params, k); !s.ok() || n == 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor '", m.weight->name, "' ", m.weight->ShapeString(), " cannot be quantized with ",
            params->ToString(), ": ", s.ok() ? "it is empty" : s.message()));
      }
      const DType d = DTypeOf(*m.weight);
      if (!IsFloatDType(d)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor '", m.weight->name, "' is F64, which MLX does not quantize; pass --dtype"));
      }
      const size_t qm = qmodules_.size();
      qmodules_.push_back({&m, *params, params->has_biases() ? 3 : 2, std::nullopt});
      const int64_t cols = params->packed_cols(k), g = params->groups(k);
      const DType sd = params->has_biases() ? d : DType::kU8;
      const size_t sbytes = static_cast<size_t>(n * g) * DTypeSize(sd);
      plan_.push_back({m.path + ".weight",
                       DType::kU32,
                       {n, cols},
                       static_cast<size_t>(n * cols) * 4,
                       nullptr,
                       0,
                       qm});
      plan_.push_back({m.path + ".scales", sd, {n, g}, sbytes, nullptr, 1, qm});
      if (params->has_biases()) {
        plan_.push_back({m.path + ".biases", sd, {n, g}, sbytes, nullptr, 2, qm});
      }
      result_.total_parameters += static_cast<uint64_t>(n * k);  // weight.size * 32 // bits
      if (m.bias != nullptr) AddFloat(m.bias);
      ++result_.quantized_modules;
    }
    // Greedy, as make_shards: a first tensor above the cap leaves the first
    // shard empty there too.
    shards_.emplace_back();
    uint64_t size = 0;
    for (size_t i = 0; i < plan_.size(); ++i) {
      if (size + plan_[i].bytes > o_.max_shard_bytes) shards_.emplace_back(), size = 0;
      shards_.back().push_back(i);
      size += plan_[i].bytes;
      result_.total_size += plan_[i].bytes;
    }
    return absl::OkStatus();
  }

  // Quantized returns module `qm`, quantizing its (cast) weight on first use.
  absl::StatusOr<const QuantizedMatrix*> Quantized(QModule& qm) {
    if (qm.q) return &*qm.q;
    const TensorInfo& w = *qm.module->weight;
    const auto src = ckpt_->Data(w);
    const DType d = DTypeOf(w);
    const std::vector<uint8_t> casted = d != w.dtype ? Cast(w, src, d) : std::vector<uint8_t>();
    const uint8_t* data = d != w.dtype ? casted.data() : src.data();
    auto q = Quantize(qm.params, d, data, w.shape[0], w.shape[1]);
    if (!q.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", w.name, "' of '", ckpt_->FileOf(w),
                                                     "': ", q.status().message()));
    }
    Log(absl::StrCat(qm.module->path, ": ", w.ShapeString(), " ", DTypeName(d), " -> ",
                     qm.params.ToString(), "  ", ComputeErrorReport(*q, d, data).ToString()));
    qm.q = *std::move(q);
    return &*qm.q;
  }

  absl::Status WriteShards() {
    for (size_t s = 0; s < shards_.size(); ++s) {
      const std::string file =
          shards_.size() == 1
              ? "model.safetensors"
              : absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, shards_.size());
      std::deque<std::vector<uint8_t>> casts;  // live until the shard is written
      std::vector<TensorToWrite> tensors;
      for (size_t i : shards_[s]) {
        if (Cancelled()) return CancelledStatus();
        const OutTensor& t = plan_[i];
        weight_map_[t.name] = file;
        absl::Span<const uint8_t> bytes;
        if (t.part < 0) {
          bytes = ckpt_->Data(*t.source);
          if (t.dtype != t.source->dtype) {
            casts.push_back(Cast(*t.source, bytes, t.dtype));
            bytes = absl::MakeConstSpan(casts.back());
          }
        } else {
          QLINEAR_ASSIGN_OR_RETURN(const QuantizedMatrix* q, Quantized(qmodules_[t.qm]));
          bytes = t.part == 0 ? absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(q->wq.data()),
                                                    q->wq.size() * 4)
                  : t.part == 1 ? absl::MakeConstSpan(q->scales)
                                : absl::MakeConstSpan(q->biases);
        }
        tensors.push_back({t.name, t.dtype, t.shape, bytes});
      }
      QLINEAR_RETURN_IF_ERROR(
          WriteSafetensors(absl::StrCat(staging_.path(), "/", file), tensors, {{"format", "mlx"}}));
      for (size_t i : shards_[s]) {  // a module split across shards stays for its last part
        if (plan_[i].part >= 0 && --qmodules_[plan_[i].qm].parts_left == 0) {
          qmodules_[plan_[i].qm].q.reset();
        }
      }
      result_.shards.push_back(file);
      if (o_.after_shard) QLINEAR_RETURN_IF_ERROR(o_.after_shard(file));
      if (Cancelled()) return CancelledStatus();
    }
    return absl::OkStatus();
  }

  // WriteJson writes the index (utils.py 778-815) and save_config's
  // config.json (943-966) of the config load_config read: it takes
  // eos_token_id from generation_config.json when truthy (281-291).
  absl::Status WriteJson() {
    OJson map = OJson::object();
    for (const auto& [name, file] : weight_map_) map[name] = file;
    const OJson index = {
        {"metadata",
         {{"total_size", result_.total_size}, {"total_parameters", result_.total_parameters}}},
        {"weight_map", map}};
    QLINEAR_RETURN_IF_ERROR(
        WriteFile(staging_.path() + "/model.safetensors.index.json", PyDumps(index)));
    std::ifstream gen_in(o_.in + "/generation_config.json");
    if (gen_in) {
      const OJson gen = OJson::parse(gen_in, nullptr, false);  // a JSONDecodeError is ignored
      if (!gen.is_discarded() && gen.is_object() && Truthy(gen.value("eos_token_id", OJson()))) {
        config_["eos_token_id"] = gen["eos_token_id"];
      }
    }
    config_.erase("_name_or_path");
    config_.erase("vision_config");
    config_["quantization"] = quantization_;
    config_["quantization_config"] = quantization_;
    return WriteFile(staging_.path() + "/config.json", PyDumps(SortedByKey(config_)));
  }

  // CopyOthers copies every other file but weights: tokenizer files,
  // generation_config.json, *.py, ... (mlx-lm re-saves the tokenizer and
  // copies *.py and generation_config.json; a copy keeps all of them).
  absl::Status CopyOthers() {
    std::vector<std::string> names;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(o_.in, ec)) {
      const std::string name = entry.path().filename().string();
      bool weights = name == "config.json";
      for (const char* ext : {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json"}) {
        weights = weights || absl::EndsWith(name, ext);
      }
      if (weights) continue;
      if (!entry.is_regular_file()) {
        Log(absl::StrCat("note: '", name, "' is not a regular file; not copied"));
        continue;
      }
      names.push_back(name);
    }
    if (ec) return absl::InternalError(absl::StrCat("cannot list '", o_.in, "': ", ec.message()));
    std::sort(names.begin(), names.end());
    for (const std::string& name : names) {
      if (Cancelled()) return CancelledStatus();
      QLINEAR_RETURN_IF_ERROR(
          CopyFile(absl::StrCat(o_.in, "/", name), absl::StrCat(staging_.path(), "/", name)));
      result_.copied.push_back(name);
    }
    return absl::OkStatus();
  }

  const ConvertOptions& o_;
  QuantParams global_;
  std::string out_, config_path_;
  std::unique_ptr<Checkpoint> ckpt_;
  OJson config_, quantization_;
  Family family_;
  bool tied_ = true;
  int64_t num_layers_ = 0;
  std::optional<DType> cast_;  // unset: every tensor keeps its dtype
  QuantPredicate predicate_;
  std::vector<Module> modules_;  // in definition order; plan_ points into it
  std::vector<QModule> qmodules_;
  std::vector<OutTensor> plan_;
  std::vector<std::vector<size_t>> shards_;  // indices into plan_
  std::map<std::string, std::string> weight_map_;
  StagingFolder staging_;  // removed on any early return
  ConvertResult result_;
};

}  // namespace

absl::StatusOr<ConvertResult> ConvertFolder(const ConvertOptions& options) {
  return Converter(options).Run();
}

namespace {

std::atomic<bool> g_cancel{false};
volatile sig_atomic_t g_signal = 0;

void OnSignal(int sig) {
  g_signal = sig;
  g_cancel.store(true);
}

}  // namespace

int RunConvert(int argc, char** argv) {
  const Command cmd{"convert",
                    "--in FLOAT_FOLDER --out QUANTIZED_FOLDER [--bits B] [--group-size G] "
                    "[--mode affine|mxfp4|mxfp8|nvfp4] [--dtype f32|f16|bf16] "
                    "[--recipe mixed_2_6|mixed_3_4|mixed_3_6|mixed_4_6]"};
  auto flags = Flags::Parse(argc, argv, 2,
                            {"in", "out", "bits", "group-size", "mode", "dtype", "recipe"}, {});
  if (!flags.ok()) return cmd.Usage(flags.status().message());
  if (!flags->positional().empty()) {
    return cmd.Usage(absl::StrCat("unexpected argument '", flags->positional()[0], "'"));
  }
  ConvertOptions o;
  const auto in = flags->Get("in");
  const auto out = flags->Get("out");
  if (!in || !out || in->empty() || out->empty()) return cmd.Usage("--in and --out are required");
  o.in = *in;
  o.out = *out;
  auto partial = ParseQuantFlags(*flags);
  if (!partial.ok()) return cmd.Usage(partial.status().message());
  o.mode = partial->mode.value_or(QuantMode::kAffine);
  o.bits = partial->bits;
  o.group_size = partial->group_size;
  if (auto p = MakeQuantParams(o.mode, o.bits, o.group_size); !p.ok()) {
    return cmd.Usage(p.status().message());
  }
  if (auto d = flags->Get("dtype")) {
    o.dtype = ParseFloatDType(*d);
    if (!o.dtype) {
      return cmd.Usage(absl::StrCat("--dtype must be f32, f16 or bf16; got '", *d, "'"));
    }
  }
  o.recipe = flags->Get("recipe").value_or("");
  if (!o.recipe.empty()) {
    if (auto r = MixedRecipe(o.recipe, 1, std::nullopt); !r.ok()) {
      return cmd.Usage(r.status().message());
    }
    if (o.mode != QuantMode::kAffine) {
      return cmd.Usage("--recipe supports only --mode affine (mlx-lm convert.py 121-123)");
    }
  }
  o.log = [](const std::string& line) { std::printf("%s\n", line.c_str()); };
  o.cancel = &g_cancel;
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sa.sa_flags = SA_RESTART;  // let I/O finish; the flag is read between tensors
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  auto result = ConvertFolder(o);
  if (!result.ok()) {
    const int code = cmd.Fail(result.status());
    if (g_signal != 0) {  // die of the signal, as the shell expects
      std::fflush(stdout);
      std::signal(g_signal, SIG_DFL);
      std::raise(g_signal);
    }
    return code;
  }
  std::printf(
      "wrote %s: %d modules quantized, %d left float, %zu shard%s, %zu files copied, "
      "total_size %llu, total_parameters %llu\n",
      o.out.c_str(), result->quantized_modules, result->float_modules, result->shards.size(),
      result->shards.size() == 1 ? "" : "s", result->copied.size(),
      static_cast<unsigned long long>(result->total_size),
      static_cast<unsigned long long>(result->total_parameters));
  return 0;
}

}  // namespace qlinear
