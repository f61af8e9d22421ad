// Layer names, and how a string a client sent is quoted in a message.
//
// A layer name is 1 to kMaxLayerNameBytes bytes of [A-Za-z0-9._:/-]: enough
// for MLX module paths ("model.layers.0.self_attn.q_proj") and file-like
// names, and nothing a terminal, a log line or a metrics label could
// misread. The catalog refuses any other name at its one door, and the
// server checks names a request carries before it looks anything up or
// allocates for it.
//
// QuoteForMessage is the one way to put a client-given string (a name, a
// request id) into an error message or log reason: at most
// kMaxQuotedBytes of it, C-escaped, in single quotes, followed by its
// length when it was cut — so that a 40 MB name makes a short message.
//
// Thread safety: pure functions.
#ifndef QLINEAR_CORE_NAMES_H_
#define QLINEAR_CORE_NAMES_H_

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace qlinear {

inline constexpr size_t kMaxLayerNameBytes = 256;
inline constexpr size_t kMaxQuotedBytes = 64;

// ValidateLayerName returns OK for a valid layer name, else
// INVALID_ARGUMENT saying the rule and what came (quoted, with the first
// byte outside the rule and its offset, or the length).
absl::Status ValidateLayerName(absl::string_view name);

// QuoteForMessage returns 'text' with text C-escaped (absl::CHexEscape);
// for strings over kMaxQuotedBytes: the first kMaxQuotedBytes bytes, then
// "... (N bytes)".
std::string QuoteForMessage(absl::string_view text);

}  // namespace qlinear

#endif  // QLINEAR_CORE_NAMES_H_
