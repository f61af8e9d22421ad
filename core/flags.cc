#include "core/flags.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace qlinear {

absl::StatusOr<Flags> Flags::Parse(int argc, char** argv, int first,
                                   const std::set<std::string>& valued,
                                   const std::set<std::string>& boolean) {
  Flags flags;
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.size() < 3 || arg.compare(0, 2, "--") != 0) {
      flags.positional_.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (boolean.count(name)) {
      if (value) {
        return absl::InvalidArgumentError(
            absl::StrCat("flag --", name, " takes no value; got '", *value, "'"));
      }
      flags.values_[name] = "true";
    } else if (valued.count(name)) {
      if (!value) {
        if (i + 1 >= argc) {
          return absl::InvalidArgumentError(
              absl::StrCat("flag --", name, " needs a value"));
        }
        value = argv[++i];
      }
      flags.values_[name] = *value;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
  }
  return flags;
}

std::optional<std::string> Flags::Get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

bool Flags::Has(const std::string& name) const { return values_.count(name) > 0; }

absl::StatusOr<std::optional<int64_t>> Flags::GetInt(const std::string& name) const {
  auto value = Get(name);
  if (!value) return std::optional<int64_t>();
  int64_t out;
  if (!absl::SimpleAtoi(*value, &out)) {
    return absl::InvalidArgumentError(
        absl::StrCat("flag --", name, " needs an integer; got '", *value, "'"));
  }
  return std::optional<int64_t>(out);
}

absl::StatusOr<PartialQuantParams> ParseQuantFlags(const Flags& flags) {
  PartialQuantParams p;
  if (auto mode = flags.Get("mode")) {
    // Case-insensitive on the command line, like --dtype (files keep MLX's
    // exact spelling).
    auto parsed = ParseQuantMode(absl::AsciiStrToLower(*mode));
    if (!parsed.ok()) return parsed.status();
    p.mode = *parsed;
  }
  for (const char* name : {"bits", "group-size"}) {
    auto value = flags.GetInt(name);
    if (!value.ok()) return value.status();
    if (!*value) continue;
    // Range-checked before narrowing; the exact combination is validated later.
    if (**value < 1 || **value > 1024) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--", name, " must be a small positive integer; got ", **value));
    }
    (std::string(name) == "bits" ? p.bits : p.group_size) = static_cast<int>(**value);
  }
  return p;
}

}  // namespace qlinear
