// QlinearServer: the engine behind a gRPC server (admin + data services,
// grpc.health.v1 and reflection), startable in-process for tests.
//
// Shutdown: health goes NOT_SERVING, new requests get UNAVAILABLE, every
// accepted request is finished (or, past the deadline, answered UNAVAILABLE),
// then gRPC stops.
#ifndef QLINEAR_SERVER_SERVER_H_
#define QLINEAR_SERVER_SERVER_H_

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/engine/engine.h"

namespace grpc {
class Server;
}

namespace qlinear {

class AdminService;
class DataService;

struct ServerOptions {
  std::string listen = "127.0.0.1:50051";  // port 0 picks a free port
  Engine::Options engine;
  int max_message_mb = 64;
  // Report SERVING as soon as gRPC listens; false: NOT_SERVING until
  // SetServing(true) (after the layers are loaded).
  bool serving_on_start = true;
};

class QlinearServer {
 public:
  static absl::StatusOr<std::unique_ptr<QlinearServer>> Start(const ServerOptions& options);
  ~QlinearServer();

  Engine& engine() { return *engine_; }
  int port() const { return port_; }
  std::string address() const;
  // SetServing sets the grpc.health.v1 status of the whole server.
  void SetServing(bool serving);

  // Shutdown drains until `deadline`; true when every accepted request
  // finished normally. Idempotent.
  bool Shutdown(std::chrono::steady_clock::time_point deadline);

 private:
  QlinearServer() = default;
  ServerOptions options_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<AdminService> admin_;
  std::unique_ptr<DataService> data_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  bool shut_down_ = false;
  bool drained_ = true;
};

// BuildInfo is "qlinear 0.1.0 (<compiler>, <simd target>)".
std::string BuildInfo();

}  // namespace qlinear

#endif  // QLINEAR_SERVER_SERVER_H_
