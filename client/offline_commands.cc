#include "client/offline_commands.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/command.h"
#include "core/checkpoint.h"
#include "core/flags.h"
#include "core/half.h"
#include "core/mlx_file.h"
#include "core/quantize.h"
#include "core/reference.h"
#include "core/safetensors.h"

namespace qlinear {
namespace {

const std::set<std::string> kParamFlags = {"bits", "group-size", "mode"};


std::set<std::string> With(std::set<std::string> a, const std::set<std::string>& b) {
  a.insert(b.begin(), b.end());
  return a;
}

std::string ShapeOf(int64_t n, int64_t k) { return absl::StrCat("[", n, ", ", k, "]"); }

}  // namespace

// OpenCheckpoint opens a file or folder through the one reader and prints
// its warnings and skipped tensors the same way for every command.
static absl::StatusOr<std::unique_ptr<Checkpoint>> OpenCheckpoint(const Command& cmd,
                                                           const std::string& path,
                                                           const CheckpointOptions& options,
                                                           const char* skipped_verb) {
  auto checkpoint = Checkpoint::Open(path, options);
  if (!checkpoint.ok()) return checkpoint.status();
  for (const std::string& w : (*checkpoint)->warnings()) {
    std::fprintf(stderr, "qlinear %s: warning: %s\n", cmd.name, w.c_str());
  }
  for (const SkippedTensor& t : (*checkpoint)->skipped()) {
    const TensorInfo* info = (*checkpoint)->Find(t.tensor);
    std::fprintf(stderr, "qlinear %s: warning: '%s' %s %s %s: %s\n", cmd.name, t.tensor.c_str(),
                 info->ShapeString().c_str(), std::string(DTypeName(info->dtype)).c_str(),
                 skipped_verb, t.reason.c_str());
  }
  return checkpoint;
}

static TensorToWrite CopyOf(const Checkpoint& c, const TensorInfo& t) {
  return {t.name, t.dtype, t.shape, c.Data(t)};
}

int RunQuantize(int argc, char** argv) {
  const Command cmd{"quantize",
                    "--in IN.safetensors|FOLDER --out OUT.safetensors [--bits B] "
                    "[--group-size G] [--mode affine|mxfp4|mxfp8|nvfp4]"};
  auto flags = Flags::Parse(argc, argv, 2, With({"in", "out"}, kParamFlags), {});
  if (!flags.ok()) return cmd.Usage(flags.status().message());
  if (!flags->positional().empty()) {
    return cmd.Usage(absl::StrCat("unexpected argument '", flags->positional()[0], "'"));
  }
  const auto in = flags->Get("in");
  const auto out = flags->Get("out");
  if (!in || !out) return cmd.Usage("--in and --out are required");
  auto overrides = ParseQuantFlags(*flags);
  if (!overrides.ok()) return cmd.Usage(overrides.status().message());
  auto params = MakeQuantParams(*overrides);
  if (!params.ok()) return cmd.Usage(params.status().message());

  // Layers that are already quantized are resolved from the file alone and
  // copied as they are; the output's metadata must keep saying how, or they
  // would be read with the new flags.
  CheckpointOptions options;
  options.float_params = *params;
  auto checkpoint = OpenCheckpoint(cmd, *in, options, "copied unquantized");
  if (!checkpoint.ok()) return cmd.Fail(checkpoint.status());
  const Checkpoint& c = **checkpoint;
  std::map<std::string, QuantParams> existing;
  std::map<const TensorInfo*, const CheckpointLayer*> to_quantize;
  for (const CheckpointLayer& layer : c.layers()) {
    if (layer.quantized) {
      existing[layer.name] = layer.params;
      std::fprintf(stderr, "qlinear quantize: note: '%s' is already quantized (%s); copied\n",
                   layer.name.c_str(), layer.params.ToString().c_str());
    } else {
      to_quantize[layer.weight] = &layer;
    }
  }
  std::deque<LoadedLayer> quantized;  // stable addresses for the views
  std::vector<TensorToWrite> tensors;
  for (const TensorInfo* t : c.tensors()) {
    auto it = to_quantize.find(t);
    if (it == to_quantize.end()) {
      tensors.push_back(CopyOf(c, *t));
      continue;
    }
    const CheckpointLayer& layer = *it->second;
    auto loaded = c.Load(layer);
    if (!loaded.ok()) return cmd.Fail(loaded.status());
    std::printf("%s: %s %s -> %s  %s\n", layer.name.c_str(), ShapeOf(layer.n, layer.k).c_str(),
                std::string(DTypeName(t->dtype)).c_str(), params->ToString().c_str(),
                loaded->report->ToString().c_str());
    quantized.push_back(*std::move(loaded));
    for (TensorToWrite& w : QuantizedTensors(layer.name, quantized.back().q)) {
      tensors.push_back(std::move(w));
    }
  }
  std::map<std::string, std::string> metadata = c.metadata();
  metadata["format"] = "mlx";
  metadata["quantization"] = QuantizationConfig::ToJson(*params, existing);
  absl::Status written = WriteSafetensors(*out, tensors, metadata);
  if (!written.ok()) return cmd.Fail(written);
  std::printf("wrote %s: %zu layers quantized, %zu tensors\n", out->c_str(),
              quantized.size(), tensors.size());
  return 0;
}

int RunDequantize(int argc, char** argv) {
  const Command cmd{"dequantize",
                    "--in Q.safetensors|FOLDER --out F.safetensors [--dtype f32|f16|bf16] "
                    "[--bits B] [--group-size G] [--mode M]"};
  auto flags = Flags::Parse(argc, argv, 2, With({"in", "out", "dtype"}, kParamFlags), {});
  if (!flags.ok()) return cmd.Usage(flags.status().message());
  if (!flags->positional().empty()) {
    return cmd.Usage(absl::StrCat("unexpected argument '", flags->positional()[0], "'"));
  }
  const auto in = flags->Get("in");
  const auto out = flags->Get("out");
  if (!in || !out) return cmd.Usage("--in and --out are required");
  auto overrides = ParseQuantFlags(*flags);
  if (!overrides.ok()) return cmd.Usage(overrides.status().message());
  std::optional<DType> out_dtype;
  if (auto d = flags->Get("dtype")) {
    out_dtype = ParseFloatDType(*d);
    if (!out_dtype) {
      return cmd.Usage(absl::StrCat("--dtype must be f32, f16 or bf16; got '", *d, "'"));
    }
  }
  CheckpointOptions options;
  options.overrides = *overrides;
  auto checkpoint = Checkpoint::Open(*in, options);
  if (!checkpoint.ok()) return cmd.Fail(checkpoint.status());
  const Checkpoint& c = **checkpoint;

  std::set<std::string> consumed;
  std::deque<std::vector<uint8_t>> buffers;
  std::vector<TensorToWrite> tensors;
  for (const CheckpointLayer& layer : c.layers()) {
    if (!layer.quantized) continue;  // float weights are copied as they are
    auto loaded = c.Load(layer);
    if (!loaded.ok()) return cmd.Fail(loaded.status());
    const QuantizedMatrix& q = loaded->q;
    const DType dtype = out_dtype.value_or(layer.params.has_biases() ? q.dtype : DType::kBF16);
    buffers.emplace_back(static_cast<size_t>(q.n * q.k) * DTypeSize(dtype));
    Dequantize(q, dtype, buffers.back().data());
    tensors.push_back({layer.name + ".weight", dtype, {q.n, q.k},
                       absl::MakeConstSpan(buffers.back())});
    for (const char* suffix : {".weight", ".scales", ".biases"}) {
      consumed.insert(layer.name + suffix);
    }
    std::printf("%s: %s %s -> %s %s\n", layer.name.c_str(), ShapeOf(q.n, q.k).c_str(),
                layer.params.ToString().c_str(), std::string(DTypeName(dtype)).c_str(),
                ShapeOf(q.n, q.k).c_str());
  }
  for (const TensorInfo* t : c.tensors()) {
    if (!consumed.count(t->name)) tensors.push_back(CopyOf(c, *t));
  }
  std::map<std::string, std::string> metadata = c.metadata();
  metadata.erase("quantization");
  absl::Status written = WriteSafetensors(*out, tensors, metadata);
  if (!written.ok()) return cmd.Fail(written);
  std::printf("wrote %s: %zu layers dequantized, %zu tensors\n", out->c_str(),
              buffers.size(), tensors.size());
  return 0;
}

int RunInspect(int argc, char** argv) {
  const Command cmd{"inspect", "FILE.safetensors|FOLDER [--bits B] [--group-size G] [--mode M]"};
  auto flags = Flags::Parse(argc, argv, 2, kParamFlags, {});
  if (!flags.ok()) return cmd.Usage(flags.status().message());
  if (flags->positional().size() != 1) return cmd.Usage("expected exactly one FILE or FOLDER");
  const std::string path = flags->positional()[0];
  auto overrides = ParseQuantFlags(*flags);
  if (!overrides.ok()) return cmd.Usage(overrides.status().message());
  auto float_params = MakeQuantParams(*overrides);
  if (!float_params.ok()) return cmd.Usage(float_params.status().message());
  CheckpointOptions options;
  options.overrides = *overrides;
  options.float_params = *float_params;
  options.tolerate_unresolved = true;  // listed as unresolved, not fatal
  auto checkpoint = OpenCheckpoint(cmd, path, options, "would not be served");
  if (!checkpoint.ok()) return cmd.Fail(checkpoint.status());
  const Checkpoint& c = **checkpoint;

  size_t bytes = 0;
  for (const TensorInfo* t : c.tensors()) bytes += t->size;
  std::printf("%s: %zu tensors, %zu bytes of data%s\n", path.c_str(), c.tensors().size(), bytes,
              c.is_folder() ? absl::StrCat(", ", c.files().size(), " files").c_str() : "");
  for (const auto& [key, value] : c.metadata()) {
    std::printf("  metadata %s = %s\n", key.c_str(), value.c_str());
  }
  std::printf("%-48s %-6s %s\n", "tensor", "dtype", "shape");
  for (const TensorInfo* t : c.tensors()) {
    std::string where;
    if (c.is_folder()) {
      const std::string& file = c.FileOf(*t);
      where = "  " + file.substr(file.find_last_of('/') + 1);
    }
    std::printf("%-48s %-6s %s%s\n", t->name.c_str(), std::string(DTypeName(t->dtype)).c_str(),
                t->ShapeString().c_str(), where.c_str());
  }
  size_t quantized = 0;
  for (const CheckpointLayer& layer : c.layers()) quantized += layer.quantized;
  std::printf("quantized layers: %zu\n", quantized);
  for (const CheckpointLayer& layer : c.layers()) {
    if (!layer.quantized) continue;
    std::printf("  %s: N=%lld K=%lld %s scales %s%s\n", layer.name.c_str(),
                static_cast<long long>(layer.n), static_cast<long long>(layer.k),
                layer.params.ToString().c_str(),
                std::string(DTypeName(layer.scales->dtype)).c_str(), layer.bias ? " +bias" : "");
  }
  return 0;
}

int RunDemo(int argc, char** argv) {
  const Command cmd{"demo",
                    "[--n N] [--k K] [--bits B] [--group-size G] [--mode M] "
                    "[--dtype f32|f16|bf16] [--seed S]"};
  auto flags = Flags::Parse(argc, argv, 2,
                            With({"n", "k", "dtype", "seed"}, kParamFlags), {});
  if (!flags.ok()) return cmd.Usage(flags.status().message());
  if (!flags->positional().empty()) {
    return cmd.Usage(absl::StrCat("unexpected argument '", flags->positional()[0], "'"));
  }
  auto overrides = ParseQuantFlags(*flags);
  if (!overrides.ok()) return cmd.Usage(overrides.status().message());
  auto params = MakeQuantParams(*overrides);
  if (!params.ok()) return cmd.Usage(params.status().message());
  auto n = flags->GetInt("n");
  auto k = flags->GetInt("k");
  auto seed = flags->GetInt("seed");
  if (!n.ok() || !k.ok() || !seed.ok()) {
    return cmd.Usage(!n.ok() ? n.status().message()
                     : !k.ok() ? k.status().message() : seed.status().message());
  }
  const int64_t rows = n->value_or(4096);
  const int64_t cols = k->value_or(4096);
  if (rows <= 0 || rows > (1 << 16) || cols <= 0 || cols > (1 << 16)) {
    return cmd.Usage(absl::StrCat("--n and --k must be in [1, 65536]; got ", rows,
                                  " and ", cols));
  }
  if (absl::Status s = ValidateInputDim(*params, cols); !s.ok()) return cmd.Usage(s.message());
  DType dtype = DType::kF32;
  if (auto d = flags->Get("dtype")) {
    auto parsed = ParseFloatDType(*d);
    if (!parsed) return cmd.Usage(absl::StrCat("--dtype must be f32, f16 or bf16; got '", *d, "'"));
    dtype = *parsed;
  }

  // Seeded weights ~ N(0, 1/K), like a trained projection's scale.
  std::mt19937_64 rng(static_cast<uint64_t>(seed->value_or(0)));
  std::normal_distribution<float> normal(0.0f, 1.0f / std::sqrt(static_cast<float>(cols)));
  std::vector<uint8_t> w(static_cast<size_t>(rows * cols) * DTypeSize(dtype));
  for (size_t i = 0; i < static_cast<size_t>(rows * cols); ++i) {
    StoreFloat(dtype, w.data(), i, normal(rng));
  }
  const auto start = std::chrono::steady_clock::now();
  auto q = Quantize(*params, dtype, w.data(), rows, cols);
  const double quantize_ms = std::chrono::duration<double, std::milli>(
                                 std::chrono::steady_clock::now() - start).count();
  if (!q.ok()) return cmd.Fail(q.status());
  const ErrorReport report = ComputeErrorReport(*q, dtype, w.data());

  // One forward row through the quantized layer against the float layer.
  std::normal_distribution<float> unit(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(cols));
  for (float& v : x) v = unit(rng);
  std::vector<double> y(static_cast<size_t>(rows));
  ReferenceForwardDouble(*q, DType::kF32, x.data(), 1, nullptr, y.data());
  double err_sq = 0, ref_sq = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double exact = 0;
    for (int64_t c = 0; c < cols; ++c) {
      exact += static_cast<double>(x[static_cast<size_t>(c)]) *
               LoadFloat(dtype, w.data(), static_cast<size_t>(r * cols + c));
    }
    err_sq += (y[static_cast<size_t>(r)] - exact) * (y[static_cast<size_t>(r)] - exact);
    ref_sq += exact * exact;
  }
  std::printf("demo layer: %s %s, seed %lld -> %s\n", ShapeOf(rows, cols).c_str(),
              std::string(DTypeName(dtype)).c_str(),
              static_cast<long long>(seed->value_or(0)), params->ToString().c_str());
  std::printf("  quantized in %.1f ms: %zu bytes held (%.2f bits per weight)\n",
              quantize_ms, q->bytes(),
              8.0 * static_cast<double>(q->bytes()) / static_cast<double>(rows * cols));
  std::printf("  weight error:  %s\n", report.ToString().c_str());
  std::printf("  forward error: one random row, ||y_q - y_float|| / ||y_float|| = %.4g\n",
              ref_sq > 0 ? std::sqrt(err_sq / ref_sq) : 0.0);
  return 0;
}

}  // namespace qlinear
