// FuzzInput: how a fuzz target reads structure out of libFuzzer's bytes, and
// the one way a target reports a broken invariant.
//
// Inputs that stand for several things (files of a folder, messages of a
// stream) are their parts joined by kPartSeparator. A separator survives
// libFuzzer's byte mutations better than length prefixes (an inserted byte
// shifts one part, not every later boundary), and fuzz/qlinear.dict lists
// it so the mutator inserts it whole.
//
// FUZZ_CHECK(cond, what) aborts with `what` when cond is false: a target
// checks the contract a header states (an OK result satisfies it), not only
// that nothing crashed. An abort is a crash to libFuzzer.
//
// Thread safety: plain functions on borrowed bytes.
#ifndef QLINEAR_FUZZ_FUZZ_INPUT_H_
#define QLINEAR_FUZZ_FUZZ_INPUT_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace qlinear::fuzz {

inline constexpr absl::string_view kPartSeparator = "\n#qlf#\n";

// SplitParts returns the parts of `data` (at least one, possibly empty).
inline std::vector<absl::string_view> SplitParts(const uint8_t* data, size_t size) {
  absl::string_view all(reinterpret_cast<const char*>(data), size);
  return absl::StrSplit(all, kPartSeparator);
}

// JoinParts is SplitParts' inverse (the seed makers use it).
inline std::string JoinParts(const std::vector<std::string>& parts) {
  return absl::StrJoin(parts, kPartSeparator);
}

inline absl::Span<const uint8_t> Bytes(absl::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// ByteReader takes small integers off the front of a part; past the end it
// yields zeros, so every input decodes to something.
class ByteReader {
 public:
  explicit ByteReader(absl::string_view bytes) : bytes_(bytes) {}
  uint8_t U8() {
    if (pos_ >= bytes_.size()) return 0;
    return static_cast<uint8_t>(bytes_[pos_++]);
  }
  uint16_t U16() { return static_cast<uint16_t>(U8() | (U8() << 8)); }
  absl::string_view Rest() const { return bytes_.substr(std::min(pos_, bytes_.size())); }

 private:
  absl::string_view bytes_;
  size_t pos_ = 0;
};

[[noreturn]] inline void Fail(const char* file, int line, const char* cond, const std::string& what) {
  std::fprintf(stderr, "%s:%d: FUZZ_CHECK(%s) failed: %s\n", file, line, cond, what.c_str());
  std::abort();
}

#define FUZZ_CHECK(cond, what)                                      \
  do {                                                              \
    if (!(cond)) ::qlinear::fuzz::Fail(__FILE__, __LINE__, #cond, (what)); \
  } while (0)

}  // namespace qlinear::fuzz

#endif  // QLINEAR_FUZZ_FUZZ_INPUT_H_
