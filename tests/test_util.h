// Helpers shared by the test suites (core only: no gRPC).
#ifndef QLINEAR_TESTS_TEST_UTIL_H_
#define QLINEAR_TESTS_TEST_UTIL_H_

#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace qlinear {

// GoldenDir is ../shared/golden, or $QLINEAR_GOLDEN_DIR when set.
inline std::string GoldenDir() {
  const char* env = std::getenv("QLINEAR_GOLDEN_DIR");
  return env != nullptr ? env : QLINEAR_GOLDEN_DIR;
}

// MlxLmDir is ../shared/mlx-lm (mlx-lm model folders), or $QLINEAR_MLX_LM_DIR.
inline std::string MlxLmDir() {
  const char* env = std::getenv("QLINEAR_MLX_LM_DIR");
  return env != nullptr ? env : QLINEAR_MLX_LM_DIR;
}

// ReadFileBytes is the whole file at `path` (empty when it cannot be read).
inline std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

inline double MaxAbs(const std::vector<float>& v) {
  double m = 0;
  for (float f : v) m = std::max(m, static_cast<double>(std::abs(f)));
  return m;
}

// NormalisedError is max|got - want| / max|want| (per-element relative
// error is meaningless on outputs near zero); an all-zero reference must be
// matched exactly, so then it is the absolute error.
inline double NormalisedError(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    err = std::max(err, std::abs(static_cast<double>(got[i]) - want[i]));
  }
  const double scale = MaxAbs(want);
  return scale > 0 ? err / scale : err;
}

// ScopedTempDir is a fresh folder under TempDir(), removed with its contents.
class ScopedTempDir {
 public:
  explicit ScopedTempDir(absl::string_view prefix) {
    std::string tmpl = absl::StrCat(::testing::TempDir(), prefix, ".XXXXXX");
    char* made = mkdtemp(tmpl.data());
    EXPECT_NE(made, nullptr) << "mkdtemp failed for " << tmpl;
    path_ = tmpl;
  }
  ~ScopedTempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string File(absl::string_view name) const { return absl::StrCat(path_, "/", name); }

 private:
  std::string path_;
};

}  // namespace qlinear

#endif  // QLINEAR_TESTS_TEST_UTIL_H_
