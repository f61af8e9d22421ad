// Settings: the one table of qlinear-server's settings — name, type,
// default, allowed range, help — from which flag parsing, the environment,
// `--help` and the flags table of docs/api.md all come (a test checks the
// document against FlagsMarkdown()).
//
// Every setting NAME is the flag --NAME (also --NAME=VALUE) and the
// environment variable QLINEAR_<NAME> (upper case, '-' as '_'); the flag
// wins. A repeatable setting (--model) takes a comma-separated list in the
// environment. A boolean flag takes no value; its environment variable is
// 1/true/yes or 0/false/no.
//
// Parse returns INVALID_ARGUMENT, one line naming the flag (or variable),
// the value and what is allowed, for an unknown flag, a missing value, a
// value out of range or of the wrong form (an address must be HOST:PORT
// with a numeric port): the server answers it with exit status 2.
//
// Thread safety: the table is immutable; a Settings value is a plain value.
#ifndef QLINEAR_SERVER_SETTINGS_H_
#define QLINEAR_SERVER_SETTINGS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace qlinear {

struct SettingSpec {
  enum class Type { kInt, kString, kAddress, kChoice, kBool, kList };
  const char* name;     // the flag without "--"
  Type type;
  const char* value;    // the value's name in --help, e.g. "N", "HOST:PORT"
  const char* fallback; // the default as text; "" = unset
  int64_t min = 0;      // kInt: the allowed range
  int64_t max = 0;
  const char* choices = "";  // kChoice: '|'-separated; kString: the items of a list, if any
  const char* help = "";
  // A default computed at start (`fallback` then describes it in words).
  int64_t (*computed)() = nullptr;
  // A check of the value beyond its type (e.g. --precisions' list), whose
  // message Parse prefixes with the flag or variable.
  absl::Status (*validate)(const std::string& value) = nullptr;
};

// ServerSettingSpecs is the table, in --help order.
const std::vector<SettingSpec>& ServerSettingSpecs();

// EnvName is QLINEAR_<NAME>: "max-batch-rows" -> "QLINEAR_MAX_BATCH_ROWS".
std::string EnvName(const SettingSpec& spec);

class Settings {
 public:
  // Parse reads argv[1..argc), then, for every setting no flag gave, the
  // environment through `getenv` (tests pass their own).
  static absl::StatusOr<Settings> Parse(
      int argc, char** argv,
      const std::function<const char*(const char*)>& getenv);

  // Typed reads of a setting of that type (its default when unset; Int of
  // an unset setting without a default is 0, String "").
  int64_t Int(const std::string& name) const;
  const std::string& String(const std::string& name) const;
  bool Bool(const std::string& name) const;
  const std::vector<std::string>& List(const std::string& name) const;
  // IsSet tells whether a flag or the environment gave the setting.
  bool IsSet(const std::string& name) const;
  // Source says where a setting came from: "--NAME", "QLINEAR_NAME" or
  // "default".
  std::string Source(const std::string& name) const;
  // Summary is "name=value" for every setting, for the start-up log.
  std::vector<std::pair<std::string, std::string>> Summary() const;

 private:
  struct Value {
    std::string text;
    std::vector<std::string> list;
    std::string source = "default";
    bool set = false;
  };
  const Value& Get(const std::string& name) const;
  std::map<std::string, Value> values_;
};

// HelpText is the usage message printed by --help and after a usage error.
std::string HelpText();

// FlagsMarkdown is the flags table of docs/api.md (between the markers
// "<!-- settings-table -->" and "<!-- /settings-table -->").
std::string FlagsMarkdown();

// DefaultMemoryMb is three quarters of physical memory: the default bound
// on what layers may hold, so no upload can push the host into the OOM
// killer.
int64_t DefaultMemoryMb();

}  // namespace qlinear

#endif  // QLINEAR_SERVER_SETTINGS_H_
