// Precision: how a forward pass multiplies, chosen per request (never a
// hidden switch). docs/formats.md ("Precision modes") defines each mode's
// arithmetic bit for bit.
//
//   kExact  float32 inputs, fused multiply-adds in one fixed order: MLX's
//           result to float32 rounding. The default; its bits never change.
//   kInt8   each input row quantized in blocks of 16 to int8 codes with a
//           float32 scale per block (max|x| / 127), exact integer dot
//           products with the weight codes (VNNI where the CPU has it),
//           folded into float32 one block at a time.
//           mxfp8's E4M3 codes have no exact integer form: INT8 asked of an
//           mxfp8 layer runs kBf16, and the answer says so.
//   kBf16   inputs rounded to bfloat16, products accumulated in float32 in
//           the order of AVX512-BF16's vdpbf16ps (emulated bit for bit
//           where the CPU lacks it).
//
// Every mode keeps batch invariance: a row's bits do not depend on the
// batch, the thread count, the SIMD target or the CPU vendor.
//
// Thread safety: plain values and pure functions.
#ifndef QLINEAR_CORE_PRECISION_H_
#define QLINEAR_CORE_PRECISION_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/quant_params.h"

namespace qlinear {

enum class Precision : int { kExact = 0, kInt8 = 1, kBf16 = 2 };

constexpr int kPrecisionCount = 3;

// PrecisionName returns "exact", "int8" or "bf16".
absl::string_view PrecisionName(Precision precision);

// ParsePrecision accepts PrecisionName's spellings; INVALID_ARGUMENT naming
// them otherwise.
absl::StatusOr<Precision> ParsePrecision(absl::string_view name);

// EffectivePrecision is the mode that runs when `requested` is asked of a
// layer quantized with `params`: the request itself, except INT8 on mxfp8,
// which runs kBf16.
Precision EffectivePrecision(const QuantParams& params, Precision requested);

// PrecisionSet: a set of modes (a server's --precisions).
class PrecisionSet {
 public:
  // All() holds every mode (the default of --precisions).
  static PrecisionSet All();
  // Parse reads a comma-separated list of names ("exact,int8"); at least
  // one, no repeats. INVALID_ARGUMENT naming the bad entry otherwise.
  static absl::StatusOr<PrecisionSet> Parse(absl::string_view list);

  bool contains(Precision p) const { return (bits_ >> static_cast<int>(p)) & 1u; }
  // ToString lists the modes in enum order, comma-separated.
  std::string ToString() const;

 private:
  uint32_t bits_ = 0;
};

}  // namespace qlinear

#endif  // QLINEAR_CORE_PRECISION_H_
