// Every precision's bits, pinned: a digest (FNV-1a 64) of the outputs of
// every format in every precision, for inputs made by a generator of our
// own (no library distribution whose output could change), must equal the
// digest recorded in precision_digests.txt, on every SIMD target this CPU
// can run. So EXACT never changes by one bit, and INT8 and BF16 give the
// same bits on every CPU the test runs on (the file was written on an AMD
// Zen 5; run the test on an Intel CPU to compare there).
//
// After a deliberate change of arithmetic, rewrite the file with
//   QLINEAR_WRITE_DIGESTS=tests/core/kernels/precision_digests.txt build/tests/precision_digest_test
// and say why in the commit.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "core/half.h"
#include "core/kernels/qmm.h"
#include "core/quantize.h"

namespace qlinear {
namespace {

// splitmix64: the same numbers everywhere.
struct Generator {
  uint64_t state;
  uint64_t Next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [-1, 1), a multiple of 2^-23: exact in float32.
  float Uniform() { return static_cast<float>(static_cast<int64_t>(Next() >> 40) - (1 << 23)) * 0x1p-23f; }
};

uint64_t Fnv1a(const void* data, size_t bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

constexpr int64_t kN = 80, kK = 256, kRows = 9;

// Weights of a few magnitudes per row; inputs mixing magnitudes per group,
// with a zero group, a tiny group and one negative-dominated group.
std::vector<float> Weights(uint64_t seed) {
  Generator g{seed};
  std::vector<float> w(kN * kK);
  for (int64_t n = 0; n < kN; ++n) {
    const float scale = std::ldexp(1.0f, static_cast<int>(n % 7) - 5);
    for (int64_t k = 0; k < kK; ++k) w[n * kK + k] = scale * g.Uniform();
  }
  return w;
}

std::vector<float> Inputs(uint64_t seed) {
  Generator g{seed};
  std::vector<float> x(kRows * kK);
  for (int64_t m = 0; m < kRows; ++m) {
    for (int64_t k = 0; k < kK; ++k) {
      float v = g.Uniform() * std::ldexp(1.0f, static_cast<int>(g.Next() % 9) - 4);
      if (m == 1 && k < 32) v = 0.0f;
      if (m == 2 && k < 16) v *= 1e-30f;
      if (m == 3 && k < 64) v = -std::fabs(v) - 0.5f;
      x[m * kK + k] = v;
    }
  }
  return x;
}

std::string Key(const QuantParams& p, Precision precision) {
  return absl::StrCat(p.ToString(), " ", PrecisionName(precision));
}

std::map<std::string, std::string> Digests() {
  std::map<std::string, std::string> out;
  const std::vector<float> w = Weights(7), x = Inputs(11);
  std::vector<float> bias(kN);
  Generator g{13};
  for (float& b : bias) b = g.Uniform();
  for (const QuantParams& p : AllQuantParams()) {
    auto q = Quantize(p, DType::kF32, w.data(), kN, kK);
    EXPECT_TRUE(q.ok()) << q.status();
    if (!q.ok()) continue;
    const PackedMatrix packed = PackedMatrix::Pack(*q);
    for (Precision precision : {Precision::kExact, Precision::kInt8, Precision::kBf16}) {
      std::string digest;
      for (SimdTarget target : {SimdTarget::kPortable, SimdTarget::kAvx2, SimdTarget::kAvx512}) {
        if (!SimdTargetSupported(target)) continue;
        std::vector<float> y(kRows * kN);
        MatmulOptions options;
        options.target = target;
        options.precision = precision;
        QuantizedMatmul(packed, DType::kF32, x.data(), kRows, bias.data(), DType::kF32, y.data(),
                        options);
        char hex[17];
        std::snprintf(hex, sizeof hex, "%016llx",
                      static_cast<unsigned long long>(Fnv1a(y.data(), y.size() * 4)));
        if (digest.empty()) {
          digest = hex;
        } else {
          EXPECT_EQ(hex, digest) << Key(p, precision) << " on " << SimdTargetName(target)
                                 << " differs from the portable target";
        }
      }
      out[Key(p, precision)] = digest;
    }
  }
  return out;
}

// The recorded file in the source tree, or $QLINEAR_DIGESTS_FILE (a binary
// carried to another machine).
std::string RecordedPath() {
  if (const char* env = std::getenv("QLINEAR_DIGESTS_FILE")) return env;
  return std::string(QLINEAR_SOURCE_DIR) + "/tests/core/kernels/precision_digests.txt";
}

TEST(PrecisionDigestTest, EveryFormatAndPrecisionGivesTheRecordedBits) {
  const std::map<std::string, std::string> digests = Digests();
  ASSERT_EQ(digests.size(), AllQuantParams().size() * 3);
  if (const char* path = std::getenv("QLINEAR_WRITE_DIGESTS")) {
    std::ofstream out(path);
    out << "# precision_digest_test: FNV-1a 64 of y[" << kRows << ", " << kN << "], K = " << kK
        << "; written on one CPU, checked on every other.\n";
    for (const auto& [key, digest] : digests) out << key << " = " << digest << "\n";
    ASSERT_TRUE(out.good()) << path;
  }
  std::ifstream in(RecordedPath());
  ASSERT_TRUE(in.good()) << "cannot read " << RecordedPath();
  std::map<std::string, std::string> recorded;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t eq = line.find(" = ");
    ASSERT_NE(eq, std::string::npos) << "bad line in " << RecordedPath() << ": " << line;
    recorded[line.substr(0, eq)] = line.substr(eq + 3);
  }
  EXPECT_EQ(recorded.size(), digests.size());
  for (const auto& [key, digest] : digests) {
    auto it = recorded.find(key);
    ASSERT_NE(it, recorded.end()) << key << " is not recorded";
    EXPECT_EQ(digest, it->second) << key << ": this CPU (" << SimdTargetName(DefaultSimdTarget())
                                  << ", VNNI " << CpuHasVnni() << ", AVX512-BF16 "
                                  << CpuHasAvx512Bf16() << ") gives other bits";
  }
}

}  // namespace
}  // namespace qlinear
