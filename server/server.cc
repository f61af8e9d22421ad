#include "server/server.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/kernels/qmm.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "server/log.h"
#include "server/ops_http.h"
#include "server/service.h"

namespace qlinear {

namespace {

// WhyNoBind tells why `listen` cannot be bound, by trying it the way the
// kernel would (gRPC only says that no address was added).
std::string WhyNoBind(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  std::string host = listen.substr(0, colon == std::string::npos ? 0 : colon);
  const std::string port = colon == std::string::npos ? listen : listen.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  if (int e = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found); e != 0) {
    return absl::StrCat("cannot resolve '", host, "': ", gai_strerror(e));
  }
  std::string why = "the address is not usable";
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      why = std::strerror(errno);
      continue;
    }
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    const bool bound = bind(fd, a->ai_addr, a->ai_addrlen) == 0;
    if (!bound) why = std::strerror(errno);
    close(fd);
    if (bound) {
      why = "gRPC could not listen there";
      break;
    }
  }
  freeaddrinfo(found);
  return why;
}

}  // namespace

std::string BuildInfo() {
  return absl::StrCat("qlinear ", kQlinearVersion, " (gcc ", __GNUC__, ".", __GNUC_MINOR__,
                      ", kernels ", SimdTargetName(DefaultSimdTarget()), ")");
}

absl::StatusOr<std::unique_ptr<QlinearServer>> QlinearServer::Start(const ServerOptions& options) {
  auto engine = Engine::Create(options.engine);
  if (!engine.ok()) return engine.status();
  if (options.max_message_mb < 1 || options.max_message_mb > 2047) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-message-mb must be in [1, 2047]; got ", options.max_message_mb));
  }
  std::unique_ptr<QlinearServer> s(new QlinearServer());
  s->options_ = options;
  s->engine_ = *std::move(engine);
  // Every publish, replace and unload is logged from the one place that
  // makes them.
  s->engine_->catalog().SetListener(LogCatalogEvent);
  s->admin_ = std::make_unique<AdminService>(s->engine_.get());
  s->data_ = std::make_unique<DataService>(s->engine_.get(), BuildInfo());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &s->port_);
  builder.SetMaxReceiveMessageSize(options.max_message_mb << 20);
  builder.SetMaxSendMessageSize(options.max_message_mb << 20);
  builder.RegisterService(s->admin_.get());
  builder.RegisterService(s->data_.get());
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on '", options.listen, "': ", WhyNoBind(options.listen)));
  }
  s->serving_ = options.serving_on_start;
  s->SetHealth(options.serving_on_start);
  if (!options.metrics_listen.empty()) {
    OpsHttp::Options ops;
    ops.listen = options.metrics_listen;
    ops.version = kQlinearVersion;
    QlinearServer* self = s.get();
    auto started = OpsHttp::Start(ops, s->engine_.get(), [self] { return self->NotReadyReason(); });
    if (!started.ok()) return started.status();
    s->ops_ = *std::move(started);
  }
  return s;
}

void QlinearServer::SetHealth(bool serving) {
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  for (const char* service : {"", v1::Data::service_full_name(), v1::Admin::service_full_name()}) {
    health->SetServingStatus(service, serving);
  }
}

int QlinearServer::metrics_port() const { return ops_ ? ops_->port() : 0; }

std::string QlinearServer::metrics_address() const { return ops_ ? ops_->address() : ""; }

std::string QlinearServer::NotReadyReason() const {
  if (draining_) return "draining: the server is shutting down";
  if (!serving_) return "starting: layers are still loading";
  return "";
}

std::string QlinearServer::address() const {
  const size_t colon = options_.listen.rfind(':');
  return absl::StrCat(options_.listen.substr(0, colon), ":", port_);
}

void QlinearServer::SetServing(bool serving) {
  if (shut_down_) return;
  serving_ = serving;
  SetHealth(serving);
}

bool QlinearServer::Shutdown(std::chrono::steady_clock::time_point deadline,
                             Engine::DrainCounts* counts) {
  if (shut_down_) return drained_;
  shut_down_ = true;
  draining_ = true;
  SetHealth(false);
  drained_ = engine_->Drain(deadline, counts);
  // Every accepted Forward is answered now; stop gRPC (uploads still
  // streaming are cancelled).
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  return drained_;
}

QlinearServer::~QlinearServer() {
  if (server_ != nullptr) {
    Shutdown(std::chrono::steady_clock::now());
    server_->Wait();
  }
}

}  // namespace qlinear
