// OpsHttp: the operations port (--metrics-listen), one HTTP listener for
// the platform's scrapers and probes, served by civetweb:
//
//   GET /metrics  200, Prometheus text format, rendered from one
//                 Engine::Snapshot() per scrape (server/metrics.h)
//   GET /healthz  200 "ok" while the process can answer
//   GET /readyz   200 "ready" when `not_ready` says "", else 503 with its
//                 one-line reason (loading layers at start, draining)
//
// HEAD is answered like GET without a body; other methods get 405, other
// paths 404. Nothing here runs on the Forward path.
//
//   auto ops = OpsHttp::Start({.listen = "127.0.0.1:0"}, &engine, [] { return ""; });
//   int port = (*ops)->port();
//
// Thread safety: handlers run on civetweb's worker threads; `not_ready`
// must be safe to call from any thread. Destroying an OpsHttp waits for
// requests in progress, and for civetweb's accept loop, which polls in
// 2-second quanta: up to 2 s.
#ifndef QLINEAR_SERVER_OPS_HTTP_H_
#define QLINEAR_SERVER_OPS_HTTP_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/engine/engine.h"

struct mg_connection;
struct mg_context;

namespace qlinear {

class OpsHttp {
 public:
  struct Options {
    // HOST:PORT to listen on (an IPv6 host in brackets); port 0 picks a
    // free port.
    std::string listen = "127.0.0.1:9464";
    // The version label of qlinear_build_info.
    std::string version;
    // civetweb worker threads: concurrent scrapes and probes.
    int threads = 4;
  };
  // NotReadyFn returns "" when the server is ready, else why it is not.
  using NotReadyFn = std::function<std::string()>;

  // Start listens and serves until destroyed. `engine` is borrowed and must
  // outlive the OpsHttp. UNAVAILABLE naming the address when it cannot be
  // bound; INVALID_ARGUMENT for an address that is not HOST:PORT.
  static absl::StatusOr<std::unique_ptr<OpsHttp>> Start(const Options& options,
                                                        const Engine* engine, NotReadyFn not_ready);
  ~OpsHttp();
  OpsHttp(const OpsHttp&) = delete;
  OpsHttp& operator=(const OpsHttp&) = delete;

  // port is the bound port (the free one picked for port 0).
  int port() const { return port_; }
  // address is HOST:port.
  std::string address() const;

 private:
  OpsHttp() = default;
  static int Metrics(mg_connection* conn, void* self);
  static int Healthz(mg_connection* conn, void* self);
  static int Readyz(mg_connection* conn, void* self);

  Options options_;
  const Engine* engine_ = nullptr;
  NotReadyFn not_ready_;
  mg_context* context_ = nullptr;
  int port_ = 0;
};

}  // namespace qlinear

#endif  // QLINEAR_SERVER_OPS_HTTP_H_
