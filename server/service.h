// The gRPC services: a thin translation layer over core/engine.
//
//   AdminService: Quantize, LoadQuantized (client-streaming), UnloadLayer
//   DataService:  Forward, ListLayers, GetLayer, Stats
//
// Both use the callback API and never block a gRPC thread: Forward hands its
// request to the engine's batcher and finishes from the batcher's thread;
// uploads quantize or copy rows as their chunks arrive and never hold the
// whole float weight.
#ifndef QLINEAR_SERVER_SERVICE_H_
#define QLINEAR_SERVER_SERVICE_H_

#include <string>

#include "core/engine/engine.h"
#include "qlinear/v1/qlinear.grpc.pb.h"

namespace qlinear {

class AdminService final : public v1::Admin::CallbackService {
 public:
  // `engine` is borrowed and must outlive the service.
  explicit AdminService(Engine* engine) : engine_(engine) {}

  grpc::ServerReadReactor<v1::QuantizeChunk>* Quantize(
      grpc::CallbackServerContext* context, v1::UploadResponse* response) override;
  grpc::ServerReadReactor<v1::LoadQuantizedChunk>* LoadQuantized(
      grpc::CallbackServerContext* context, v1::UploadResponse* response) override;
  grpc::ServerUnaryReactor* UnloadLayer(grpc::CallbackServerContext* context,
                                        const v1::UnloadLayerRequest* request,
                                        v1::UnloadLayerResponse* response) override;

 private:
  Engine* engine_;
};

class DataService final : public v1::Data::CallbackService {
 public:
  // `engine` is borrowed and must outlive the service.
  DataService(Engine* engine, std::string build_info);

  grpc::ServerUnaryReactor* Forward(grpc::CallbackServerContext* context,
                                    const v1::ForwardRequest* request,
                                    v1::ForwardResponse* response) override;
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
};

}  // namespace qlinear

#endif  // QLINEAR_SERVER_SERVICE_H_
