#include "server/log.h"

#include <errno.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/engine/catalog.h"
#include "nlohmann/json.hpp"

namespace qlinear {
namespace {

std::atomic<LogFormat> log_format{LogFormat::kText};

absl::Mutex sink_mu;
std::function<void(absl::string_view)>* test_sink ABSL_GUARDED_BY(sink_mu) = nullptr;

// Cut is `value` cut at kMaxLogValueBytes (on a UTF-8 boundary where there
// is one), and how many bytes were left out.
std::pair<absl::string_view, size_t> Cut(absl::string_view value) {
  if (value.size() <= kMaxLogValueBytes) return {value, 0};
  size_t cut = kMaxLogValueBytes;
  for (int back = 0; back < 3 && cut > 0 && (static_cast<unsigned char>(value[cut]) & 0xC0) == 0x80;
       ++back) {
    --cut;
  }
  return {value.substr(0, cut), value.size() - cut};
}

// DecodeUtf8 reads one well-formed UTF-8 sequence at s[i] (no overlong
// forms, no surrogates, at most U+10FFFF): its length, 0 when malformed.
size_t DecodeUtf8(absl::string_view s, size_t i, uint32_t* cp) {
  const auto b = [&](size_t j) { return static_cast<unsigned char>(s[j]); };
  const unsigned char c = b(i);
  size_t len;
  uint32_t min;
  if (c < 0x80) {
    *cp = c;
    return 1;
  } else if ((c & 0xE0) == 0xC0) {
    len = 2, min = 0x80, *cp = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    len = 3, min = 0x800, *cp = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    len = 4, min = 0x10000, *cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + len > s.size()) return 0;
  for (size_t j = 1; j < len; ++j) {
    if ((b(i + j) & 0xC0) != 0x80) return 0;
    *cp = (*cp << 6) | (b(i + j) & 0x3F);
  }
  if (*cp < min || *cp > 0x10FFFF || (*cp >= 0xD800 && *cp <= 0xDFFF)) return 0;
  return len;
}

// Characters a terminal or a log viewer would act on or hide: C1 controls,
// line and paragraph separators, bidirectional overrides and isolates.
bool Invisible(uint32_t cp) {
  return (cp >= 0x80 && cp <= 0x9F) || cp == 0x2028 || cp == 0x2029 ||
         (cp >= 0x202A && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069);
}

void AppendEscapedText(absl::string_view value, std::string* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (size_t i = 0; i < value.size();) {
    const unsigned char c = static_cast<unsigned char>(value[i]);
    if (c >= 0x20 && c < 0x7F) {
      if (c == '\\' || c == '"') out->push_back('\\');
      out->push_back(static_cast<char>(c));
      ++i;
      continue;
    }
    switch (c) {
      case '\n':
        out->append("\\n");
        ++i;
        continue;
      case '\r':
        out->append("\\r");
        ++i;
        continue;
      case '\t':
        out->append("\\t");
        ++i;
        continue;
      default:
        break;
    }
    uint32_t cp = 0;
    const size_t len = c < 0x80 ? 0 : DecodeUtf8(value, i, &cp);
    if (len == 0) {  // a C0 control, DEL, or a byte that is not UTF-8
      out->append("\\x");
      out->push_back(kHex[c >> 4]);
      out->push_back(kHex[c & 15]);
      ++i;
    } else if (Invisible(cp)) {
      out->append("\\u");
      for (int shift = 12; shift >= 0; shift -= 4) out->push_back(kHex[(cp >> shift) & 15]);
      i += len;
    } else {
      out->append(value.data() + i, len);
      i += len;
    }
  }
}

bool NeedsQuotes(absl::string_view v) {
  return v.empty() || v.find_first_of(" \"'=") != absl::string_view::npos;
}

void AppendTextValue(const LogValue& v, std::string* out) {
  switch (v.kind()) {
    case LogValue::Kind::kString:
      out->append(EscapeLogText(v.str()));
      return;
    case LogValue::Kind::kInt:
      absl::StrAppend(out, v.int_value());
      return;
    case LogValue::Kind::kUint:
      absl::StrAppend(out, v.uint_value());
      return;
    case LogValue::Kind::kBool:
      out->append(v.bool_value() ? "true" : "false");
      return;
  }
}

nlohmann::ordered_json JsonValue(const LogValue& v) {
  switch (v.kind()) {
    case LogValue::Kind::kString: {
      auto [kept, left_out] = Cut(v.str());
      std::string s(kept);
      if (left_out > 0) absl::StrAppend(&s, "...[", left_out, " more bytes]");
      return s;
    }
    case LogValue::Kind::kInt:
      return v.int_value();
    case LogValue::Kind::kUint:
      return v.uint_value();
    case LogValue::Kind::kBool:
      return v.bool_value();
  }
  return nullptr;
}

void WriteAll(absl::string_view line) {
  while (!line.empty()) {
    const ssize_t n = ::write(STDERR_FILENO, line.data(), line.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // nowhere to report it
    line.remove_prefix(static_cast<size_t>(n));
  }
}

}  // namespace

absl::string_view LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

bool ParseLogFormat(absl::string_view name, LogFormat* format) {
  if (name == "text") {
    *format = LogFormat::kText;
  } else if (name == "json") {
    *format = LogFormat::kJson;
  } else {
    return false;
  }
  return true;
}

void SetLogFormat(LogFormat format) { log_format.store(format, std::memory_order_relaxed); }
LogFormat GetLogFormat() { return log_format.load(std::memory_order_relaxed); }

void SetAccessLog(bool on) {
  log_internal::access_log_enabled.store(on, std::memory_order_relaxed);
}

std::string FormatLogTime(std::chrono::system_clock::time_point when) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(when.time_since_epoch()).count();
  time_t seconds = static_cast<time_t>(ms / 1000);
  long millis = static_cast<long>(ms % 1000);
  if (millis < 0) {  // before 1970: floor, not truncate
    millis += 1000;
    --seconds;
  }
  tm utc{};
  gmtime_r(&seconds, &utc);
  char buf[80];  // 24 in practice; room for what the compiler cannot rule out
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", utc.tm_year + 1900,
                utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, millis);
  return buf;
}

std::string EscapeLogText(absl::string_view value) {
  auto [kept, left_out] = Cut(value);
  std::string escaped;
  escaped.reserve(kept.size() + 2);
  AppendEscapedText(kept, &escaped);
  if (left_out > 0) absl::StrAppend(&escaped, "...[", left_out, " more bytes]");
  if (!NeedsQuotes(escaped)) return escaped;
  return absl::StrCat("\"", escaped, "\"");
}

std::string FormatLogLine(LogFormat format, std::chrono::system_clock::time_point when,
                          LogLevel level, absl::string_view event,
                          absl::Span<const LogField> fields) {
  if (format == LogFormat::kJson) {
    nlohmann::ordered_json j;
    j["ts"] = FormatLogTime(when);
    j["level"] = std::string(LogLevelName(level));
    j["event"] = std::string(event);
    for (const LogField& f : fields) j[std::string(f.first)] = JsonValue(f.second);
    std::string line = j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
    line.push_back('\n');
    return line;
  }
  std::string line = absl::StrCat(FormatLogTime(when), " ", LogLevelName(level), " ", event);
  for (const LogField& f : fields) {
    absl::StrAppend(&line, " ", f.first, "=");
    AppendTextValue(f.second, &line);
  }
  line.push_back('\n');
  return line;
}

void Log(LogLevel level, absl::string_view event, absl::Span<const LogField> fields) {
  const std::string line =
      FormatLogLine(GetLogFormat(), std::chrono::system_clock::now(), level, event, fields);
  absl::MutexLock lock(&sink_mu);
  if (test_sink != nullptr) {
    (*test_sink)(line);
  } else {
    WriteAll(line);
  }
}

void LogCatalogEvent(const CatalogEvent& event) {
  const std::string name = absl::StrCat("layer_", CatalogEventKindName(event.kind));
  const absl::string_view origin = OriginKindName(event.origin.kind);
  if (event.kind == CatalogEvent::Kind::kReplaced) {
    Log(LogLevel::kInfo, name,
        {{"name", event.name}, {"version", event.version}, {"bytes", event.bytes},
         {"origin", origin}, {"source", event.origin.source},
         {"replaced_version", event.replaced_version}});
  } else {
    Log(LogLevel::kInfo, name,
        {{"name", event.name}, {"version", event.version}, {"bytes", event.bytes},
         {"origin", origin}, {"source", event.origin.source}});
  }
}

void SetLogSinkForTest(std::function<void(absl::string_view line)> sink) {
  absl::MutexLock lock(&sink_mu);
  delete test_sink;
  test_sink = sink ? new std::function<void(absl::string_view)>(std::move(sink)) : nullptr;
}

}  // namespace qlinear
