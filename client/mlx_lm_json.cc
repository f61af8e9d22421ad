#include "client/mlx_lm_json.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <utility>

#include "absl/strings/str_format.h"

namespace qlinear {
namespace {

using OJson = nlohmann::ordered_json;

std::string PyFloat(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  // Shortest round-trip digits, as repr() picks them; then repr's layout:
  // exponent form when the decimal point lies before -4 or past 16 digits.
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
  std::string s(buf, res.ptr);
  std::string sign;
  if (s[0] == '-') sign = "-", s.erase(0, 1);
  const size_t e = s.find('e');
  const int exp10 = std::stoi(s.substr(e + 1));
  std::string digits = s.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int point = exp10 + 1;  // digits before the decimal point
  const int n = static_cast<int>(digits.size());
  if (point > -4 && point <= 16) {
    if (point <= 0) return sign + "0." + std::string(-point, '0') + digits;
    if (point >= n) return sign + digits + std::string(point - n, '0') + ".0";
    return sign + digits.substr(0, point) + "." + digits.substr(point);
  }
  std::string mant = digits.substr(0, 1);
  if (n > 1) mant += "." + digits.substr(1);
  return absl::StrFormat("%s%se%c%02d", sign, mant, exp10 < 0 ? '-' : '+', std::abs(exp10));
}

void PyString(const std::string& s, std::string* out) {
  out->push_back('"');
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    uint32_t cp = c;
    int len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;  // nlohmann checked the UTF-8
    if (len > 1) cp = c & (0x7F >> len);
    for (int j = 1; j < len; ++j) cp = (cp << 6) | (static_cast<unsigned char>(s[i + j]) & 0x3F);
    i += len;
    static constexpr char kFrom[] = "\"\\\n\r\t\b\f", kTo[] = "\"\\nrtbf";
    if (const char* e = cp != 0 && cp < 0x80 ? std::strchr(kFrom, static_cast<int>(cp)) : nullptr) {
      *out += {'\\', kTo[e - kFrom]};
      continue;
    }
    if (cp >= 0x20 && cp < 0x7F) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x10000) {
      absl::StrAppendFormat(out, "\\u%04x", cp);
    } else {
      cp -= 0x10000;
      absl::StrAppendFormat(out, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
    }
  }
  out->push_back('"');
}

void PyDump(const OJson& j, int level, std::string* out) {
  const std::string inner(4 * (level + 1), ' '), outer(4 * level, ' ');
  switch (j.type()) {
    case OJson::value_t::object:
    case OJson::value_t::array: {
      const bool object = j.is_object();
      if (j.empty()) {
        *out += object ? "{}" : "[]";
        return;
      }
      *out += object ? "{" : "[";
      for (auto it = j.begin(); it != j.end(); ++it) {
        *out += (it == j.begin() ? "\n" : ",\n") + inner;
        if (object) {
          PyString(it.key(), out);
          *out += ": ";
        }
        PyDump(*it, level + 1, out);
      }
      *out += "\n" + outer + (object ? "}" : "]");
      return;
    }
    case OJson::value_t::string:
      PyString(j.get<std::string>(), out);
      return;
    case OJson::value_t::number_float:
      *out += PyFloat(j.get<double>());
      return;
    case OJson::value_t::boolean:
      *out += j.get<bool>() ? "true" : "false";
      return;
    case OJson::value_t::null:
      *out += "null";
      return;
    default:
      *out += j.dump();
      return;  // integers
  }
}

}  // namespace

std::string PyDumps(const OJson& j) {
  std::string out;
  PyDump(j, 0, &out);
  return out;
}

bool Truthy(const OJson& j) {
  if (j.is_null()) return false;
  if (j.is_boolean()) return j.get<bool>();
  if (j.is_number()) return j.get<double>() != 0;
  return !j.empty();  // strings, arrays, objects
}

OJson SortedByKey(const OJson& j) {
  std::map<std::string, OJson> sorted;  // Python's sorted(): code point = UTF-8 byte order
  for (auto it = j.begin(); it != j.end(); ++it) sorted[it.key()] = it.value();
  OJson out = OJson::object();
  for (auto& [key, value] : sorted) out[key] = std::move(value);
  return out;
}

}  // namespace qlinear
