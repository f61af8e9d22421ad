// QuantParams: the mode, bit width and group size of one quantized layer, and
// the rules of which combinations MLX accepts.
//
//   mode    group sizes    bits                 scales           biases
//   affine  32, 64*, 128   2, 3, 4*, 5, 6, 8    weight dtype T   dtype T
//   mxfp4   32             4                    uint8 E8M0       none
//   mxfp8   32             8                    uint8 E8M0       none
//   nvfp4   16             4                    uint8 E4M3       none
//
// (* = MLX's default.)  Packed weights are uint32 [N, K*bits/32]; scales and
// biases [N, K/group_size].
#ifndef QLINEAR_CORE_QUANT_PARAMS_H_
#define QLINEAR_CORE_QUANT_PARAMS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace qlinear {

enum class QuantMode { kAffine, kMxfp4, kMxfp8, kNvfp4 };

// QuantModeName returns MLX's spelling: "affine", "mxfp4", "mxfp8", "nvfp4".
absl::string_view QuantModeName(QuantMode mode);

// ParseQuantMode accepts MLX's spelling; INVALID_ARGUMENT naming the accepted
// values otherwise.
absl::StatusOr<QuantMode> ParseQuantMode(absl::string_view name);

struct QuantParams {
  QuantMode mode = QuantMode::kAffine;
  int bits = 4;
  int group_size = 64;

  bool operator==(const QuantParams&) const = default;

  // ToString gives "affine b4 g64".
  std::string ToString() const;

  bool has_biases() const { return mode == QuantMode::kAffine; }
  int64_t packed_cols(int64_t k) const { return k * bits / 32; }
  int64_t groups(int64_t k) const { return k / group_size; }
};

// PartialQuantParams: any subset of mode, bits and group size (CLI flags, a
// config entry).
struct PartialQuantParams {
  std::optional<QuantMode> mode;
  std::optional<int> bits;
  std::optional<int> group_size;
  bool empty() const { return !mode && !bits && !group_size; }
};

// DefaultQuantParams returns MLX's defaults for `mode` (affine 64/4, mxfp4 32/4,
// mxfp8 32/8, nvfp4 16/4).
QuantParams DefaultQuantParams(QuantMode mode);

// MakeQuantParams fills unset bits / group size with the mode's defaults and
// validates the result.
absl::StatusOr<QuantParams> MakeQuantParams(QuantMode mode,
                                            std::optional<int> bits,
                                            std::optional<int> group_size);

// MakeQuantParams with a missing mode taken as affine.
absl::StatusOr<QuantParams> MakeQuantParams(const PartialQuantParams& partial);

// AllQuantParams lists every combination MLX accepts (18 affine + 3 fp).
std::vector<QuantParams> AllQuantParams();

// ValidateQuantParams returns INVALID_ARGUMENT naming the accepted values when
// the combination is not one MLX supports.
absl::Status ValidateQuantParams(const QuantParams& params);

// ValidateInputDim checks that k is positive and divisible by the group size.
absl::Status ValidateInputDim(const QuantParams& params, int64_t k);

}  // namespace qlinear

#endif  // QLINEAR_CORE_QUANT_PARAMS_H_
