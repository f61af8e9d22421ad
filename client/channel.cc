#include "client/channel.h"

#include <arpa/inet.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/read_file.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/token_file.h"
#include "grpc/grpc.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace qlinear {
namespace {


constexpr char kTargetForms[] =
    "--target takes HOST:PORT, a list of IPv4 or [IPv6] literals a:1,b:2 (one family), "
    "or dns:///HOST:PORT for a name with several addresses";

// Family of one list element: 4, 6, or 0 when it is no literal HOST:PORT.
int LiteralFamily(absl::string_view element) {
  const size_t colon = element.rfind(':');
  if (colon == absl::string_view::npos) return 0;
  int port = 0;
  if (!absl::SimpleAtoi(element.substr(colon + 1), &port) || port < 1 || port > 65535) return 0;
  absl::string_view host = element.substr(0, colon);
  unsigned char addr[16];
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    const std::string h(host.substr(1, host.size() - 2));
    return inet_pton(AF_INET6, h.c_str(), addr) == 1 ? 6 : 0;
  }
  const std::string h(host);
  return inet_pton(AF_INET, h.c_str(), addr) == 1 ? 4 : 0;
}

}  // namespace

// CANCELLED is retried too: gRPC 1.51's server, shutting down, ends calls
// that had reached it but no handler yet with CANCELLED "CANCELLED"
// (grpc/grpc#41785), though nobody cancelled them; a call the client
// itself cancels is never retried. The health check config makes
// round_robin skip a replica from the moment it reports NOT_SERVING
// (draining, or still loading), through grpc.health.v1's Watch.
const char kBalancedServiceConfig[] =
    R"({"loadBalancingConfig":[{"round_robin":{}}],"healthCheckConfig":{"serviceName":""},)"
    R"("methodConfig":[{"name":[{"service":"qlinear.v1.Data","method":"Forward"},)"
    R"({"service":"inference.GRPCInferenceService","method":"ModelInfer"}],)"
    R"("retryPolicy":{"maxAttempts":5,"initialBackoff":"0.01s","maxBackoff":"0.2s",)"
    R"("backoffMultiplier":2,"retryableStatusCodes":["UNAVAILABLE","CANCELLED"]}}]})";

absl::StatusOr<ParsedTarget> ParseTarget(const std::string& target) {
  if (target.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--target must be HOST:PORT; got ''"));
  }
  ParsedTarget parsed;
  if (target.find(',') == std::string::npos) {
    parsed.grpc_target = target;
    parsed.replicas = {target};
    parsed.balanced = absl::StartsWith(target, "dns:");
    return parsed;
  }
  int family = 0;
  for (absl::string_view element : absl::StrSplit(target, ',')) {
    const int f = LiteralFamily(element);
    if (f == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          kTargetForms, "; got '", element.empty() ? "" : element, "' in '", target, "'",
          element.empty() ? " (an empty element)" : ""));
    }
    if (family != 0 && f != family) {
      return absl::InvalidArgumentError(
          absl::StrCat(kTargetForms, "; got IPv4 and IPv6 mixed in '", target, "'"));
    }
    family = f;
    parsed.replicas.emplace_back(element);
  }
  parsed.grpc_target = absl::StrCat(family == 4 ? "ipv4:" : "ipv6:", absl::StrJoin(parsed.replicas, ","));
  parsed.balanced = true;
  return parsed;
}

absl::Status CheckChannelOptions(const ChannelOptions& o) {
  if (auto parsed = ParseTarget(o.target); !parsed.ok()) return parsed.status();
  if (o.tls_cert_file.empty() != o.tls_key_file.empty()) {
    return absl::InvalidArgumentError(o.tls_cert_file.empty() ? "--tls-key needs --tls-cert"
                                                              : "--tls-cert needs --tls-key");
  }
  if (!o.tls_server_name.empty() && !o.tls()) {
    return absl::InvalidArgumentError("a TLS server name needs --tls-ca or --tls-cert");
  }
  if (!o.token.empty()) {
    // The token file's rules (core/token_file.h), without quoting the token.
    auto parsed = ParseTokens(o.token, "the token");
    if (!parsed.ok() || (*parsed)[0].token != o.token) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the token must be ", kMinTokenBytes, " to ", kMaxTokenBytes,
          " characters of [A-Za-z0-9-._~+/=]; got ", o.token.size(), " characters that are not"));
    }
  }
  if ((o.max_message_mb < 1 || o.max_message_mb > 2047) && o.max_message_mb != -1) {
    return absl::InvalidArgumentError(
        absl::StrCat("the message limit must be in [1, 2047] MiB (or -1: none); got ", o.max_message_mb));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ChannelOptions& o) {
  if (absl::Status s = CheckChannelOptions(o); !s.ok()) return s;
  const ParsedTarget target = *ParseTarget(o.target);
  grpc::ChannelArguments args;
  if (target.balanced) {
    args.SetServiceConfigJSON(kBalancedServiceConfig);
    args.SetInt(GRPC_ARG_ENABLE_RETRIES, 1);
    args.SetInt(GRPC_ARG_PER_RPC_RETRY_BUFFER_SIZE, 4 << 20);
    // A list's URI path is no authority ("a:1,b:2"): the first replica is
    // the :authority and, over TLS, the name checked.
    if (target.replicas.size() > 1) args.SetString(GRPC_ARG_DEFAULT_AUTHORITY, target.replicas[0]);
  }
  const int limit = o.max_message_mb == -1 ? -1 : o.max_message_mb << 20;
  args.SetMaxReceiveMessageSize(limit);
  args.SetMaxSendMessageSize(limit);
  if (o.connection_id >= 0) args.SetInt("qlinear.connection_id", o.connection_id);
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (o.tls()) {
    grpc::SslCredentialsOptions ssl;
    if (!o.tls_ca_file.empty()) {
      auto ca = ReadFileText("--tls-ca", o.tls_ca_file);
      if (!ca.ok()) return absl::InvalidArgumentError(ca.status().message());
      if (ca->find("-----BEGIN CERTIFICATE-----") == std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--tls-ca '", o.tls_ca_file, "' holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
      }
      ssl.pem_root_certs = *std::move(ca);
    }
    if (!o.tls_cert_file.empty()) {
      auto cert = ReadFileText("--tls-cert", o.tls_cert_file);
      if (!cert.ok()) return absl::InvalidArgumentError(cert.status().message());
      auto key = ReadFileText("--tls-key", o.tls_key_file);
      if (!key.ok()) return absl::InvalidArgumentError(key.status().message());
      if (cert->find("-----BEGIN CERTIFICATE-----") == std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--tls-cert '", o.tls_cert_file, "' holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
      }
      if (key->find("PRIVATE KEY-----") == std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--tls-key '", o.tls_key_file, "' holds no PEM private key (-----BEGIN PRIVATE KEY-----)"));
      }
      ssl.pem_cert_chain = *std::move(cert);
      ssl.pem_private_key = *std::move(key);
    }
    credentials = grpc::SslCredentials(ssl);
    if (!o.tls_server_name.empty()) args.SetSslTargetNameOverride(o.tls_server_name);
  }
  return grpc::CreateCustomChannel(target.grpc_target, credentials, args);
}

void SetCallMetadata(const ChannelOptions& o, grpc::ClientContext* context) {
  if (!o.token.empty()) context->AddMetadata("authorization", absl::StrCat("Bearer ", o.token));
}

}  // namespace qlinear
