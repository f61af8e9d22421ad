// QlinearServer: the engine behind a gRPC server (admin + data services,
// grpc.health.v1 and reflection) and, with metrics_listen, the operations
// port (server/ops_http.h), startable in-process for tests.
//
// Health: gRPC health answers "", "qlinear.v1.Data" and "qlinear.v1.Admin"
// alike, and /readyz follows them: not serving (503) until SetServing(true)
// (unless serving_on_start) and again from the moment Shutdown begins.
//
// Shutdown: health goes NOT_SERVING, new requests get UNAVAILABLE, every
// accepted request is finished (or, past the deadline, answered UNAVAILABLE),
// then gRPC stops; the operations port answers until the server is destroyed.
#ifndef QLINEAR_SERVER_SERVER_H_
#define QLINEAR_SERVER_SERVER_H_

#include <atomic>
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
class OpsHttp;

// The version in qlinear_build_info and BuildInfo().
inline constexpr char kQlinearVersion[] = "0.1.0";

struct ServerOptions {
  std::string listen = "127.0.0.1:50051";  // port 0 picks a free port
  // HOST:PORT of /metrics, /healthz and /readyz; port 0 picks a free port;
  // empty: no operations port.
  std::string metrics_listen;
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
  // metrics_port is the operations port's bound port (0 when off);
  // metrics_address is HOST:port ("" when off).
  int metrics_port() const;
  std::string metrics_address() const;
  // SetServing sets the grpc.health.v1 status of every service name (and
  // so /readyz). No effect once Shutdown has begun.
  void SetServing(bool serving);
  // NotReadyReason is "" while serving, else why not (/readyz's 503 body).
  // Safe from any thread.
  std::string NotReadyReason() const;

  // Shutdown drains until `deadline`; true when every accepted request
  // finished normally. Idempotent. `counts` (optional) receives what the
  // drain did (zeros on a repeated call).
  bool Shutdown(std::chrono::steady_clock::time_point deadline,
                Engine::DrainCounts* counts = nullptr);

 private:
  QlinearServer() = default;
  void SetHealth(bool serving);

  ServerOptions options_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<AdminService> admin_;
  std::unique_ptr<DataService> data_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  bool shut_down_ = false;
  bool drained_ = true;
  std::atomic<bool> serving_{false};
  std::atomic<bool> draining_{false};
  // Last: stopped first, before the engine it reads.
  std::unique_ptr<OpsHttp> ops_;
};

// BuildInfo is "qlinear 0.1.0 (<compiler>, <simd target>)".
std::string BuildInfo();

}  // namespace qlinear

#endif  // QLINEAR_SERVER_SERVER_H_
