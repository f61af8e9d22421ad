// Command: how a qlinear subcommand reports bad usage (exit 2) and failures
// (exit 1), one line on stderr each.
#ifndef QLINEAR_CLIENT_COMMAND_H_
#define QLINEAR_CLIENT_COMMAND_H_

#include <cstdio>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "client/printable.h"

namespace qlinear {

struct Command {
  const char* name;
  const char* usage;

  // Usage prints the fault and the usage line; returns 2.
  int Usage(absl::string_view message) const {
    std::fprintf(stderr, "qlinear %s: %.*s\nusage: qlinear %s %s\n", name,
                 static_cast<int>(message.size()), message.data(), name, usage);
    return 2;
  }
  // Fail prints the message (control bytes escaped: it may come from a
  // server); returns 1.
  int Fail(const absl::Status& status) const {
    std::fprintf(stderr, "qlinear %s: %s\n", name, Printable(status.message()).c_str());
    return 1;
  }
  // FailRpc prints the canonical code name and the message; returns 1.
  int FailRpc(const absl::Status& status) const {
    std::fprintf(stderr, "qlinear %s: %s: %s\n", name,
                 absl::StatusCodeToString(status.code()).c_str(),
                 Printable(status.message()).c_str());
    return 1;
  }
};

}  // namespace qlinear

#endif  // QLINEAR_CLIENT_COMMAND_H_
