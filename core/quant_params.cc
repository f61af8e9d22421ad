#include "core/quant_params.h"

#include "absl/strings/str_cat.h"

namespace qlinear {

absl::string_view QuantModeName(QuantMode mode) {
  switch (mode) {
    case QuantMode::kAffine:
      return "affine";
    case QuantMode::kMxfp4:
      return "mxfp4";
    case QuantMode::kMxfp8:
      return "mxfp8";
    case QuantMode::kNvfp4:
      return "nvfp4";
  }
  return "unknown";
}

absl::StatusOr<QuantMode> ParseQuantMode(absl::string_view name) {
  for (QuantMode mode : {QuantMode::kAffine, QuantMode::kMxfp4,
                         QuantMode::kMxfp8, QuantMode::kNvfp4}) {
    if (QuantModeName(mode) == name) return mode;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "quantization mode must be one of affine, mxfp4, mxfp8, nvfp4; got '",
      name, "'"));
}

std::string QuantParams::ToString() const {
  return absl::StrCat(QuantModeName(mode), " b", bits, " g", group_size);
}

QuantParams DefaultQuantParams(QuantMode mode) {
  switch (mode) {
    case QuantMode::kMxfp4:
      return {mode, 4, 32};
    case QuantMode::kMxfp8:
      return {mode, 8, 32};
    case QuantMode::kNvfp4:
      return {mode, 4, 16};
    case QuantMode::kAffine:
      break;
  }
  return {QuantMode::kAffine, 4, 64};
}

absl::StatusOr<QuantParams> MakeQuantParams(QuantMode mode,
                                            std::optional<int> bits,
                                            std::optional<int> group_size) {
  QuantParams params = DefaultQuantParams(mode);
  if (bits) params.bits = *bits;
  if (group_size) params.group_size = *group_size;
  absl::Status status = ValidateQuantParams(params);
  if (!status.ok()) return status;
  return params;
}

absl::StatusOr<QuantParams> MakeQuantParams(const PartialQuantParams& partial) {
  return MakeQuantParams(partial.mode.value_or(QuantMode::kAffine), partial.bits,
                         partial.group_size);
}

std::vector<QuantParams> AllQuantParams() {
  std::vector<QuantParams> all;
  for (int bits : {2, 3, 4, 5, 6, 8}) {
    for (int gs : {32, 64, 128}) all.push_back({QuantMode::kAffine, bits, gs});
  }
  for (QuantMode m : {QuantMode::kMxfp4, QuantMode::kMxfp8, QuantMode::kNvfp4}) {
    all.push_back(DefaultQuantParams(m));
  }
  return all;
}

absl::Status ValidateQuantParams(const QuantParams& p) {
  if (p.mode == QuantMode::kAffine) {
    if (p.group_size != 32 && p.group_size != 64 && p.group_size != 128) {
      return absl::InvalidArgumentError(absl::StrCat(
          "affine quantization needs group size 32, 64 or 128; got ",
          p.group_size));
    }
    if (p.bits < 2 || p.bits > 8 || p.bits == 7) {
      return absl::InvalidArgumentError(absl::StrCat(
          "affine quantization needs bits 2, 3, 4, 5, 6 or 8; got ", p.bits));
    }
    return absl::OkStatus();
  }
  const QuantParams want = DefaultQuantParams(p.mode);
  if (p.group_size != want.group_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        QuantModeName(p.mode), " quantization needs group size ",
        want.group_size, "; got ", p.group_size));
  }
  if (p.bits != want.bits) {
    return absl::InvalidArgumentError(
        absl::StrCat(QuantModeName(p.mode), " quantization needs bits ",
                     want.bits, "; got ", p.bits));
  }
  return absl::OkStatus();
}

absl::Status ValidateInputDim(const QuantParams& params, int64_t k) {
  if (k <= 0 || k % params.group_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "input dimension K must be a positive multiple of the group size ",
        params.group_size, " (", params.ToString(), "); got K=", k));
  }
  return absl::OkStatus();
}

}  // namespace qlinear
