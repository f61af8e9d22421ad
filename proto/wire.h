// Conversions between wire enums (qlinear.v1) and core types, shared by the
// server and the client so that both read the contract the same way.
#ifndef QLINEAR_PROTO_WIRE_H_
#define QLINEAR_PROTO_WIRE_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/generated_enum_reflection.h"
#include "core/dtype.h"
#include "core/precision.h"
#include "core/quant_params.h"
#include "qlinear/v1/qlinear.pb.h"

namespace qlinear {

// WireEnumName returns a wire enum value's name in the proto ("F32"), or,
// for a number outside the proto's names (a client may send any), the
// number itself ("77"). Every message that names a wire enum uses it.
template <typename E>
std::string WireEnumName(E value) {
  const auto* v = google::protobuf::GetEnumDescriptor<E>()->FindValueByNumber(static_cast<int>(value));
  return v != nullptr ? v->name() : absl::StrCat(static_cast<int>(value));
}

// nullopt for DTYPE_UNSPECIFIED or a dtype the wire does not carry.
std::optional<DType> FromProto(v1::DType dtype);
// FloatDTypeFromProto: F32, F16 or BF16, else INVALID_ARGUMENT
// "<what> must be F32, F16 or BF16; got <WireEnumName>".
absl::StatusOr<DType> FloatDTypeFromProto(v1::DType dtype, absl::string_view what);
// DTYPE_UNSPECIFIED for a dtype the wire does not carry.
v1::DType ToProto(DType dtype);

// PrecisionFromProto: UNSPECIFIED (a peer that predates the modes) and
// EXACT are kExact, INT8 kInt8, BFLOAT16 kBf16; any other number is
// INVALID_ARGUMENT "precision must be EXACT, INT8 or BFLOAT16 (or unset:
// EXACT); got 99" — a mode this build does not know is never taken for
// another.
absl::StatusOr<Precision> PrecisionFromProto(v1::Precision precision);
// EXACT, INT8 or BFLOAT16 (never UNSPECIFIED).
v1::Precision ToProto(Precision precision);

v1::Mode ToProto(QuantMode mode);
v1::QuantSpec ToProto(const QuantParams& params);
// Resolves unset bits / group size to the mode's defaults and validates:
// INVALID_ARGUMENT naming the accepted values otherwise.
absl::StatusOr<QuantParams> FromProto(const v1::QuantSpec& spec);

}  // namespace qlinear

#endif  // QLINEAR_PROTO_WIRE_H_
