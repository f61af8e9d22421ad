#include "core/precision.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/names.h"

namespace qlinear {

absl::string_view PrecisionName(Precision precision) {
  switch (precision) {
    case Precision::kInt8:
      return "int8";
    case Precision::kBf16:
      return "bf16";
    case Precision::kExact:
      break;
  }
  return "exact";
}

absl::StatusOr<Precision> ParsePrecision(absl::string_view name) {
  for (Precision p : {Precision::kExact, Precision::kInt8, Precision::kBf16}) {
    if (name == PrecisionName(p)) return p;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("precision must be exact, int8 or bf16; got ", QuoteForMessage(name)));
}

Precision EffectivePrecision(const QuantParams& params, Precision requested) {
  if (requested == Precision::kInt8 && params.mode == QuantMode::kMxfp8) return Precision::kBf16;
  return requested;
}

PrecisionSet PrecisionSet::All() {
  PrecisionSet set;
  set.bits_ = (1u << kPrecisionCount) - 1u;
  return set;
}

absl::StatusOr<PrecisionSet> PrecisionSet::Parse(absl::string_view list) {
  PrecisionSet set;
  for (absl::string_view item : absl::StrSplit(list, ',')) {
    auto p = ParsePrecision(item);
    if (!p.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "precisions must be a comma-separated list of exact, int8, bf16; got ",
          QuoteForMessage(item), " in ", QuoteForMessage(list)));
    }
    if (set.contains(*p)) {
      return absl::InvalidArgumentError(
          absl::StrCat("precisions lists ", PrecisionName(*p), " twice in ", QuoteForMessage(list)));
    }
    set.bits_ |= 1u << static_cast<int>(*p);
  }
  return set;
}

std::string PrecisionSet::ToString() const {
  std::vector<absl::string_view> names;
  for (Precision p : {Precision::kExact, Precision::kInt8, Precision::kBf16}) {
    if (contains(p)) names.push_back(PrecisionName(p));
  }
  return absl::StrJoin(names, ",");
}

}  // namespace qlinear
