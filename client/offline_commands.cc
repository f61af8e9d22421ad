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

TensorToWrite CopyOf(const SafetensorsFile& file, const TensorInfo& t) {
  return {t.name, t.dtype, t.shape, file.Data(t)};
}

std::string ShapeOf(int64_t n, int64_t k) { return absl::StrCat("[", n, ", ", k, "]"); }

}  // namespace

int RunQuantize(int argc, char** argv) {
  const Command cmd{"quantize",
                    "--in IN.safetensors --out OUT.safetensors [--bits B] "
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

  auto file = SafetensorsFile::Open(*in);
  if (!file.ok()) return cmd.Fail(file.status());

  // Layers that are already quantized are copied as they are; the output's
  // metadata must keep saying how, or they would be read with the new flags.
  std::map<std::string, QuantParams> existing;
  const std::vector<std::string> already = FindQuantizedLayers(**file);
  if (!already.empty()) {
    auto sources = QuantizationSources::Load(*in, **file, {});
    if (!sources.ok()) return cmd.Fail(sources.status());
    for (const std::string& layer : already) {
      auto p = ResolveLayerParams(**file, layer, *sources);
      if (!p.ok()) return cmd.Fail(p.status());
      existing[layer] = *p;
      std::fprintf(stderr, "qlinear quantize: note: '%s' is already quantized (%s); copied\n",
                   layer.c_str(), p->ToString().c_str());
    }
  }

  std::map<const TensorInfo*, FloatWeight> weights;
  for (FloatWeight& w : FindFloatWeights(**file, *params)) weights[w.tensor] = std::move(w);
  std::deque<QuantizedMatrix> quantized;  // stable addresses for the views
  std::vector<TensorToWrite> tensors;
  for (const TensorInfo& t : (*file)->tensors()) {
    auto it = weights.find(&t);
    if (it == weights.end()) {
      tensors.push_back(CopyOf(**file, t));
      continue;
    }
    const FloatWeight& w = it->second;
    if (!w.skip_reason.empty()) {
      std::fprintf(stderr, "qlinear quantize: warning: '%s' %s %s copied unquantized: %s\n",
                   t.name.c_str(), t.ShapeString().c_str(), std::string(DTypeName(t.dtype)).c_str(),
                   w.skip_reason.c_str());
      tensors.push_back(CopyOf(**file, t));
      continue;
    }
    const int64_t n = t.shape[0];
    const int64_t k = t.shape[1];
    auto data = (*file)->Data(t);
    auto q = Quantize(*params, t.dtype, data.data(), n, k);
    if (!q.ok()) {
      return cmd.Fail(absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "': ", q.status().message())));
    }
    const ErrorReport report = ComputeErrorReport(*q, t.dtype, data.data());
    std::printf("%s: %s %s -> %s  %s\n", w.layer.c_str(), ShapeOf(n, k).c_str(),
                std::string(DTypeName(t.dtype)).c_str(),
                params->ToString().c_str(), report.ToString().c_str());
    quantized.push_back(*std::move(q));
    for (TensorToWrite& out : QuantizedTensors(w.layer, quantized.back())) {
      tensors.push_back(std::move(out));
    }
  }
  std::map<std::string, std::string> metadata = (*file)->metadata();
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
                    "--in Q.safetensors --out F.safetensors [--dtype f32|f16|bf16] "
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

  auto file = SafetensorsFile::Open(*in);
  if (!file.ok()) return cmd.Fail(file.status());
  auto sources = QuantizationSources::Load(*in, **file, *overrides);
  if (!sources.ok()) return cmd.Fail(sources.status());

  std::set<std::string> consumed;
  std::deque<std::vector<uint8_t>> buffers;
  std::vector<TensorToWrite> tensors;
  for (const std::string& layer : FindQuantizedLayers(**file)) {
    auto params = ResolveLayerParams(**file, layer, *sources);
    if (!params.ok()) return cmd.Fail(params.status());
    auto q = LoadQuantizedLayer(**file, layer, *params);
    if (!q.ok()) return cmd.Fail(q.status());
    const DType dtype = out_dtype.value_or(
        params->has_biases() ? q->dtype : DType::kBF16);
    buffers.emplace_back(static_cast<size_t>(q->n * q->k) * DTypeSize(dtype));
    Dequantize(*q, dtype, buffers.back().data());
    tensors.push_back({layer + ".weight", dtype, {q->n, q->k},
                       absl::MakeConstSpan(buffers.back())});
    for (const char* suffix : {".weight", ".scales", ".biases"}) {
      consumed.insert(layer + suffix);
    }
    std::printf("%s: %s %s -> %s %s\n", layer.c_str(), ShapeOf(q->n, q->k).c_str(),
                params->ToString().c_str(), std::string(DTypeName(dtype)).c_str(),
                ShapeOf(q->n, q->k).c_str());
  }
  for (const TensorInfo& t : (*file)->tensors()) {
    if (!consumed.count(t.name)) tensors.push_back(CopyOf(**file, t));
  }
  std::map<std::string, std::string> metadata = (*file)->metadata();
  metadata.erase("quantization");
  absl::Status written = WriteSafetensors(*out, tensors, metadata);
  if (!written.ok()) return cmd.Fail(written);
  std::printf("wrote %s: %zu layers dequantized, %zu tensors\n", out->c_str(),
              buffers.size(), tensors.size());
  return 0;
}

int RunInspect(int argc, char** argv) {
  const Command cmd{"inspect", "FILE.safetensors [--bits B] [--group-size G] [--mode M]"};
  auto flags = Flags::Parse(argc, argv, 2, kParamFlags, {});
  if (!flags.ok()) return cmd.Usage(flags.status().message());
  if (flags->positional().size() != 1) return cmd.Usage("expected exactly one FILE");
  const std::string path = flags->positional()[0];
  auto overrides = ParseQuantFlags(*flags);
  if (!overrides.ok()) return cmd.Usage(overrides.status().message());
  auto file = SafetensorsFile::Open(path);
  if (!file.ok()) return cmd.Fail(file.status());
  auto sources = QuantizationSources::Load(path, **file, *overrides);
  if (!sources.ok()) return cmd.Fail(sources.status());

  size_t bytes = 0;
  for (const TensorInfo& t : (*file)->tensors()) bytes += t.size;
  std::printf("%s: %zu tensors, %zu bytes of data\n", path.c_str(),
              (*file)->tensors().size(), bytes);
  for (const auto& [key, value] : (*file)->metadata()) {
    std::printf("  metadata %s = %s\n", key.c_str(), value.c_str());
  }
  std::printf("%-48s %-6s %s\n", "tensor", "dtype", "shape");
  for (const TensorInfo& t : (*file)->tensors()) {
    std::printf("%-48s %-6s %s\n", t.name.c_str(),
                std::string(DTypeName(t.dtype)).c_str(), t.ShapeString().c_str());
  }
  const std::vector<std::string> layers = FindQuantizedLayers(**file);
  std::printf("quantized layers: %zu\n", layers.size());
  for (const std::string& layer : layers) {
    auto params = ResolveLayerParams(**file, layer, *sources);
    if (!params.ok()) {
      std::printf("  %s: unresolved: %s\n", layer.c_str(),
                  std::string(params.status().message()).c_str());
      continue;
    }
    const TensorInfo* w = (*file)->Find(layer + ".weight");
    const TensorInfo* s = (*file)->Find(layer + ".scales");
    std::printf("  %s: N=%lld K=%lld %s scales %s%s\n", layer.c_str(),
                static_cast<long long>(w->shape[0]),
                static_cast<long long>(w->shape[1] * 32 / params->bits),
                params->ToString().c_str(), std::string(DTypeName(s->dtype)).c_str(),
                (*file)->Find(layer + ".bias") ? " +bias" : "");
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
