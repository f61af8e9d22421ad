// Server-side conversions: the one place where absl::Status becomes
// grpc::Status, and core structures to wire messages (enums: proto/wire.h).
#ifndef QLINEAR_SERVER_CONVERT_H_
#define QLINEAR_SERVER_CONVERT_H_

#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/dtype.h"
#include "core/engine/layer.h"
#include "core/engine/snapshot.h"
#include "core/engine/stats.h"
#include "core/quant_params.h"
#include "grpcpp/support/status.h"
#include "proto/wire.h"
#include "qlinear/v1/qlinear.pb.h"

namespace qlinear {

grpc::Status ToGrpc(const absl::Status& status);
absl::Status FromGrpc(const grpc::Status& status);

void ToProto(const Layer::Info& info, v1::LayerInfo* out);
void ToProto(const LayerOrigin& origin, v1::LayerOrigin* out);
void ToProto(const ErrorReport& report, v1::ErrorReport* out);
void ToProto(const Histogram::Snapshot& h, v1::Histogram* out);
// The Stats answer: every field from the snapshot (build_info is the
// server's and is left to the caller).
void ToProto(const EngineSnapshot& snapshot, v1::StatsResponse* out);

}  // namespace qlinear

#endif  // QLINEAR_SERVER_CONVERT_H_
