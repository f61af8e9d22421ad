// The gRPC services: a thin translation layer over core/engine.
//
//   AdminService: Quantize, LoadQuantized (client-streaming), UnloadLayer
//   DataService:  Forward, ListLayers, GetLayer, Stats
//
// Both use the callback API and never block a gRPC thread: Forward hands its
// request to the engine's batcher and finishes from the batcher's thread;
// uploads quantize or copy rows as their chunks arrive and never hold the
// whole float weight.
//
// Quantize, LoadQuantized and Forward are raw methods (grpc::ByteBuffer in
// and out): gRPC's generated handlers decode a message before any handler
// sees it, and a message that fails to decode never reaches them as an
// event. Here the bytes are parsed by server/upload_stream.h and
// server/wire_forward.h, so a malformed message fails its call with
// INVALID_ARGUMENT and a message, and is counted (Stats'
// malformed_requests_by_rpc), not logged.
//
// Every method calls the Authorizer first, before it reads anything from the
// request (for uploads: before the first read), and ends with its status
// when it refuses.
#ifndef QLINEAR_SERVER_SERVICE_H_
#define QLINEAR_SERVER_SERVICE_H_

#include <cstdint>
#include <string>

#include "core/engine/engine.h"
#include "qlinear/v1/qlinear.grpc.pb.h"
#include "server/auth.h"
#include "server/wire_forward.h"

namespace qlinear {

class AdminService final
    : public v1::Admin::WithRawCallbackMethod_Quantize<v1::Admin::WithRawCallbackMethod_LoadQuantized<
          v1::Admin::WithCallbackMethod_UnloadLayer<v1::Admin::Service>>> {
 public:
  // `engine` and `auth` are borrowed and must outlive the service; a null
  // `auth` leaves the plane open.
  AdminService(Engine* engine, const Authorizer* auth) : engine_(engine), auth_(auth) {}

  // Both read serialized QuantizeChunk / LoadQuantizedChunk messages and
  // answer a serialized UploadResponse.
  grpc::ServerReadReactor<grpc::ByteBuffer>* Quantize(grpc::CallbackServerContext* context,
                                                      grpc::ByteBuffer* response) override;
  grpc::ServerReadReactor<grpc::ByteBuffer>* LoadQuantized(grpc::CallbackServerContext* context,
                                                           grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* UnloadLayer(grpc::CallbackServerContext* context,
                                        const v1::UnloadLayerRequest* request,
                                        v1::UnloadLayerResponse* response) override;

 private:
  Engine* engine_;
  const Authorizer* auth_;
};

class DataService final
    : public v1::Data::WithRawCallbackMethod_Forward<v1::Data::WithCallbackMethod_ListLayers<
          v1::Data::WithCallbackMethod_GetLayer<v1::Data::WithCallbackMethod_Stats<v1::Data::Service>>>> {
 public:
  // `engine` and `auth` are borrowed and must outlive the service; a null
  // `auth` leaves the plane open. `max_response_bytes` is the server's
  // send limit (--max-message-mb; 0: none): a Forward whose answer would
  // not fit is refused before it is queued.
  DataService(Engine* engine, std::string build_info, const Authorizer* auth,
              uint64_t max_response_bytes = 0);

  // Reads a serialized ForwardRequest, answers a serialized ForwardResponse.
  grpc::ServerUnaryReactor* Forward(grpc::CallbackServerContext* context,
                                    const grpc::ByteBuffer* request,
                                    grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ListLayers(grpc::CallbackServerContext* context,
                                       const v1::ListLayersRequest* request,
                                       v1::ListLayersResponse* response) override;
  grpc::ServerUnaryReactor* GetLayer(grpc::CallbackServerContext* context,
                                     const v1::GetLayerRequest* request,
                                     v1::LayerInfo* response) override;
  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* context,
                                  const v1::StatsRequest* request,
                                  v1::StatsResponse* response) override;

 private:
  Engine* engine_;
  std::string build_info_;
  const Authorizer* auth_;
  ForwardLimits limits_;
};

}  // namespace qlinear

#endif  // QLINEAR_SERVER_SERVICE_H_
