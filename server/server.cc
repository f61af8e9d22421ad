#include "server/server.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/names.h"
#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "core/kernels/qmm.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "server/log.h"
#include "server/kserve_service.h"
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

// AdminElsewhere answers the main listener's calls of methods it does not
// serve when Admin has its own listener: UNIMPLEMENTED saying where Admin
// is, instead of gRPC's empty message.
class AdminElsewhere final : public grpc::CallbackGenericService {
 public:
  explicit AdminElsewhere(std::string admin_listen) : admin_listen_(std::move(admin_listen)) {}

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    class Reactor final : public grpc::ServerGenericBidiReactor {
     public:
      explicit Reactor(const grpc::Status& status) { Finish(status); }
      void OnDone() override { delete this; }
    };
    const std::string prefix = absl::StrCat("/", v1::Admin::service_full_name(), "/");
    if (absl::StartsWith(ctx->method(), prefix)) {
      return new Reactor(grpc::Status(
          grpc::StatusCode::UNIMPLEMENTED,
          absl::StrCat("this listener serves no Admin method: the Admin plane is on its own "
                       "listener (--admin-listen ", admin_listen_, ")")));
    }
    return new Reactor(grpc::Status(
        grpc::StatusCode::UNIMPLEMENTED,
        absl::StrCat("unknown method ", QuoteForMessage(ctx->method()))));
  }

 private:
  std::string admin_listen_;
};

// Listen sets `builder` up for one listener (the data port, or the admin
// one): its address, the message limits, and SO_REUSEPORT off. gRPC turns
// that on by default, so a second server on a taken port would start
// without a word and take half its connections; off, it fails with
// "Address already in use".
void Listen(const std::string& address, const std::shared_ptr<grpc::ServerCredentials>& credentials,
            int max_message_mb, grpc::ServerBuilder* builder, int* port) {
  builder->AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder->AddListeningPort(address, credentials, port);
  builder->SetMaxReceiveMessageSize(max_message_mb << 20);
  builder->SetMaxSendMessageSize(max_message_mb << 20);
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
  if (options.max_stream_inflight < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--max-stream-inflight must be >= 1; got ",
                                                   options.max_stream_inflight));
  }
  std::unique_ptr<QlinearServer> s(new QlinearServer());
  s->options_ = options;
  s->engine_ = *std::move(engine);
  // Every publish, replace and unload is logged from the one place that
  // makes them.
  s->engine_->catalog().SetListener(LogCatalogEvent);
  // Both checked before anything listens: gRPC itself would only log a bad
  // certificate, then fail every handshake.
  auto credentials = ServerCredentials(options.tls);
  if (!credentials.ok()) return credentials.status();
  Authorizer::Options auth_options = options.auth;
  auth_options.on_refusal = [engine = s->engine_.get()](Plane plane, absl::StatusCode code) {
    engine->RecordAuthRefusal(plane == Plane::kAdmin, code);
  };
  auto auth = Authorizer::Create(auth_options);
  if (!auth.ok()) return auth.status();
  s->auth_ = *std::move(auth);
  s->admin_ = std::make_unique<AdminService>(s->engine_.get(), s->auth_.get());
  s->data_ = std::make_unique<DataService>(s->engine_.get(), BuildInfo(), s->auth_.get(),
                                         uint64_t{static_cast<uint32_t>(options.max_message_mb)} << 20,
                                         options.max_stream_inflight);
  s->kserve_ = std::make_unique<KServeService>(
      s->engine_.get(), s->auth_.get(),
      KServeService::Options{"qlinear", kQlinearVersion,
                             [server = s.get()] { return server->NotReadyReason().empty(); },
                             static_cast<uint64_t>(options.max_message_mb) << 20});

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  Listen(options.listen, *credentials, options.max_message_mb, &builder, &s->port_);
  // One grpc::Server serves every registered service on all its ports: a
  // separate Admin listener is a second server.
  if (options.admin_listen.empty()) {
    builder.RegisterService(s->admin_.get());
  } else {
    s->admin_elsewhere_ = std::make_unique<AdminElsewhere>(options.admin_listen);
    builder.RegisterCallbackGenericService(s->admin_elsewhere_.get());
  }
  builder.RegisterService(s->data_.get());
  builder.RegisterService(s->kserve_.get());  // KServe v2, on the same port
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on '", options.listen, "': ", WhyNoBind(options.listen)));
  }
  // gRPC's health service starts with "" SERVING: NOT_SERVING at once
  // (microseconds after the port opened), until SetHealth below.
  s->server_->GetHealthCheckService()->SetServingStatus("", false);
  if (!options.admin_listen.empty()) {
    grpc::ServerBuilder admin;
    Listen(options.admin_listen, *credentials, options.max_message_mb, &admin, &s->admin_port_);
    admin.RegisterService(s->admin_.get());
    s->admin_server_ = admin.BuildAndStart();
    if (s->admin_server_ == nullptr || s->admin_port_ == 0) {
      return absl::UnavailableError(absl::StrCat("cannot listen on --admin-listen '",
                                                 options.admin_listen,
                                                 "': ", WhyNoBind(options.admin_listen)));
    }
    s->admin_server_->GetHealthCheckService()->SetServingStatus("", false);  // the same
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
  // Each listener's health names the services it serves ("" = the server):
  // with an Admin listener, "qlinear.v1.Admin" is NOT_FOUND on the main one.
  const bool split = admin_server_ != nullptr;
  for (grpc::Server* server : {server_.get(), admin_server_.get()}) {
    if (server == nullptr) continue;
    const bool main = server == server_.get();
    grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
    health->SetServingStatus("", serving);
    if (main) {
      health->SetServingStatus(v1::Data::service_full_name(), serving);
      health->SetServingStatus(inference::GRPCInferenceService::service_full_name(), serving);
    }
    if (!main || !split) health->SetServingStatus(v1::Admin::service_full_name(), serving);
  }
}

std::string QlinearServer::admin_address() const {
  if (admin_server_ == nullptr) return "";
  const size_t colon = options_.admin_listen.rfind(':');
  return absl::StrCat(options_.admin_listen.substr(0, colon), ":", admin_port_);
}

absl::Status QlinearServer::ReloadTokens() {
  absl::Status reloaded = auth_->Reload();
  if (!reloaded.ok()) {
    Log(LogLevel::kError, "tokens_reload_failed", {{"reason", reloaded.message()}});
  }
  Log(reloaded.ok() ? LogLevel::kInfo : LogLevel::kWarning, "tokens_reloaded",
      {{"data_tokens", auth_->tokens(Plane::kData)},
       {"data_names", absl::StrJoin(auth_->names(Plane::kData), ",")},
       {"admin_tokens", auth_->tokens(Plane::kAdmin)},
       {"admin_names", absl::StrJoin(auth_->names(Plane::kAdmin), ",")}});
  return reloaded;
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
  if (shut_down_ || draining_) return;  // StopAdvertising holds for good
  // gRPC health says SERVING only while /readyz says ready: it turns after
  // /readyz on the way up and before it on the way down, so a probe that
  // saw one turn never finds the other behind it.
  if (serving) {
    serving_ = true;
    SetHealth(true);
  } else {
    SetHealth(false);
    serving_ = false;
  }
}

void QlinearServer::StopAdvertising() {
  if (shut_down_) return;
  SetHealth(false);  // before /readyz, as in SetServing
  draining_ = true;
}

bool QlinearServer::Shutdown(std::chrono::steady_clock::time_point deadline,
                             Engine::DrainCounts* counts) {
  if (shut_down_) return drained_;
  shut_down_ = true;
  SetHealth(false);  // before /readyz, as in SetServing
  draining_ = true;
  data_->BeginDrain();  // streams stop reading, answer what they hold, end UNAVAILABLE
  drained_ = engine_->Drain(deadline, counts);
  // Every accepted Forward is answered now; let the answers leave (a large
  // one takes a while through HTTP/2 flow control), then stop gRPC
  // (uploads still streaming are cancelled).
  data_->WaitForSent(std::chrono::steady_clock::now() + std::chrono::seconds(5),
                     std::chrono::milliseconds(100));
  const auto stop_by = std::chrono::system_clock::now() + std::chrono::seconds(1);
  if (admin_server_ != nullptr) admin_server_->Shutdown(stop_by);
  server_->Shutdown(stop_by);
  return drained_;
}

QlinearServer::~QlinearServer() {
  if (server_ != nullptr) {
    Shutdown(std::chrono::steady_clock::now());
    server_->Wait();
    if (admin_server_ != nullptr) admin_server_->Wait();
  }
}

}  // namespace qlinear
