#include "client/channel_flags.h"

#include "absl/strings/str_cat.h"
#include "core/token_file.h"

namespace qlinear {

const std::set<std::string>& ChannelFlagNames() {
  static const auto* names =
      new std::set<std::string>{"target", "tls-ca", "tls-cert", "tls-key", "token-file"};
  return *names;
}

absl::StatusOr<ChannelOptions> ChannelOptionsFromFlags(
    const Flags& flags, const std::function<const char*(const char*)>& getenv) {
  ChannelOptions o;
  if (auto t = flags.Get("target")) o.target = *t;
  o.tls_ca_file = flags.Get("tls-ca").value_or("");
  o.tls_cert_file = flags.Get("tls-cert").value_or("");
  o.tls_key_file = flags.Get("tls-key").value_or("");
  if (auto file = flags.Get("token-file")) {
    auto tokens = ReadTokenFile(*file);
    if (!tokens.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--token-file: ", tokens.status().message()));
    }
    if (tokens->size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--token-file '", *file, "' holds ", tokens->size(),
                       " tokens (lines ", (*tokens)[0].line, " and ", (*tokens)[1].line,
                       ", ...); a client sends one: give a file of one line"));
    }
    o.token = (*tokens)[0].token;
  } else if (const char* env = getenv("QLINEAR_TOKEN"); env != nullptr && *env != '\0') {
    auto tokens = ParseTokens(env, "$QLINEAR_TOKEN");
    if (!tokens.ok()) return tokens.status();
    if (tokens->size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("$QLINEAR_TOKEN holds ", tokens->size(), " tokens; give one"));
    }
    o.token = (*tokens)[0].token;
  }
  if (absl::Status s = CheckChannelOptions(o); !s.ok()) return s;
  return o;
}

}  // namespace qlinear
