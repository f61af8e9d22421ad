// Log: qlinear-server's event log — one line per event on stderr, as text
// or as JSON lines (--log-format), each with a timestamp (RFC 3339 UTC,
// milliseconds) and a level.
//
//   Log(LogLevel::kInfo, "layer_published", {{"name", name}, {"version", 3}});
//
// text: 2025-01-02T03:04:05.678Z info layer_published name=up_proj version=3
// json: {"ts":"2025-01-02T03:04:05.678Z","level":"info",
//        "event":"layer_published","name":"up_proj","version":3}
//
// Every string value may come from a client (layer names, request ids,
// reasons quoting them) and is escaped in both formats, so that no value
// can forge a line or a field:
//   - text: `\` and `"` become `\\` and `\"`; \n, \r, \t stay readable as
//     those escapes; other control characters (C0, DEL, C1), U+2028/U+2029
//     and the bidirectional overrides become \xHH or \uHHHH; bytes that are
//     not valid UTF-8 become \xHH. A value is quoted ("...") when it is
//     empty or holds a space, a quote or '='.
//   - json: nlohmann's encoder (control characters as \uHHHH); bytes that
//     are not valid UTF-8 are replaced by U+FFFD.
// A string value longer than kMaxLogValueBytes is cut there and says how
// many bytes were left out. Keys and event names are the server's own
// constants (lower_snake_case) and are written as they are.
//
// Thread safety: every function may be called from any thread. A line is
// formatted on the calling thread, then written with one write(2) under a
// mutex, so lines from different threads never interleave. Writing blocks
// when stderr does (as any synchronous log).
#ifndef QLINEAR_SERVER_LOG_H_
#define QLINEAR_SERVER_LOG_H_

#include <atomic>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>
#include <utility>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace qlinear {

struct CatalogEvent;  // core/engine/catalog.h

enum class LogLevel { kInfo, kWarning, kError };
enum class LogFormat { kText, kJson };

// LogLevelName returns "info", "warning" or "error".
absl::string_view LogLevelName(LogLevel level);

// ParseLogFormat maps "text" / "json" (the --log-format choices); false for
// anything else.
bool ParseLogFormat(absl::string_view name, LogFormat* format);

inline constexpr size_t kMaxLogValueBytes = 1024;

// LogValue is one field's value: a string (borrowed for the call), an
// integer or a bool.
class LogValue {
 public:
  enum class Kind { kString, kInt, kUint, kBool };

  LogValue(absl::string_view s) : kind_(Kind::kString), s_(s) {}  // NOLINT
  LogValue(const char* s) : kind_(Kind::kString), s_(s) {}        // NOLINT
  LogValue(const std::string& s) : kind_(Kind::kString), s_(s) {} // NOLINT
  LogValue(bool b) : kind_(Kind::kBool), u_(b ? 1 : 0) {}         // NOLINT
  template <std::signed_integral T>
  LogValue(T v) : kind_(Kind::kInt), i_(static_cast<int64_t>(v)) {}  // NOLINT
  template <std::unsigned_integral T>
  LogValue(T v) : kind_(Kind::kUint), u_(static_cast<uint64_t>(v)) {}  // NOLINT

  Kind kind() const { return kind_; }
  absl::string_view str() const { return s_; }
  int64_t int_value() const { return i_; }
  uint64_t uint_value() const { return u_; }
  bool bool_value() const { return u_ != 0; }

 private:
  Kind kind_;
  absl::string_view s_;
  int64_t i_ = 0;
  uint64_t u_ = 0;
};

using LogField = std::pair<absl::string_view, LogValue>;

// SetLogFormat chooses the format of every later line (default kText).
void SetLogFormat(LogFormat format);
LogFormat GetLogFormat();

// SetAccessLog turns the per-Forward access line on or off (default off).
// AccessLogEnabled is one relaxed atomic load: callers test it before
// building anything, so that nothing is formatted on the Forward path
// while it is off.
void SetAccessLog(bool on);
namespace log_internal {
inline std::atomic<bool> access_log_enabled{false};  // SetAccessLog writes it
}  // namespace log_internal
inline bool AccessLogEnabled() {
  return log_internal::access_log_enabled.load(std::memory_order_relaxed);
}

// Log writes one line: `event` with `fields`, in the current format, to
// stderr (or to the test sink).
void Log(LogLevel level, absl::string_view event, absl::Span<const LogField> fields);
inline void Log(LogLevel level, absl::string_view event, std::initializer_list<LogField> fields) {
  Log(level, event, absl::Span<const LogField>(fields.begin(), fields.size()));
}

// FormatLogLine is the line Log writes (with its '\n'), at time `when`.
std::string FormatLogLine(LogFormat format, std::chrono::system_clock::time_point when,
                          LogLevel level, absl::string_view event,
                          absl::Span<const LogField> fields);
inline std::string FormatLogLine(LogFormat format, std::chrono::system_clock::time_point when,
                                 LogLevel level, absl::string_view event,
                                 std::initializer_list<LogField> fields) {
  return FormatLogLine(format, when, level, event,
                       absl::Span<const LogField>(fields.begin(), fields.size()));
}

// FormatLogTime is `when` in RFC 3339, UTC, milliseconds:
// "2025-01-02T03:04:05.678Z".
std::string FormatLogTime(std::chrono::system_clock::time_point when);

// EscapeLogText is `value` as the text format writes it (quoted when
// needed, after cutting at kMaxLogValueBytes).
std::string EscapeLogText(absl::string_view value);

// SetLogSinkForTest sends every later line (with its '\n') to `sink`
// instead of stderr; an empty function restores stderr. For tests: the sink
// runs under the log's mutex, one line at a time, and must not log.
void SetLogSinkForTest(std::function<void(absl::string_view line)> sink);

// LogCatalogEvent logs one catalog change (the server's catalog listener):
// layer_published, layer_replaced (with replaced_version) or
// layer_unloaded, each with name, version, bytes, origin and source.
void LogCatalogEvent(const CatalogEvent& event);

}  // namespace qlinear

#endif  // QLINEAR_SERVER_LOG_H_
