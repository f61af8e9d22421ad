// ChannelFlags: the connection flags every qlinear server command (and
// `qlinear bench`) takes, read into client/channel.h's ChannelOptions.
//
//   --target HOST:PORT   the server (default 127.0.0.1:50051); or several
//                        replicas, HOST:PORT,HOST:PORT... (IP literals), or
//                        dns:///HOST:PORT: round robin with retries
//                        (client/channel.h's ParseTarget)
//   --tls-ca FILE        TLS; the PEM CA certificates that signed the server's
//   --tls-cert FILE      mTLS: the client's PEM certificate chain ...
//   --tls-key FILE       ... and its unencrypted key (both or neither)
//   --token-file FILE    a token file with one token (core/token_file.h:
//                        TOKEN or NAME:TOKEN); without it, $QLINEAR_TOKEN
//
// ChannelOptionsFromFlags returns INVALID_ARGUMENT, one line naming the flag
// (or QLINEAR_TOKEN) and what is wrong, for bad combinations, files that
// cannot be read, and token files with no token or several: the command
// answers it as bad usage (exit 2). It never quotes a token.
#ifndef QLINEAR_CLIENT_CHANNEL_FLAGS_H_
#define QLINEAR_CLIENT_CHANNEL_FLAGS_H_

#include <functional>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "client/channel.h"
#include "core/flags.h"

namespace qlinear {

// ChannelFlagNames are the valued flags above, for Flags::Parse.
const std::set<std::string>& ChannelFlagNames();

// ChannelFlagsUsage is "[--target ADDR] [--tls-ca FILE] ..." for usage lines.
inline constexpr char kChannelFlagsUsage[] =
    "[--target HOST:PORT[,HOST:PORT...]|dns:///HOST:PORT] [--tls-ca FILE] [--tls-cert FILE --tls-key FILE] [--token-file FILE]";

absl::StatusOr<ChannelOptions> ChannelOptionsFromFlags(
    const Flags& flags, const std::function<const char*(const char*)>& getenv);

}  // namespace qlinear

#endif  // QLINEAR_CLIENT_CHANNEL_FLAGS_H_
