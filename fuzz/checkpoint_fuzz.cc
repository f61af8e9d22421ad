// Fuzz target: the checkpoint reader (core/checkpoint.h) on a model folder
// built from the input.
//
// Input parts (fuzz_input.h): [0] config.json, [1]
// model.safetensors.index.json, [2...] the shards (an empty config or index
// part is left out; one shard is model.safetensors, several are
// model-0000i-of-0000n.safetensors, at most 3). An input of one part is a
// single .safetensors file with no config.json beside it. The files go to a
// folder under $TMPDIR (or /dev/shm when it exists) created once per process
// and rewritten for each input.
//
// Checks: Open fails only with INVALID_ARGUMENT or NOT_FOUND and a message;
// for an opened checkpoint every layer validates or fails with
// INVALID_ARGUMENT the same way Load does, and a loaded layer has the shape
// Open announced (and a bias of N values or none).
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/checkpoint.h"
#include "fuzz/fuzz_input.h"

namespace qlinear::fuzz {
namespace {

namespace fs = std::filesystem;

// At most this many layers are loaded per input (each may quantize a
// float weight).
constexpr size_t kMaxLoads = 8;

const fs::path& WorkDir() {
  static const fs::path dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    fs::path base = fs::exists("/dev/shm") ? fs::path("/dev/shm") : fs::path(tmp ? tmp : "/tmp");
    fs::path d = base / absl::StrCat("qlinear-checkpoint-fuzz-", getpid());
    fs::create_directories(d / "folder");
    fs::create_directories(d / "single");
    std::atexit([] { std::error_code ec; fs::remove_all(WorkDir(), ec); });
    return d;
  }();
  return dir;
}

void WriteFile(const fs::path& path, absl::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  FUZZ_CHECK(out.good(), "cannot write " + path.string());
}

void Clear(const fs::path& dir) {
  for (const auto& entry : fs::directory_iterator(dir)) fs::remove(entry.path());
}

// Prepare writes the input's files; returns the path to open.
std::string Prepare(const std::vector<absl::string_view>& parts) {
  const fs::path& work = WorkDir();
  if (parts.size() == 1) {
    Clear(work / "single");
    WriteFile(work / "single" / "layer.safetensors", parts[0]);
    return (work / "single" / "layer.safetensors").string();
  }
  const fs::path folder = work / "folder";
  Clear(folder);
  if (!parts[0].empty()) WriteFile(folder / "config.json", parts[0]);
  if (!parts[1].empty()) WriteFile(folder / "model.safetensors.index.json", parts[1]);
  const size_t shards = std::min<size_t>(parts.size() - 2, 3);
  for (size_t i = 0; i < shards; ++i) {
    const std::string name = shards == 1 ? "model.safetensors"
                                         : absl::StrCat("model-0000", i + 1, "-of-0000", shards,
                                                        ".safetensors");
    WriteFile(folder / name, parts[2 + i]);
  }
  return folder.string();
}

void ExpectCode(const absl::Status& status, absl::string_view what, bool not_found_ok) {
  const bool ok_code = status.code() == absl::StatusCode::kInvalidArgument ||
                       (not_found_ok && status.code() == absl::StatusCode::kNotFound);
  FUZZ_CHECK(ok_code, absl::StrCat(what, " failed with an unexpected code: ", status.ToString()));
  FUZZ_CHECK(!status.message().empty(), absl::StrCat(what, " failed without a message"));
}

void Run(const uint8_t* data, size_t size) {
  const std::vector<absl::string_view> parts = SplitParts(data, size);
  const std::string path = Prepare(parts);
  auto checkpoint = Checkpoint::Open(path);
  if (!checkpoint.ok()) {
    ExpectCode(checkpoint.status(), "Open", /*not_found_ok=*/true);
    return;
  }
  const Checkpoint& c = **checkpoint;
  for (const TensorInfo* t : c.tensors()) {
    FUZZ_CHECK(c.Find(t->name) == t, "Find does not return the listed tensor " + t->name);
    FUZZ_CHECK(c.Data(*t).size() == t->size, "Data size differs for " + t->name);
    (void)c.FileOf(*t);
  }
  size_t loads = 0;
  for (const CheckpointLayer& layer : c.layers()) {
    FUZZ_CHECK(layer.n > 0 && layer.k > 0, "layer " + layer.name + " has an empty shape");
    absl::Status valid = c.Validate(layer);
    if (!valid.ok()) ExpectCode(valid, "Validate " + layer.name, false);
    if (loads++ == kMaxLoads) break;
    auto loaded = c.Load(layer);
    if (!loaded.ok()) {
      ExpectCode(loaded.status(), "Load " + layer.name, false);
      FUZZ_CHECK(!valid.ok() || !layer.quantized,
                 "Validate passed but Load failed for " + layer.name + ": " +
                     loaded.status().ToString());
      continue;
    }
    FUZZ_CHECK(valid.ok() || !layer.quantized,
               "Validate failed but Load passed for " + layer.name + ": " + valid.ToString());
    FUZZ_CHECK(loaded->q.n == layer.n && loaded->q.k == layer.k,
               absl::StrCat("layer ", layer.name, " loaded as ", loaded->q.n, "x", loaded->q.k,
                            "; Open said ", layer.n, "x", layer.k));
    FUZZ_CHECK(loaded->bias.empty() || static_cast<int64_t>(loaded->bias.size()) == layer.n,
               "bias of " + layer.name + " has the wrong length");
    FUZZ_CHECK(loaded->q.params == layer.params, "loaded parameters differ for " + layer.name);
  }
}

}  // namespace
}  // namespace qlinear::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  qlinear::fuzz::Run(data, size);
  return 0;
}
