// Conversions between the wire types (qlinear.v1) and core types, and the one
// place where absl::Status becomes grpc::Status.
#ifndef QLINEAR_SERVER_CONVERT_H_
#define QLINEAR_SERVER_CONVERT_H_

#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/dtype.h"
#include "core/engine/layer.h"
#include "core/engine/stats.h"
#include "core/quant_params.h"
#include "grpcpp/support/status.h"
#include "qlinear/v1/qlinear.pb.h"

namespace qlinear {

grpc::Status ToGrpc(const absl::Status& status);
absl::Status FromGrpc(const grpc::Status& status);

// nullopt for DTYPE_UNSPECIFIED or an unknown value.
std::optional<DType> FromProto(v1::DType dtype);
v1::DType ToProto(DType dtype);

v1::Mode ToProto(QuantMode mode);
// Resolves unset bits / group size to the mode's defaults and validates.
absl::StatusOr<QuantParams> FromProto(const v1::QuantSpec& spec);
v1::QuantSpec ToProto(const QuantParams& params);

void ToProto(const Layer::Info& info, v1::LayerInfo* out);
void ToProto(const ErrorReport& report, v1::ErrorReport* out);
void ToProto(const Histogram::Snapshot& h, v1::Histogram* out);

}  // namespace qlinear

#endif  // QLINEAR_SERVER_CONVERT_H_
