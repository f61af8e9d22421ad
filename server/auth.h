// Authorizer: who may call which plane — bearer tokens per plane, read from
// token files (core/token_file.h) and re-read on Reload (SIGHUP).
//
// Every RPC handler of qlinear.v1.Admin, qlinear.v1.Data and the KServe v2
// service calls Check first, before it reads or allocates anything from the
// request; grpc.health.v1 is never checked (probes stay open). A null
// Authorizer* means "open", as does a default-constructed Authorizer.
//
// The client sends the metadata `authorization: Bearer TOKEN` on every call.
// Which plane is open:
//
//   files given          Data plane               Admin plane
//   none                 open                     open
//   --admin-token-file   open                     admin tokens
//   --data-token-file    data or admin tokens     closed (no admin token exists)
//   both                 data or admin tokens     admin tokens
//
// so the Admin plane is never more open than the Data plane. On an open
// plane any token (or none) is accepted.
//
//   auto auth = Authorizer::Create({.data_token_file = "data.tokens",
//                                   .admin_token_file = "admin.tokens"});
//   absl::StatusOr<std::string> caller = (*auth)->Check(*context, Plane::kAdmin);
//   if (!caller.ok()) return ToGrpc(caller.status());   // refuse the call
//   Log(..., {{"caller", *caller}});                      // a name, never a token
//
// Check returns the caller's name for logs ("" when the token has no name or
// none was needed and none matched; never the token itself), or
//   UNAUTHENTICATED    no token, a malformed authorization value, or a
//                      token the plane does not know;
//   PERMISSION_DENIED  a data token on the Admin plane.
// Tokens are compared as SHA-256 digests with CRYPTO_memcmp against every
// known token (no early exit), so the time taken does not depend on how much
// of a token matched, nor on which token did.
//
// Reload re-reads both files; a file that cannot be read or parsed keeps
// its previous tokens (the other file is still re-read) and the returned
// status names it. Reload never changes which planes are open.
//
// A token may be in one file only: Create refuses a token found in both
// (INVALID_ARGUMENT naming the two entries' names, never the token), and
// Reload then keeps the previous tokens of both files.
//
// Thread safety: Check, Reload and the accessors may be called from any
// thread at any time; a Check sees either the old or the new tokens.
#ifndef QLINEAR_SERVER_AUTH_H_
#define QLINEAR_SERVER_AUTH_H_

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace grpc {
class ServerContextBase;
}

namespace qlinear {

enum class Plane { kData, kAdmin };

class Authorizer {
 public:
  struct Options {
    std::string data_token_file;   // "": no data tokens
    std::string admin_token_file;  // "": no admin tokens
    // Called once for every refusal Check and CheckHeader return (the
    // plane and UNAUTHENTICATED or PERMISSION_DENIED), from the calling
    // thread; null: not counted. The server counts them in its Engine.
    std::function<void(Plane, absl::StatusCode)> on_refusal;
  };

  // Authorizer() leaves both planes open.
  Authorizer() = default;
  // Create reads both files: the file's error (core/token_file.h) when one
  // cannot be read or parsed.
  static absl::StatusOr<std::unique_ptr<Authorizer>> Create(const Options& options);

  absl::StatusOr<std::string> Check(const grpc::ServerContextBase& context, Plane plane) const;
  // CheckHeader is Check on the values of the `authorization` metadata the
  // call carried (none, one or several), for tests and non-gRPC callers.
  absl::StatusOr<std::string> CheckHeader(const std::vector<absl::string_view>& authorization,
                                          Plane plane) const;

  absl::Status Reload();

  // open: whether `plane` takes calls without a token.
  bool open(Plane plane) const;
  // tokens: how many tokens a plane's file holds now; names: their names
  // ("" for those without), for the logs.
  size_t tokens(Plane plane) const;
  std::vector<std::string> names(Plane plane) const;
  // Describe is one phrase per plane for the start-up line, e.g.
  // "data plane 2 tokens, admin plane 1 token" or "data and admin planes open".
  std::string Describe() const;

 private:
  struct Entry {
    std::array<uint8_t, 32> digest;
    std::string name;
  };
  struct Tokens {
    std::vector<Entry> data, admin;
  };
  std::shared_ptr<const Tokens> Snapshot() const;
  absl::StatusOr<std::string> Decide(const std::vector<absl::string_view>& authorization,
                                     Plane plane) const;
  // CheckDisjoint: INVALID_ARGUMENT when a token is in both lists.
  static absl::Status CheckDisjoint(const Tokens& tokens);

  Options options_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const Tokens> tokens_ ABSL_GUARDED_BY(mu_);
};

// CheckCall is how every handler asks: `auth`'s Check, or open (the caller
// name "") when `auth` is null.
absl::StatusOr<std::string> CheckCall(const Authorizer* auth,
                                      const grpc::ServerContextBase& context, Plane plane);

}  // namespace qlinear

#endif  // QLINEAR_SERVER_AUTH_H_
