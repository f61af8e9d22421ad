#include "core/names.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace qlinear {
namespace {

bool NameByte(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
         c == '.' || c == '_' || c == ':' || c == '/' || c == '-';
}

constexpr char kRule[] = "a layer name must be 1 to 256 bytes of A-Z a-z 0-9 . _ : / -";

}  // namespace

absl::Status ValidateLayerName(absl::string_view name) {
  if (name.empty()) return absl::InvalidArgumentError(absl::StrCat(kRule, "; got an empty name"));
  if (name.size() > kMaxLayerNameBytes) {
    return absl::InvalidArgumentError(absl::StrCat(kRule, "; got ", QuoteForMessage(name)));
  }
  for (size_t i = 0; i < name.size(); ++i) {
    if (!NameByte(name[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          kRule, "; got byte 0x", absl::Hex(static_cast<unsigned char>(name[i]), absl::kZeroPad2),
          " at offset ", i, " in ", QuoteForMessage(name)));
    }
  }
  return absl::OkStatus();
}

std::string QuoteForMessage(absl::string_view text) {
  if (text.size() <= kMaxQuotedBytes) return absl::StrCat("'", absl::CHexEscape(text), "'");
  return absl::StrCat("'", absl::CHexEscape(text.substr(0, kMaxQuotedBytes)), "'... (",
                      text.size(), " bytes)");
}

}  // namespace qlinear
