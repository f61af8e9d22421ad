// The gRPC services: a thin translation layer over core/engine.
//
//   AdminService: Quantize, LoadQuantized (client-streaming), UnloadLayer
//   DataService:  Forward, ForwardStream (bidi), ForwardMulti, ListLayers,
//                 GetLayer, Stats
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

#include <atomic>
#include <chrono>
#include <cstdint>
#include <set>
#include <string>

#include "absl/synchronization/mutex.h"

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

class ForwardStreamReactor;

class DataService final
    : public v1::Data::WithRawCallbackMethod_Forward<v1::Data::WithRawCallbackMethod_ForwardStream<
          v1::Data::WithCallbackMethod_ForwardMulti<v1::Data::WithCallbackMethod_ListLayers<
              v1::Data::WithCallbackMethod_GetLayer<
                  v1::Data::WithCallbackMethod_Stats<v1::Data::Service>>>>>> {
 public:
  // `engine` and `auth` are borrowed and must outlive the service; a null
  // `auth` leaves the plane open. `max_response_bytes` is the server's
  // send limit (--max-message-mb; 0: none): a Forward whose answer would
  // not fit is refused before it is queued. `max_stream_inflight`
  // (--max-stream-inflight, >= 1) bounds each ForwardStream's requests read
  // and not yet answered on the wire.
  DataService(Engine* engine, std::string build_info, const Authorizer* auth,
              uint64_t max_response_bytes = 0, int max_stream_inflight = 256);
  ~DataService() override;

  // Reads a serialized ForwardRequest, answers a serialized ForwardResponse.
  grpc::ServerUnaryReactor* Forward(grpc::CallbackServerContext* context,
                                    const grpc::ByteBuffer* request,
                                    grpc::ByteBuffer* response) override;
  // ForwardStream reads serialized ForwardRequests and writes serialized
  // ForwardStreamResponses, one per request, as they complete (any order).
  // A request that does not parse, lacks a request_id, repeats one in
  // flight, or that the engine refuses fails its own answer (its code in
  // AnswerStatus); the stream goes on. Unparsable requests are counted as
  // malformed under "ForwardStream"; refused ones in the layer's stats, as
  // Forward's are. The stream ends OK when the client closes its side and
  // every answer is written; UNAVAILABLE after a drain (BeginDrain).
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ForwardStream(
      grpc::CallbackServerContext* context) override;
  // ForwardMulti checks every layer (loaded, distinct, one K equal to the
  // input's, and Engine::Check for each) and the answer's size before it
  // submits anything; then one Submit per layer; the call answers when all
  // are done: with a Submit's refusal (the parts before it are cancelled),
  // else the first failure (in the request's order) if any part failed.
  grpc::ServerUnaryReactor* ForwardMulti(grpc::CallbackServerContext* context,
                                         const v1::ForwardMultiRequest* request,
                                         v1::ForwardMultiResponse* response) override;
  grpc::ServerUnaryReactor* ListLayers(grpc::CallbackServerContext* context,
                                       const v1::ListLayersRequest* request,
                                       v1::ListLayersResponse* response) override;
  grpc::ServerUnaryReactor* GetLayer(grpc::CallbackServerContext* context,
                                     const v1::GetLayerRequest* request,
                                     v1::LayerInfo* response) override;
  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* context,
                                  const v1::StatsRequest* request,
                                  v1::StatsResponse* response) override;

  // BeginDrain makes every open ForwardStream stop reading; each answers
  // what it has in flight, then ends UNAVAILABLE. Streams opened later end
  // UNAVAILABLE at once. Call before Engine::Drain. Idempotent.
  void BeginDrain();

  // WaitForSent waits, until `deadline` at most, for every unary Forward
  // the engine has answered to finish sending (its OnDone ran), then
  // `linger` more for clients to read the last bytes: the server stops gRPC
  // after it, and a transport closed while a client still reads a large
  // answer can reach it as a connection reset. Returns whether none was
  // left. Call after Engine::Drain.
  bool WaitForSent(std::chrono::steady_clock::time_point deadline,
                   std::chrono::milliseconds linger);
  // For ForwardReactor: one more unary Forward open / one less.
  void ForwardOpened() { open_forwards_.fetch_add(1); }
  void ForwardDone() { open_forwards_.fetch_sub(1); }

  // For the stream reactors (server/service.cc): register / unregister.
  bool AddStream(ForwardStreamReactor* stream);  // false: draining
  void RemoveStream(ForwardStreamReactor* stream);

 private:
  Engine* engine_;
  std::string build_info_;
  const Authorizer* auth_;
  ForwardLimits limits_;
  int max_stream_inflight_;
  absl::Mutex streams_mu_;
  bool draining_ ABSL_GUARDED_BY(streams_mu_) = false;
  std::set<ForwardStreamReactor*> streams_ ABSL_GUARDED_BY(streams_mu_);
  std::atomic<int64_t> open_forwards_{0};
};

}  // namespace qlinear

#endif  // QLINEAR_SERVER_SERVICE_H_
