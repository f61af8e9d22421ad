#include "server/server.h"

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
    return absl::UnavailableError(absl::StrCat("cannot listen on '", options.listen, "'"));
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
