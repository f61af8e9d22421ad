// KServeService: the Open Inference Protocol (KServe v2,
// inference.GRPCInferenceService from proto/kserve/grpc_predict_v2.proto), a
// second translation over core/engine beside qlinear.v1, served on the same
// port with the same tokens (Data plane).
//
// Mapping (docs/api.md#kserve-v2):
//   - every served layer is a model, named as the layer, with one version:
//     the layer's version as a decimal string;
//   - one input "x" [-1, K] (FP32, FP16 or BF16) and one output "y" [-1, N]
//     in the input's datatype;
//   - ModelInfer takes the input in raw_input_contents (any of the three
//     datatypes) or in contents.fp32_contents (FP32 only: the protocol has no
//     typed field for FP16/BF16) and answers in raw_output_contents, through
//     Engine::Submit, so rows are batched with Forward's and a row's answer is
//     bit-identical to Forward's;
//   - model_version empty or the layer's version; another is NOT_FOUND naming
//     the version available.
//
// Status codes: NOT_FOUND (unknown model or version), INVALID_ARGUMENT (input
// count, name, datatype, shape, contents), and Submit's RESOURCE_EXHAUSTED,
// UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED; UNAUTHENTICATED /
// PERMISSION_DENIED from the Authorizer, checked first in every method.
//
// Thread safety: handlers run on gRPC threads and never block; ModelInfer
// finishes from the engine's compute slot that answered it.
#ifndef QLINEAR_SERVER_KSERVE_SERVICE_H_
#define QLINEAR_SERVER_KSERVE_SERVICE_H_

#include <functional>
#include <string>

#include "core/engine/engine.h"
#include "kserve/grpc_predict_v2.grpc.pb.h"
#include "server/auth.h"

namespace qlinear {

class KServeService final : public inference::GRPCInferenceService::CallbackService {
 public:
  struct Options {
    std::string server_name = "qlinear";  // ServerMetadata.name
    std::string version;                  // ServerMetadata.version
    // ready() is ServerReady's answer (and gates ModelReady): the server's
    // own readiness (layers loaded, not draining). Unset: always ready.
    std::function<bool()> ready;
    // The largest answer gRPC may send (--max-message-mb); 0: no limit. A
    // larger one is refused RESOURCE_EXHAUSTED before it is queued.
    uint64_t max_answer_bytes = 0;
  };

  // `engine` and `auth` are borrowed and must outlive the service; a null
  // `auth` leaves the service open.
  KServeService(Engine* engine, const Authorizer* auth, Options options);

  grpc::ServerUnaryReactor* ServerLive(grpc::CallbackServerContext* context,
                                       const inference::ServerLiveRequest* request,
                                       inference::ServerLiveResponse* response) override;
  grpc::ServerUnaryReactor* ServerReady(grpc::CallbackServerContext* context,
                                        const inference::ServerReadyRequest* request,
                                        inference::ServerReadyResponse* response) override;
  grpc::ServerUnaryReactor* ModelReady(grpc::CallbackServerContext* context,
                                       const inference::ModelReadyRequest* request,
                                       inference::ModelReadyResponse* response) override;
  grpc::ServerUnaryReactor* ServerMetadata(grpc::CallbackServerContext* context,
                                           const inference::ServerMetadataRequest* request,
                                           inference::ServerMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelMetadata(grpc::CallbackServerContext* context,
                                          const inference::ModelMetadataRequest* request,
                                          inference::ModelMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext* context,
                                       const inference::ModelInferRequest* request,
                                       inference::ModelInferResponse* response) override;

 private:
  Engine* engine_;
  const Authorizer* auth_;
  Options options_;
};

}  // namespace qlinear

#endif  // QLINEAR_SERVER_KSERVE_SERVICE_H_
