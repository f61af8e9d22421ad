#include "server/ops_http.h"

#include <civetweb.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/metrics.h"

namespace qlinear {
namespace {

// Reply answers with `body` (none for HEAD) and returns the status, as a
// civetweb handler must.
int Reply(mg_connection* conn, int status, const char* content_type, const std::string& body) {
  const mg_request_info* request = mg_get_request_info(conn);
  const bool head = request != nullptr && std::strcmp(request->request_method, "HEAD") == 0;
  const std::string length = std::to_string(body.size());
  mg_response_header_start(conn, status);
  mg_response_header_add(conn, "Content-Type", content_type, -1);
  mg_response_header_add(conn, "Content-Length", length.c_str(), -1);
  mg_response_header_add(conn, "Cache-Control", "no-store", -1);
  if (status == 405) mg_response_header_add(conn, "Allow", "GET, HEAD", -1);
  mg_response_header_send(conn);
  if (!head && !body.empty()) mg_write(conn, body.data(), body.size());
  return status;
}

// Readable is false (and the request answered 405) for anything but GET
// and HEAD.
bool Readable(mg_connection* conn) {
  const mg_request_info* request = mg_get_request_info(conn);
  if (request != nullptr && (std::strcmp(request->request_method, "GET") == 0 ||
                             std::strcmp(request->request_method, "HEAD") == 0)) {
    return true;
  }
  Reply(conn, 405, "text/plain; charset=utf-8", "only GET and HEAD\n");
  return false;
}

constexpr char kText[] = "text/plain; charset=utf-8";

// civetweb says why a port failed (errno and all) only to its log callback,
// on the thread that calls mg_start2: kept here for Start's message.
thread_local std::string start_error;

int KeepStartError(const mg_connection* /*conn*/, const char* message) {
  if (start_error.empty() && message != nullptr) start_error = message;
  return 1;  // handled: civetweb prints nothing itself
}

}  // namespace

absl::StatusOr<std::unique_ptr<OpsHttp>> OpsHttp::Start(const Options& options,
                                                        const Engine* engine,
                                                        NotReadyFn not_ready) {
  const size_t colon = options.listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(options.listen.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics-listen must be HOST:PORT with a port in [0, 65535]; got '",
                     options.listen, "'"));
  }
  // civetweb's one-time set-up; never undone, since another OpsHttp may
  // start later in the same process.
  static std::once_flag init;
  std::call_once(init, [] { mg_init_library(0); });

  std::unique_ptr<OpsHttp> ops(new OpsHttp());
  ops->options_ = options;
  ops->engine_ = engine;
  ops->not_ready_ = std::move(not_ready);
  const std::string threads = std::to_string(std::max(1, options.threads));
  const char* config[] = {"listening_ports",
                          options.listen.c_str(),
                          "num_threads",
                          threads.c_str(),
                          "request_timeout_ms",
                          "10000",
                          nullptr};
  mg_callbacks callbacks{};
  callbacks.log_message = &KeepStartError;
  start_error.clear();
  mg_init_data init_data{};
  init_data.callbacks = &callbacks;
  init_data.configuration_options = config;
  char error_text[256] = "";
  unsigned error_code = 0;
  mg_error_data error{};
  error.code = &error_code;
  error.text = error_text;
  error.text_buffer_size = sizeof(error_text);
  ops->context_ = mg_start2(&init_data, &error);
  if (ops->context_ == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on --metrics-listen '", options.listen,
                     "': ", start_error.empty() ? error_text : start_error));
  }
  mg_server_port ports[4];
  const int n = mg_get_server_ports(ops->context_, 4, ports);
  if (n < 1) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on --metrics-listen '", options.listen, "': no port bound"));
  }
  ops->port_ = ports[0].port;
  // "$": the path exactly, not every path under it.
  mg_set_request_handler(ops->context_, "/metrics$", &OpsHttp::Metrics, ops.get());
  mg_set_request_handler(ops->context_, "/healthz$", &OpsHttp::Healthz, ops.get());
  mg_set_request_handler(ops->context_, "/readyz$", &OpsHttp::Readyz, ops.get());
  return ops;
}

OpsHttp::~OpsHttp() {
  if (context_ != nullptr) mg_stop(context_);
}

std::string OpsHttp::address() const {
  return absl::StrCat(options_.listen.substr(0, options_.listen.rfind(':')), ":", port_);
}

int OpsHttp::Metrics(mg_connection* conn, void* self) {
  if (!Readable(conn)) return 405;
  const OpsHttp& ops = *static_cast<const OpsHttp*>(self);
  const std::string text = RenderMetrics(
      MetricFamilies(ops.engine_->Snapshot(), ReadProcessMetrics(), ops.options_.version));
  return Reply(conn, 200, kMetricsContentType, text);
}

int OpsHttp::Healthz(mg_connection* conn, void* /*self*/) {
  if (!Readable(conn)) return 405;
  return Reply(conn, 200, kText, "ok\n");
}

int OpsHttp::Readyz(mg_connection* conn, void* self) {
  if (!Readable(conn)) return 405;
  const std::string reason = static_cast<const OpsHttp*>(self)->not_ready_();
  if (reason.empty()) return Reply(conn, 200, kText, "ready\n");
  return Reply(conn, 503, kText, absl::StrCat("not ready: ", reason, "\n"));
}

}  // namespace qlinear
