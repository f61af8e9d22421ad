// Fuzz target: SafetensorsFile::Parse on arbitrary bytes (one whole file).
//
// Checks the contract of core/safetensors.h for every file it accepts:
// tensors sorted by name and unique, each span inside the data section with
// shape x dtype size == bytes, spans that neither overlap nor leave holes;
// and every accepted file's bytes are read (ASan catches a span past the
// copy). Seeds: the golden files' headers with small data sections (run.sh).
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/safetensors.h"
#include "fuzz/fuzz_input.h"

namespace qlinear::fuzz {
namespace {

void CheckFile(const SafetensorsFile& file, size_t input_size) {
  const auto& tensors = file.tensors();
  std::vector<std::pair<size_t, size_t>> spans;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorInfo& t = tensors[i];
    if (i > 0) FUZZ_CHECK(tensors[i - 1].name < t.name, "tensors not sorted and unique: " + t.name);
    FUZZ_CHECK(file.Find(t.name) == &t, "Find does not return the listed tensor " + t.name);
    int64_t elements = 1;
    for (int64_t d : t.shape) {
      FUZZ_CHECK(d >= 0, "negative dimension in " + t.name);
      elements *= d;
    }
    FUZZ_CHECK(static_cast<size_t>(elements) * DTypeSize(t.dtype) == t.size,
               absl::StrCat("shape x dtype size != bytes for ", t.name));
    FUZZ_CHECK(t.begin + t.size <= input_size && t.begin + t.size >= t.begin,
               "span past the input for " + t.name);
    absl::Span<const uint8_t> data = file.Data(t);
    FUZZ_CHECK(data.size() == t.size, "Data size differs from info for " + t.name);
    // Read every byte: a span past the copy is an ASan report.
    uint8_t acc = 0;
    for (uint8_t b : data) acc ^= b;
    volatile uint8_t sink = acc;
    (void)sink;
    if (t.size > 0) spans.emplace_back(t.begin, t.size);
  }
  std::sort(spans.begin(), spans.end());
  size_t end = 0;
  for (const auto& [begin, size] : spans) {
    FUZZ_CHECK(begin == end, absl::StrCat("data section has a hole or overlap at ", begin));
    end = begin + size;
  }
}

}  // namespace
}  // namespace qlinear::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = qlinear::SafetensorsFile::Parse(
      absl::string_view(reinterpret_cast<const char*>(data), size));
  if (file.ok()) {
    qlinear::fuzz::CheckFile(**file, size);
  } else {
    FUZZ_CHECK(file.status().code() == absl::StatusCode::kInvalidArgument,
               "Parse failed with a code other than INVALID_ARGUMENT: " + file.status().ToString());
    FUZZ_CHECK(!file.status().message().empty(), "Parse failed without a message");
  }
  return 0;
}
