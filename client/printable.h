// Printable: the one way the CLI prints a string that came from a server
// (layer names, error messages, origins, build info). A server, or whoever
// uploaded a layer to it, chooses those bytes; a newline or a terminal
// escape sequence in them must not reach the user's terminal raw.
//
// Printable returns `text` with every control byte (0x00-0x1F, 0x7F)
// written as a C escape: \n, \r, \t, else \xHH. Other bytes (UTF-8
// included) pass unchanged. Pure function.
#ifndef QLINEAR_CLIENT_PRINTABLE_H_
#define QLINEAR_CLIENT_PRINTABLE_H_

#include <string>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace qlinear {

inline std::string Printable(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u != 0x7F) {
      out.push_back(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else {
      absl::StrAppendFormat(&out, "\\x%02x", u);
    }
  }
  return out;
}

}  // namespace qlinear

#endif  // QLINEAR_CLIENT_PRINTABLE_H_
