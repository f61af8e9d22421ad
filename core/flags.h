// Flags: a small command-line parser for the qlinear CLI.
//
// Accepts "--name value", "--name=value" and bare boolean "--name"; every
// other word is a positional argument. Parse fails (INVALID_ARGUMENT naming
// the flag) on an unknown flag or a flag missing its value, so each
// subcommand can answer bad usage with exit status 2.
#ifndef QLINEAR_CORE_FLAGS_H_
#define QLINEAR_CORE_FLAGS_H_

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/quant_params.h"

namespace qlinear {

class Flags {
 public:
  // Parse reads argv[first..argc); `valued` names flags that take a value,
  // `boolean` those that don't.
  static absl::StatusOr<Flags> Parse(int argc, char** argv, int first,
                                     const std::set<std::string>& valued,
                                     const std::set<std::string>& boolean);

  std::optional<std::string> Get(const std::string& name) const;
  bool Has(const std::string& name) const;
  // GetInt returns nullopt when absent, INVALID_ARGUMENT when not an integer.
  absl::StatusOr<std::optional<int64_t>> GetInt(const std::string& name) const;
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
};

// ParseQuantFlags reads the optional --mode, --bits and --group-size flags
// (declared as valued by the caller). INVALID_ARGUMENT for an unknown mode or
// a non-integer or out-of-range number; the combination is validated by
// MakeQuantParams or by resolution against a file.
absl::StatusOr<PartialQuantParams> ParseQuantFlags(const Flags& flags);

}  // namespace qlinear

#endif  // QLINEAR_CORE_FLAGS_H_
