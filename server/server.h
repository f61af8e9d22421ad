// QlinearServer: the engine behind a gRPC server (admin + data services,
// grpc.health.v1 and reflection) and, with metrics_listen, the operations
// port (server/ops_http.h), startable in-process for tests.
//
// Listeners: `listen` serves every service; with admin_listen, a second
// gRPC server there serves Admin (and health and reflection), and the main
// listener then has no Admin method (UNIMPLEMENTED). Both use the same
// credentials (server/tls.h) and the same Authorizer (server/auth.h: tokens
// per plane; ReloadTokens re-reads the files, as SIGHUP does).
//
// Health: gRPC health answers "", "qlinear.v1.Data", "qlinear.v1.Admin" and
// "inference.GRPCInferenceService" (KServe v2) alike, and /readyz follows them: not serving (503) until SetServing(true)
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
#include "server/auth.h"
#include "server/tls.h"

namespace grpc {
class CallbackGenericService;
class Server;
}

namespace qlinear {

class AdminService;
class DataService;
class KServeService;
class OpsHttp;

// The version in qlinear_build_info and BuildInfo().
inline constexpr char kQlinearVersion[] = "0.1.0";

struct ServerOptions {
  std::string listen = "127.0.0.1:50051";  // port 0 picks a free port
  // HOST:PORT of /metrics, /healthz and /readyz; port 0 picks a free port;
  // empty: no operations port.
  std::string metrics_listen;
  // HOST:PORT of the Admin plane's own listener (port 0 picks a free
  // port); empty: Admin is served on `listen`.
  std::string admin_listen;
  TlsOptions tls;             // both listeners; plaintext by default
  Authorizer::Options auth;   // token files; none: both planes open
  Engine::Options engine;
  int max_message_mb = 64;
  // Requests in flight per ForwardStream before the server stops reading it.
  int max_stream_inflight = 256;
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
  // admin_port / admin_address: the Admin listener's (0 / "" without
  // admin_listen).
  int admin_port() const { return admin_port_; }
  std::string admin_address() const;
  const Authorizer& authorizer() const { return *auth_; }
  // ReloadTokens re-reads the token files (Authorizer::Reload) and logs the
  // outcome: "tokens_reloaded" with the counts and names, or an error line
  // naming the file that kept its previous tokens. Safe from any thread.
  absl::Status ReloadTokens();
  // SetServing sets the grpc.health.v1 status of every service name and
  // /readyz; health says SERVING only while /readyz says ready (it turns
  // second on the way up, first on the way down, here and in
  // StopAdvertising and Shutdown). No effect once StopAdvertising or
  // Shutdown has begun.
  void SetServing(bool serving);
  // StopAdvertising turns health NOT_SERVING and /readyz to 503 ("draining")
  // for good while every request is still accepted and served: the first
  // step of a drain, so that load balancers stop choosing this replica
  // before Shutdown stops accepting (--drain-delay-ms). Idempotent.
  void StopAdvertising();
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
  std::unique_ptr<Authorizer> auth_;  // outlives the services that borrow it
  std::unique_ptr<AdminService> admin_;
  std::unique_ptr<DataService> data_;
  std::unique_ptr<KServeService> kserve_;  // inference.GRPCInferenceService (KServe v2)
  // The main listener's answer to Admin methods with admin_listen
  // (declared first: outlives server_).
  std::unique_ptr<grpc::CallbackGenericService> admin_elsewhere_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> admin_server_;  // with admin_listen only
  int port_ = 0;
  int admin_port_ = 0;
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
