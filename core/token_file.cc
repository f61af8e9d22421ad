#include "core/token_file.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/read_file.h"

namespace qlinear {
namespace {

bool IsTokenChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_' ||
         c == '~' || c == '+' || c == '/' || c == '=';
}

bool IsNameChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_' ||
         c == '@';
}

}  // namespace

absl::StatusOr<std::vector<TokenEntry>> ParseTokens(absl::string_view text,
                                                    absl::string_view path) {
  std::vector<TokenEntry> out;
  std::map<std::string, int> seen;  // token -> line
  int number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token file '", path, "' line ", number, ": ", why,
          " (a line is TOKEN or NAME:TOKEN; NAME 1 to 64 of [A-Za-z0-9._@-], TOKEN ",
          kMinTokenBytes, " to ", kMaxTokenBytes, " of [A-Za-z0-9-._~+/=])"));
    };
    TokenEntry entry;
    entry.line = number;
    absl::string_view token = line;
    if (const size_t colon = line.find(':'); colon != absl::string_view::npos) {
      const absl::string_view name = line.substr(0, colon);
      token = line.substr(colon + 1);
      if (name.empty() || name.size() > 64) {
        return bad(absl::StrCat("the name has ", name.size(), " characters"));
      }
      for (size_t i = 0; i < name.size(); ++i) {
        if (!IsNameChar(name[i])) {
          return bad(absl::StrCat("the name has a character outside the set at column ", i + 1));
        }
      }
      entry.name = std::string(name);
    }
    if (token.size() < kMinTokenBytes || token.size() > kMaxTokenBytes) {
      return bad(absl::StrCat("the token has ", token.size(), " characters"));
    }
    for (size_t i = 0; i < token.size(); ++i) {
      if (!IsTokenChar(token[i])) {
        return bad(absl::StrCat("the token has a character outside the set at column ",
                                (token.data() - line.data()) + i + 1));
      }
    }
    entry.token = std::string(token);
    if (auto [it, fresh] = seen.emplace(entry.token, number); !fresh) {
      return bad(absl::StrCat("the token of line ", it->second, " again"));
    }
    out.push_back(std::move(entry));
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("token file '", path, "' holds no token (", number,
                     " lines, all blank or '#' comments)"));
  }
  return out;
}

absl::StatusOr<std::vector<TokenEntry>> ReadTokenFile(const std::string& path) {
  auto text = ReadFileText("token file", path);
  if (!text.ok()) return text.status();
  return ParseTokens(*text, path);
}

}  // namespace qlinear
