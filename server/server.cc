#include "server/server.h"

#include "absl/strings/str_cat.h"
#include "core/kernels/qmm.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "server/service.h"

namespace qlinear {

std::string BuildInfo() {
  return absl::StrCat("qlinear 0.1.0 (gcc ", __GNUC__, ".", __GNUC_MINOR__, ", kernels ",
                      SimdTargetName(DefaultSimdTarget()), ")");
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
  s->server_->GetHealthCheckService()->SetServingStatus(options.serving_on_start);
  return s;
}

std::string QlinearServer::address() const {
  const size_t colon = options_.listen.rfind(':');
  return absl::StrCat(options_.listen.substr(0, colon), ":", port_);
}

void QlinearServer::SetServing(bool serving) {
  if (!shut_down_) server_->GetHealthCheckService()->SetServingStatus(serving);
}

bool QlinearServer::Shutdown(std::chrono::steady_clock::time_point deadline) {
  if (shut_down_) return drained_;
  shut_down_ = true;
  server_->GetHealthCheckService()->SetServingStatus(false);
  drained_ = engine_->Drain(deadline);
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
