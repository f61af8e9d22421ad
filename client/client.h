// qlinear::Client: a C++ client for qlinear-server.
//
// Every call carries a deadline (Options::timeout from the call's start) and
// the channel's token (client/channel.h: the one channel factory), and
// returns absl::Status / absl::StatusOr with the server's code and message.
// Uploads stream in chunks of Options::chunk_bytes, so no layer is limited
// by gRPC's message size.
//
// Thread safety: a Client may be used from many threads at once.
#ifndef QLINEAR_CLIENT_CLIENT_H_
#define QLINEAR_CLIENT_CLIENT_H_

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "client/channel.h"
#include "core/precision.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/channel.h"
#include "qlinear/v1/qlinear.grpc.pb.h"

namespace qlinear {

class Client {
 public:
  struct Options {
    std::chrono::milliseconds timeout{60000};
    size_t chunk_bytes = 1 << 20;
  };
  // Progress gets (bytes sent, bytes total) after each chunk.
  using Progress = std::function<void(size_t, size_t)>;

  // Connect makes the channel with MakeChannel: its INVALID_ARGUMENT for
  // bad options (client/channel.h). gRPC connects lazily, at the first call.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ChannelOptions& channel,
                                                         const Options& options);
  // Connect(target) is the plaintext, token-less shorthand; it reads no
  // file, so it fails (nullptr) only for an empty target.
  static std::unique_ptr<Client> Connect(const std::string& target, const Options& options);
  static std::unique_ptr<Client> Connect(const std::string& target) {
    return Connect(target, Options());
  }

  absl::StatusOr<v1::LayerInfo> Quantize(const v1::QuantizeHeader& header,
                                         absl::Span<const uint8_t> weight,
                                         absl::Span<const uint8_t> bias,
                                         const Progress& progress = {});
  absl::StatusOr<v1::LayerInfo> LoadQuantized(const v1::LoadQuantizedHeader& header,
                                              absl::Span<const uint8_t> weight,
                                              absl::Span<const uint8_t> scales,
                                              absl::Span<const uint8_t> biases,
                                              absl::Span<const uint8_t> bias,
                                              const Progress& progress = {});
  absl::Status Unload(const std::string& name);
  // Forward sends request.precision as it is; the response's precision
  // says which mode ran (PrecisionFromProto, proto/wire.h).
  absl::StatusOr<v1::ForwardResponse> Forward(const v1::ForwardRequest& request);
  // The same in `precision` (request.precision is replaced).
  absl::StatusOr<v1::ForwardResponse> Forward(v1::ForwardRequest request, Precision precision);
  // ForwardMulti: one input through several layers of the same K; one
  // output per layer, in request.layers' order.
  absl::StatusOr<v1::ForwardMultiResponse> ForwardMulti(const v1::ForwardMultiRequest& request);
  // ForwardStream sends every request on one stream (all written, then the
  // client's side closed) and returns the answers in the order they came,
  // with the stream's final status: OK, or the server's code (UNAVAILABLE
  // when it drained) alongside the answers read before it. Each answer's
  // own status says whether its request failed.
  struct StreamResult {
    std::vector<v1::ForwardStreamResponse> answers;
    absl::Status status;
  };
  StreamResult ForwardStream(const std::vector<v1::ForwardRequest>& requests);
  absl::StatusOr<v1::LayerInfo> GetLayer(const std::string& name);
  absl::StatusOr<v1::ListLayersResponse> ListLayers();
  absl::StatusOr<v1::StatsResponse> Stats(const std::string& layer = "");
  // Health returns the serving status of `service` ("" = the whole server).
  absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus> Health(
      const std::string& service = "");

 private:
  // Prepare sets the deadline and the token of one call.
  void Prepare(grpc::ClientContext* context) const;

  Options options_;
  ChannelOptions channel_options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Admin::Stub> admin_;
  std::unique_ptr<v1::Data::Stub> data_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};


}  // namespace qlinear

#endif  // QLINEAR_CLIENT_CLIENT_H_
