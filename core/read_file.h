// ReadFileText: the one way a small configuration file (a token file, a PEM
// certificate or key) is read whole.
//
// `what` names the file in errors, as the user knows it: a flag
// ("--tls-cert") or a role ("token file"). Errors: NOT_FOUND (no such
// file), PERMISSION_DENIED, INVALID_ARGUMENT (a directory, or any other
// reason), each "<what> '<path>': ..." with the OS's reason. The file's
// bytes are never part of a message.
//
// Thread safety: a plain function.
#ifndef QLINEAR_CORE_READ_FILE_H_
#define QLINEAR_CORE_READ_FILE_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace qlinear {

absl::StatusOr<std::string> ReadFileText(absl::string_view what, const std::string& path);

}  // namespace qlinear

#endif  // QLINEAR_CORE_READ_FILE_H_
