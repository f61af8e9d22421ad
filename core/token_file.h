// TokenFile: the bearer-token files of qlinear-server (--data-token-file,
// --admin-token-file) and of the qlinear CLI (--token-file).
//
// One token per line, `NAME:TOKEN` or just `TOKEN`. Surrounding spaces,
// tabs and '\r' are trimmed; blank lines and lines whose first character is
// '#' are ignored. TOKEN is 16 to 512 characters of RFC 6750's b64token set
// [A-Za-z0-9-._~+/=], so it never holds ':' and the first ':' splits the
// name off. NAME is 1 to 64 characters of [A-Za-z0-9._@-]; it is what the
// server logs for the caller, and a token without a name logs as "".
//
//   # data.tokens
//   app-frontend:3q2+7wzVv4Jx0bC8Yd1uLk
//   Zm9yIHRoZSBiYXRjaCBqb2I
//
// Errors are INVALID_ARGUMENT naming the file and the line number and what
// was wrong, never any byte of the line (it may hold a secret); a file that
// holds no token, or the same token twice, is an error too. ReadTokenFile
// adds NOT_FOUND / PERMISSION_DENIED / INVALID_ARGUMENT for a file that
// cannot be read (the message names it and the OS's reason).
//
// Thread safety: plain functions of their arguments.
#ifndef QLINEAR_CORE_TOKEN_FILE_H_
#define QLINEAR_CORE_TOKEN_FILE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace qlinear {

struct TokenEntry {
  std::string name;   // "" when the line has no NAME:
  std::string token;
  int line = 0;       // 1-based line number in the file
};

inline constexpr size_t kMinTokenBytes = 16;
inline constexpr size_t kMaxTokenBytes = 512;

// ParseTokens parses the text of a token file; `path` only names it in
// errors.
absl::StatusOr<std::vector<TokenEntry>> ParseTokens(absl::string_view text,
                                                    absl::string_view path);

// ReadTokenFile reads and parses the file at `path`.
absl::StatusOr<std::vector<TokenEntry>> ReadTokenFile(const std::string& path);

}  // namespace qlinear

#endif  // QLINEAR_CORE_TOKEN_FILE_H_
