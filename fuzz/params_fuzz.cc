// Fuzz target: quantization parameter resolution (core/mlx_file.h).
//
// Input parts (fuzz_input.h): [0] the "__metadata__" value of "quantization"
// (absent when the input has one part), [1] config.json's text (empty:
// none), [2] control bytes: the layer's tensor dtypes and shapes, the
// override flags, then the layer name.
//
// Checks: FromParts and ResolveLayerParams fail only with INVALID_ARGUMENT
// and a message; resolved parameters are valid and fit the tensors
// (CheckLayerFits); ToJson of resolved parameters reads back the same.
#include <cstdint>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/mlx_file.h"
#include "fuzz/fuzz_input.h"

namespace qlinear::fuzz {
namespace {

constexpr DType kDTypes[] = {DType::kU32, DType::kF16, DType::kBF16, DType::kF32,
                             DType::kU8,  DType::kI32, DType::kF64};
constexpr QuantMode kModes[] = {QuantMode::kAffine, QuantMode::kMxfp4, QuantMode::kMxfp8,
                                QuantMode::kNvfp4};

DType PickDType(uint8_t b) { return kDTypes[b % (sizeof(kDTypes) / sizeof(kDTypes[0]))]; }

TensorInfo MakeTensor(const std::string& name, DType dtype, int64_t rows, int64_t cols) {
  TensorInfo t;
  t.name = name;
  t.dtype = dtype;
  t.shape = {rows, cols};
  t.size = static_cast<size_t>(rows * cols) * DTypeSize(dtype);
  return t;
}

void ExpectInvalidArgument(const absl::Status& status, absl::string_view what) {
  FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument,
             absl::StrCat(what, " failed with a code other than INVALID_ARGUMENT: ",
                          status.ToString()));
  FUZZ_CHECK(!status.message().empty(), absl::StrCat(what, " failed without a message"));
}

void Run(const uint8_t* data, size_t size) {
  std::vector<absl::string_view> parts = SplitParts(data, size);
  std::map<std::string, std::string> metadata;
  const bool has_metadata = parts.size() > 1;
  if (has_metadata) metadata["quantization"] = std::string(parts[0]);
  const std::string config = parts.size() > 1 ? std::string(parts[1]) : std::string(parts[0]);
  ByteReader control(parts.size() > 2 ? parts[2] : absl::string_view());

  const DType wdtype = PickDType(control.U8());
  const int64_t n = 1 + control.U8() % 64;
  const int64_t wcols = control.U16() % 1024;
  const DType sdtype = PickDType(control.U8());
  const int64_t scols = control.U16() % 256;
  const uint8_t shapes = control.U8();
  PartialQuantParams overrides;
  const uint8_t mask = control.U8();
  const uint8_t mode = control.U8();
  const uint8_t bits = control.U8();
  const uint16_t group = control.U16();
  if (mask & 1) overrides.mode = kModes[mode % 4];
  if (mask & 2) overrides.bits = bits % 10;
  if (mask & 4) overrides.group_size = group % 260;
  std::string layer(control.Rest());
  if (layer.empty()) layer = "model.layers.0.mlp.up_proj";

  TensorInfo weight = MakeTensor(layer + ".weight", wdtype, n, wcols);
  TensorInfo scales = MakeTensor(layer + ".scales", sdtype, (shapes & 1) ? n + 1 : n, scols);
  TensorInfo biases = MakeTensor(layer + ".biases", sdtype, n, (shapes & 2) ? scols + 1 : scols);
  LayerTensors tensors{&weight, (shapes & 4) ? nullptr : &scales,
                       (shapes & 8) ? &biases : nullptr};

  auto config_only = QuantizationConfig::FromJson(config);
  if (!config_only.ok()) ExpectInvalidArgument(config_only.status(), "FromJson");

  auto sources = QuantizationSources::FromParts(has_metadata ? &metadata : nullptr,
                                                "config.json", config, overrides);
  if (!sources.ok()) {
    ExpectInvalidArgument(sources.status(), "FromParts");
    return;
  }
  std::string source;
  auto params = ResolveLayerParams(layer, tensors, *sources, &source);
  if (!params.ok()) {
    ExpectInvalidArgument(params.status(), "ResolveLayerParams");
    return;
  }
  FUZZ_CHECK(ValidateQuantParams(*params).ok(), "resolved invalid parameters " + params->ToString());
  FUZZ_CHECK(CheckLayerFits(layer, tensors, *params).ok(),
             "resolved parameters do not fit: " + params->ToString());
  FUZZ_CHECK(!source.empty(), "ResolveLayerParams named no source");
  if (overrides.mode) FUZZ_CHECK(params->mode == *overrides.mode, "mode override ignored");
  if (overrides.bits) FUZZ_CHECK(params->bits == *overrides.bits, "bits override ignored");
  if (overrides.group_size) {
    FUZZ_CHECK(params->group_size == *overrides.group_size, "group_size override ignored");
  }
  auto round_trip = QuantizationConfig::FromJson(QuantizationConfig::ToJson(*params));
  FUZZ_CHECK(round_trip.ok(), "ToJson does not read back: " + round_trip.status().ToString());
  auto again = MakeQuantParams(round_trip->global);
  FUZZ_CHECK(again.ok() && *again == *params, "ToJson round trip changed " + params->ToString());
  (void)FloatWeightSkipReason(weight, *params);
}

}  // namespace
}  // namespace qlinear::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  qlinear::fuzz::Run(data, size);
  return 0;
}
