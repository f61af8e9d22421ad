// Channel: the one way the client side makes a gRPC channel to
// qlinear-server. qlinear::Client, every CLI server command and
// `qlinear bench` connect through MakeChannel, and every call they make
// carries SetCallMetadata's token.
//
//   ChannelOptions o;
//   o.target = "10.0.0.5:50051";
//   o.tls_ca_file = "ca.pem";                  // TLS, the server's cert checked
//   o.tls_cert_file = "client.pem";            // mTLS (needs tls_key_file)
//   o.tls_key_file = "client.key";
//   o.token = "3q2+7wzVv4Jx0bC8Yd1uLk";        // authorization: Bearer ...
//   auto channel = MakeChannel(o);             // StatusOr<shared_ptr<Channel>>
//   grpc::ClientContext context;
//   SetCallMetadata(o, &context);              // before each call
//
// The token travels as call metadata set on each ClientContext, not as gRPC
// call credentials: gRPC refuses those on a plaintext channel, and tokens
// must work there too (then they cross the network in clear: see
// docs/security.md).
//
// TLS is on when tls_ca_file or tls_cert_file is given; the server's
// certificate must then name the target's host (IP or DNS subjectAltName),
// or tls_server_name when set. With several replicas the first one's host
// (or tls_server_name) is the name every replica's certificate must hold.
//
// Several replicas (ParseTarget): `target` may list them, "a:1,b:2,c:3"
// (IPv4 literals, or [IPv6] literals, all of one family: gRPC 1.51's ipv4:
// and ipv6: schemes take only literal addresses), or be one
// "dns:///HOST:PORT" whose name resolves to several addresses. Such a
// channel balances: its service config (kBalancedServiceConfig) selects
// round_robin over the replicas whose gRPC health says SERVING, and
// Forward (qlinear.v1.Data and KServe's ModelInfer, both idempotent) is
// retried on UNAVAILABLE (and on the CANCELLED a shutting-down gRPC 1.51
// server gives calls it never started) up to 5 attempts, 10 ms to 200 ms
// apart, so that a replica that drains or dies costs no request. Other
// calls are not retried. A request larger than the retry buffer (4 MiB)
// is not retried once it is sent. A retried call reports one outcome:
// its last attempt's.
//
// CheckChannelOptions / MakeChannel return INVALID_ARGUMENT, one line naming
// the option as the CLI spells it (--tls-cert, ...), for a certificate
// without its key (or a key without its certificate), a file that cannot
// be read, a token outside core/token_file.h's character set, or a
// max_message_mb outside [1, 2047] (and not -1). Files are read once, by MakeChannel.
//
// Thread safety: plain functions; a channel may be shared by many threads.
#ifndef QLINEAR_CLIENT_CHANNEL_H_
#define QLINEAR_CLIENT_CHANNEL_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace grpc {
class Channel;
class ClientContext;
}  // namespace grpc

namespace qlinear {

struct ChannelOptions {
  // HOST:PORT of the server; or several, "a:1,b:2", or "dns:///HOST:PORT"
  // (see ParseTarget). Every option below applies to each replica.
  std::string target = "127.0.0.1:50051";
  // PEM CA certificates that must have signed the server's certificate.
  std::string tls_ca_file;
  // PEM certificate chain and unencrypted key of the client, for servers
  // that require client certificates (--tls-client-ca). Both or neither;
  // alone (without tls_ca_file) they use the system's roots for the server.
  std::string tls_cert_file;
  std::string tls_key_file;
  // The name the server's certificate must hold, when it is not the
  // target's host ("": the target's host).
  std::string tls_server_name;
  // Bearer token for every call ("": none).
  std::string token;
  // The largest message sent or received, in MiB; -1: no limit (for tests
  // of the server's own limits).
  int max_message_mb = 64;
  // >= 0: channels of the same target with different ids use separate
  // connections (`qlinear bench --channels`); -1: gRPC may share one.
  int connection_id = -1;

  bool tls() const { return !tls_ca_file.empty() || !tls_cert_file.empty(); }
};

// ParsedTarget is ParseTarget's reading of ChannelOptions::target.
struct ParsedTarget {
  // What gRPC is given: the target as it came for one HOST:PORT (or any
  // other single gRPC target), "ipv4:a:1,b:2" / "ipv6:[::1]:1,..." for a
  // list, the dns:/// target as it came.
  std::string grpc_target;
  // Each replica as HOST:PORT, for commands that act on each (`qlinear
  // upload`); one element for a single target or a dns:/// name.
  std::vector<std::string> replicas;
  // Whether the channel balances (a list, or dns:///): round_robin and the
  // retry policy above.
  bool balanced = false;
};

// ParseTarget returns INVALID_ARGUMENT, one line naming what is accepted,
// for an empty target, an empty element in a list, a list element that is
// not an IPv4 or [IPv6] literal with a port in [1, 65535] (a host name: use
// dns:///HOST:PORT), or a list mixing the two families.
absl::StatusOr<ParsedTarget> ParseTarget(const std::string& target);

// kBalancedServiceConfig is the service config of a balancing channel.
extern const char kBalancedServiceConfig[];

absl::Status CheckChannelOptions(const ChannelOptions& options);

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ChannelOptions& options);

// SetCallMetadata adds `authorization: Bearer TOKEN` to `context` when
// options.token is set (call it once per ClientContext, before the call).
void SetCallMetadata(const ChannelOptions& options, grpc::ClientContext* context);

}  // namespace qlinear

#endif  // QLINEAR_CLIENT_CHANNEL_H_
