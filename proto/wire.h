// Conversions between wire enums (qlinear.v1) and core types, shared by the
// server and the client so that both read the contract the same way.
#ifndef QLINEAR_PROTO_WIRE_H_
#define QLINEAR_PROTO_WIRE_H_

#include <optional>

#include "absl/status/statusor.h"
#include "core/dtype.h"
#include "core/quant_params.h"
#include "qlinear/v1/qlinear.pb.h"

namespace qlinear {

// nullopt for DTYPE_UNSPECIFIED or a dtype the wire does not carry.
std::optional<DType> FromProto(v1::DType dtype);
// DTYPE_UNSPECIFIED for a dtype the wire does not carry.
v1::DType ToProto(DType dtype);

v1::Mode ToProto(QuantMode mode);
v1::QuantSpec ToProto(const QuantParams& params);
// Resolves unset bits / group size to the mode's defaults and validates:
// INVALID_ARGUMENT naming the accepted values otherwise.
absl::StatusOr<QuantParams> FromProto(const v1::QuantSpec& spec);

}  // namespace qlinear

#endif  // QLINEAR_PROTO_WIRE_H_
