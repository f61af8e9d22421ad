#include "server/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <tuple>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/token_file.h"
#include "grpcpp/server_context.h"

namespace qlinear {
namespace {

std::array<uint8_t, 32> Digest(absl::string_view token) {
  std::array<uint8_t, 32> out{};
  unsigned int n = 0;
  EVP_Digest(token.data(), token.size(), out.data(), &n, EVP_sha256(), nullptr);
  return out;
}

const char* PlaneName(Plane plane) { return plane == Plane::kAdmin ? "Admin" : "Data"; }

absl::Status NeedToken(Plane plane, absl::string_view why) {
  return absl::UnauthenticatedError(absl::StrCat(
      "the ", PlaneName(plane), " plane needs a token: ", why,
      " (send the metadata 'authorization: Bearer TOKEN'; the qlinear CLI takes --token-file "
      "FILE or QLINEAR_TOKEN)"));
}

}  // namespace

absl::Status Authorizer::CheckDisjoint(const Tokens& tokens) {
  for (const Entry& d : tokens.data) {
    for (const Entry& a : tokens.admin) {
      if (d.digest != a.digest) continue;
      auto named = [](const std::string& name) {
        return name.empty() ? std::string("(unnamed)") : absl::StrCat("'", name, "'");
      };
      return absl::InvalidArgumentError(absl::StrCat(
          "--data-token-file and --admin-token-file hold the same token (", named(d.name),
          " and ", named(a.name),
          "): a token belongs to one plane; keep an admin token only in --admin-token-file "
          "(admin tokens may also call the Data plane)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Authorizer>> Authorizer::Create(const Options& options) {
  auto tokens = std::make_shared<Tokens>();
  for (auto [flag, file, list] :
       {std::tuple{"--data-token-file", &options.data_token_file, &tokens->data},
        std::tuple{"--admin-token-file", &options.admin_token_file, &tokens->admin}}) {
    if (file->empty()) continue;
    auto read = ReadTokenFile(*file);
    if (!read.ok()) {
      return absl::Status(read.status().code(), absl::StrCat(flag, ": ", read.status().message()));
    }
    for (const TokenEntry& e : *read) list->push_back({Digest(e.token), e.name});
  }
  if (absl::Status disjoint = CheckDisjoint(*tokens); !disjoint.ok()) return disjoint;
  std::unique_ptr<Authorizer> auth(new Authorizer());
  auth->options_ = options;
  auth->tokens_ = std::move(tokens);
  return auth;
}

std::shared_ptr<const Authorizer::Tokens> Authorizer::Snapshot() const {
  absl::ReaderMutexLock lock(&mu_);
  return tokens_;
}

bool Authorizer::open(Plane plane) const {
  if (plane == Plane::kData) return options_.data_token_file.empty();
  return options_.admin_token_file.empty() && options_.data_token_file.empty();
}

absl::StatusOr<std::string> Authorizer::Check(const grpc::ServerContextBase& context,
                                              Plane plane) const {
  if (open(Plane::kData) && open(Plane::kAdmin)) return std::string();  // no lookups at all
  std::vector<absl::string_view> values;
  const auto range = context.client_metadata().equal_range("authorization");
  for (auto it = range.first; it != range.second; ++it) {
    values.emplace_back(it->second.data(), it->second.size());
  }
  return CheckHeader(values, plane);
}

absl::StatusOr<std::string> Authorizer::CheckHeader(
    const std::vector<absl::string_view>& authorization, Plane plane) const {
  absl::StatusOr<std::string> who = Decide(authorization, plane);
  if (!who.ok() && options_.on_refusal) options_.on_refusal(plane, who.status().code());
  return who;
}

absl::StatusOr<std::string> Authorizer::Decide(
    const std::vector<absl::string_view>& authorization, Plane plane) const {
  const bool plane_open = open(plane);
  std::shared_ptr<const Tokens> tokens = Snapshot();
  if (tokens == nullptr) return std::string();  // default-constructed: open
  if (authorization.empty()) {
    if (plane_open) return std::string();
    return NeedToken(plane, "the call carries none");
  }
  if (authorization.size() > 1) {
    if (plane_open) return std::string();
    return NeedToken(plane, absl::StrCat("the call carries ", authorization.size(),
                                         " authorization values; send one"));
  }
  absl::string_view value = absl::StripAsciiWhitespace(authorization[0]);
  if (value.size() < 7 || !absl::EqualsIgnoreCase(value.substr(0, 7), "bearer ")) {
    if (plane_open) return std::string();
    return NeedToken(plane, "the authorization value is not 'Bearer TOKEN'");
  }
  const absl::string_view token = absl::StripLeadingAsciiWhitespace(value.substr(7));
  // Every known token is compared, matched or not, so that the time taken
  // tells nothing about which one (if any) matched.
  const std::array<uint8_t, 32> digest = Digest(token);
  const Entry* data_match = nullptr;
  const Entry* admin_match = nullptr;
  for (const Entry& e : tokens->data) {
    const bool eq = CRYPTO_memcmp(e.digest.data(), digest.data(), digest.size()) == 0;
    data_match = eq ? &e : data_match;
  }
  for (const Entry& e : tokens->admin) {
    const bool eq = CRYPTO_memcmp(e.digest.data(), digest.data(), digest.size()) == 0;
    admin_match = eq ? &e : admin_match;
  }
  if (admin_match != nullptr) return admin_match->name;  // admin tokens may call both planes
  if (data_match != nullptr) {
    if (plane == Plane::kData || plane_open) return data_match->name;
    return absl::PermissionDeniedError(absl::StrCat(
        "token '", data_match->name.empty() ? "(unnamed)" : data_match->name,
        "' is a Data-plane token; Admin methods need a token of ",
        options_.admin_token_file.empty()
            ? "--admin-token-file, and this server has none: the Admin plane is closed"
            : "--admin-token-file"));
  }
  if (plane_open) return std::string();
  return NeedToken(plane, "the token is not one of its tokens");
}

absl::Status Authorizer::Reload() {
  std::shared_ptr<const Tokens> old = Snapshot();
  if (old == nullptr) return absl::OkStatus();  // open: nothing to read
  auto fresh = std::make_shared<Tokens>(*old);
  std::vector<std::string> failures;
  for (auto [file, list] : {std::pair{&options_.data_token_file, &fresh->data},
                            std::pair{&options_.admin_token_file, &fresh->admin}}) {
    if (file->empty()) continue;
    auto read = ReadTokenFile(*file);
    if (!read.ok()) {
      failures.push_back(absl::StrCat(read.status().message(), "; its previous tokens stay"));
      continue;
    }
    list->clear();
    for (const TokenEntry& e : *read) list->push_back({Digest(e.token), e.name});
  }
  if (absl::Status disjoint = CheckDisjoint(*fresh); !disjoint.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(disjoint.message(), "; the previous tokens of both files stay"));
  }
  {
    absl::MutexLock lock(&mu_);
    tokens_ = std::move(fresh);
  }
  if (failures.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(failures, "; "));
}

size_t Authorizer::tokens(Plane plane) const {
  std::shared_ptr<const Tokens> t = Snapshot();
  if (t == nullptr) return 0;
  return plane == Plane::kData ? t->data.size() : t->admin.size();
}

std::vector<std::string> Authorizer::names(Plane plane) const {
  std::vector<std::string> out;
  std::shared_ptr<const Tokens> t = Snapshot();
  if (t == nullptr) return out;
  for (const Entry& e : plane == Plane::kData ? t->data : t->admin) out.push_back(e.name);
  return out;
}

std::string Authorizer::Describe() const {
  if (open(Plane::kData) && open(Plane::kAdmin)) return "data and admin planes open (no token files)";
  auto count = [](size_t n) { return absl::StrCat(n, n == 1 ? " token" : " tokens"); };
  const std::string data =
      open(Plane::kData) ? "data plane open"
                         : absl::StrCat("data plane ", count(tokens(Plane::kData)), " (+ admin)");
  const std::string admin =
      open(Plane::kAdmin)                     ? "admin plane open"
      : options_.admin_token_file.empty() ? "admin plane closed (no --admin-token-file)"
                                              : absl::StrCat("admin plane ", count(tokens(Plane::kAdmin)));
  return absl::StrCat(data, ", ", admin);
}

absl::StatusOr<std::string> CheckCall(const Authorizer* auth,
                                      const grpc::ServerContextBase& context, Plane plane) {
  if (auth == nullptr) return std::string();
  return auth->Check(context, plane);
}

}  // namespace qlinear
