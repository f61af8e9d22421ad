// LayerStore: round trips, replacement, locking, damaged files, crashes.
#include "core/engine/layer_store.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/half.h"
#include "core/mlx_file.h"
#include "core/safetensors.h"
#include "tests/test_util.h"

namespace qlinear {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;
using ::testing::StartsWith;

// MakeLayer quantizes seeded random n x k weights of `dtype`.
LoadedLayer MakeLayer(const std::string& name, QuantParams params, DType dtype,
                      uint64_t seed, bool bias = false, bool report = false,
                      int64_t n = 8, int64_t k = 64) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<uint8_t> w(static_cast<size_t>(n * k) * DTypeSize(dtype));
  for (int64_t i = 0; i < n * k; ++i)
    StoreFloat(dtype, w.data(), static_cast<size_t>(i), normal(rng));
  LoadedLayer layer;
  layer.name = name;
  auto q = Quantize(params, dtype, w.data(), n, k);
  EXPECT_TRUE(q.ok()) << q.status();
  layer.q = *std::move(q);
  if (bias) {
    for (int64_t i = 0; i < n; ++i) layer.bias.push_back(normal(rng));
  }
  if (report) layer.report = ComputeErrorReport(layer.q, dtype, w.data());
  return layer;
}

void ExpectSameLayer(const LoadedLayer& got, const LoadedLayer& want) {
  EXPECT_EQ(got.name, want.name);
  EXPECT_EQ(got.q.params, want.q.params) << got.q.params.ToString();
  EXPECT_EQ(got.q.dtype, want.q.dtype) << DTypeName(got.q.dtype);
  EXPECT_EQ(got.q.n, want.q.n);
  EXPECT_EQ(got.q.k, want.q.k);
  EXPECT_EQ(got.q.wq, want.q.wq);
  EXPECT_EQ(got.q.scales, want.q.scales);
  EXPECT_EQ(got.q.biases, want.q.biases);
  ASSERT_EQ(got.bias.size(), want.bias.size());
  for (size_t i = 0; i < got.bias.size(); ++i) {
    EXPECT_EQ(std::memcmp(&got.bias[i], &want.bias[i], sizeof(float)), 0)
        << "bias " << i;
  }
  ASSERT_EQ(got.report.has_value(), want.report.has_value());
  if (want.report) {
    // Bit for bit: %.17g round-trips a double.
    EXPECT_EQ(got.report->max_abs, want.report->max_abs);
    EXPECT_EQ(got.report->rms, want.report->rms);
    EXPECT_EQ(got.report->rel_fro, want.report->rel_fro);
  }
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}


void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

std::unique_ptr<LayerStore> OpenOrDie(const std::string& dir) {
  auto store = LayerStore::Open(dir);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? *std::move(store) : nullptr;
}

LayerStore::Contents LoadOrDie(LayerStore& store) {
  auto contents = store.Load();
  EXPECT_TRUE(contents.ok()) << contents.status();
  return contents.ok() ? *std::move(contents) : LayerStore::Contents();
}

// RunChild runs `body` in a forked child and returns its wait status; the
// child reports through its exit code (never through gtest, which lives in
// the parent). The child's stderr goes to *stderr_text.
template <typename F>
int RunChild(F body, std::string* stderr_text = nullptr) {
  int pipe_fds[2];
  EXPECT_EQ(::pipe(pipe_fds), 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(pipe_fds[0]);
    ::dup2(pipe_fds[1], STDERR_FILENO);
    _exit(body());
  }
  ::close(pipe_fds[1]);
  std::string text;
  char buf[4096];
  for (ssize_t got; (got = ::read(pipe_fds[0], buf, sizeof(buf))) > 0;)
    text.append(buf, got);
  ::close(pipe_fds[0]);
  int status = 0;
  EXPECT_EQ(::waitpid(pid, &status, 0), pid);
  if (stderr_text != nullptr) *stderr_text = text;
  return status;
}

const QuantParams kAffine4{QuantMode::kAffine, 4, 64};
const QuantParams kMxfp4{QuantMode::kMxfp4, 4, 32};
const QuantParams kNvfp4{QuantMode::kNvfp4, 4, 16};
const QuantParams kMxfp8{QuantMode::kMxfp8, 8, 32};

TEST(LayerStoreTest, RoundTripsEveryModeAndAnyName) {
  ScopedTempDir dir("layer_store");
  std::string long_name;
  for (int i = 0; i < 5000; ++i)
    long_name.push_back(static_cast<char>('a' + i % 26));
  const std::vector<LoadedLayer> layers = {
      MakeLayer("model.layers.0/mlp up proj", kAffine4, DType::kF16, 1,
                /*bias=*/true,
                /*report=*/true),
      MakeLayer("caf\xc3\xa9/\xe5\x90\x8d\xe5\x89\x8d \xf0\x9f\x98\x80", kMxfp4,
                DType::kF32, 2,
                /*bias=*/true),
      MakeLayer("with spaces and / slashes", kNvfp4, DType::kBF16, 3, false,
                /*report=*/true),
      MakeLayer(long_name, kMxfp8, DType::kF32, 4),
      MakeLayer("affine3", {QuantMode::kAffine, 3, 32}, DType::kBF16, 5, true,
                true, 4, 128),
  };
  {
    auto store = OpenOrDie(dir.path());
    ASSERT_NE(store, nullptr);
    EXPECT_THAT(LoadOrDie(*store).layers, IsEmpty());
    for (size_t i = 0; i < layers.size(); ++i) {
      ASSERT_TRUE(store->Put(layers[i], 10 + i).ok())
          << layers[i].name.substr(0, 40);
    }
    const std::string file = store->FileOf(layers[0].name);
    EXPECT_EQ(
        file,
        dir.File(
            "L00000000000000000010-model.layers.0_mlp_up_proj.safetensors"));
    // The slug keeps 48 bytes of the name; the version keeps it unique.
    EXPECT_EQ(store->FileOf(long_name),
              dir.File(absl::StrCat("L00000000000000000013-",
                                    long_name.substr(0, 48), ".safetensors")));
    EXPECT_EQ(store->FileOf("absent"), "");

    // The file is an MLX file a plain reader understands, and its checksum
    // can be recomputed from the tensors in name order.
    auto f = SafetensorsFile::Open(file);
    ASSERT_TRUE(f.ok()) << f.status();
    const auto& meta = (*f)->metadata();
    EXPECT_EQ(meta.at("format"), "mlx");
    EXPECT_EQ(meta.at("quantization"), QuantizationConfig::ToJson(kAffine4));
    EXPECT_EQ(meta.at("qlinear.name"), layers[0].name);
    EXPECT_EQ(meta.at("qlinear.version"), "10");
    EXPECT_EQ(meta.at("qlinear.dtype"), "F16");
    EXPECT_THAT(meta.at("qlinear.error_report"), StartsWith("{\"max_abs\":"));
    std::vector<std::string> names;
    uint64_t h = 0xcbf29ce484222325ull;
    for (const TensorInfo& t : (*f)->tensors()) {  // sorted by name
      names.push_back(t.name);
      for (uint8_t b : (*f)->Data(t)) h = (h ^ b) * 0x100000001b3ull;
    }
    const std::string& p = layers[0].name;
    EXPECT_THAT(names, ElementsAre(p + ".bias", p + ".biases", p + ".scales",
                                   p + ".weight"));
    EXPECT_EQ(meta.at("qlinear.checksum"), absl::StrFormat("%016x", h));
    EXPECT_EQ((*f)->Find(p + ".weight")->dtype, DType::kU32);
    EXPECT_EQ((*f)->Find(p + ".weight")->ShapeString(), "[8, 8]");
    EXPECT_EQ((*f)->Find(p + ".scales")->dtype, DType::kF16);
    EXPECT_EQ((*f)->Find(p + ".bias")->ShapeString(), "[8]");
  }
  auto store = OpenOrDie(dir.path());
  ASSERT_NE(store, nullptr);
  const LayerStore::Contents contents = LoadOrDie(*store);
  EXPECT_THAT(contents.problems, IsEmpty());
  EXPECT_EQ(contents.max_version, 14u);
  ASSERT_THAT(contents.layers, SizeIs(layers.size()));
  for (size_t i = 1; i < contents.layers.size(); ++i) {
    EXPECT_LT(contents.layers[i - 1].layer.name, contents.layers[i].layer.name);
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerStore::StoredLayer* got = nullptr;
    for (const auto& s : contents.layers) {
      if (s.layer.name == layers[i].name) got = &s;
    }
    ASSERT_NE(got, nullptr) << layers[i].name.substr(0, 40);
    SCOPED_TRACE(layers[i].name.substr(0, 40));
    ExpectSameLayer(got->layer, layers[i]);
    EXPECT_EQ(got->version, 10 + i);
    EXPECT_EQ(got->file, store->FileOf(layers[i].name));
  }
}

TEST(LayerStoreTest, PutOfANewVersionReplacesTheOldFile) {
  ScopedTempDir dir("layer_store");
  auto store = OpenOrDie(dir.path());
  ASSERT_NE(store, nullptr);
  LoadOrDie(*store);
  ASSERT_TRUE(store->Put(MakeLayer("a", kAffine4, DType::kF32, 1), 1).ok());
  ASSERT_TRUE(store->Put(MakeLayer("b", kMxfp4, DType::kF32, 2), 2).ok());
  const LoadedLayer newer = MakeLayer("a", kNvfp4, DType::kF32, 3, true);
  ASSERT_TRUE(store->Put(newer, 3).ok());
  EXPECT_THAT(ListDir(dir.path()),
              ElementsAre("L00000000000000000002-b.safetensors",
                          "L00000000000000000003-a.safetensors", "LOCK"));
  const LayerStore::Contents contents = LoadOrDie(*store);
  EXPECT_THAT(contents.problems, IsEmpty());
  ASSERT_THAT(contents.layers, SizeIs(2));
  ExpectSameLayer(contents.layers[0].layer, newer);
  EXPECT_EQ(contents.layers[0].version, 3u);
}

TEST(LayerStoreTest, RemoveDeletesTheFileAndIsOkWhenAbsent) {
  ScopedTempDir dir("layer_store");
  auto store = OpenOrDie(dir.path());
  ASSERT_NE(store, nullptr);
  LoadOrDie(*store);
  ASSERT_TRUE(store->Put(MakeLayer("a", kAffine4, DType::kF32, 1), 1).ok());
  ASSERT_TRUE(store->Put(MakeLayer("b", kAffine4, DType::kF32, 2), 2).ok());
  EXPECT_TRUE(store->Remove("a").ok());
  EXPECT_EQ(store->FileOf("a"), "");
  EXPECT_TRUE(store->Remove("a").ok());
  EXPECT_TRUE(store->Remove("never-stored").ok());
  EXPECT_THAT(ListDir(dir.path()),
              ElementsAre("L00000000000000000002-b.safetensors", "LOCK", "VERSION"));
  store.reset();
  store = OpenOrDie(dir.path());
  LayerStore::Contents contents = LoadOrDie(*store);
  ASSERT_THAT(contents.layers, SizeIs(1));
  EXPECT_EQ(contents.layers[0].layer.name, "b");
  EXPECT_EQ(contents.max_version, 2u);
  // Removing the newest layer keeps its version taken after a restart.
  EXPECT_TRUE(store->Remove("b").ok());
  store.reset();
  store = OpenOrDie(dir.path());
  contents = LoadOrDie(*store);
  EXPECT_THAT(contents.layers, IsEmpty());
  EXPECT_THAT(contents.problems, IsEmpty());
  EXPECT_EQ(contents.max_version, 2u);
}

TEST(LayerStoreTest, OpenCreatesMissingFoldersAndWritesThePid) {
  ScopedTempDir dir("layer_store");
  const std::string nested = dir.File("a/b/c/");
  auto store = OpenOrDie(nested);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(ReadFileBytes(dir.File("a/b/c/LOCK")), absl::StrCat(getpid(), "\n"));
  WriteFile(dir.File("file"), "x");
  auto not_dir = LayerStore::Open(dir.File("file/sub"));
  EXPECT_FALSE(not_dir.ok());
}

TEST(LayerStoreTest, ASecondOpenFailsNamingTheHolderUntilTheFirstIsGone) {
  ScopedTempDir dir("layer_store");
  auto first = OpenOrDie(dir.path());
  ASSERT_NE(first, nullptr);
  // flock is per open file description: the same process conflicts too.
  auto second = LayerStore::Open(dir.path());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(second.status().message(),
            absl::StrCat("state dir '", dir.path(),
                         "' is in use by another qlinear-server (pid ",
                         getpid(), ")"));
  // Another process sees the same, and leaves the holder's pid in LOCK.
  const int child = RunChild([&] {
    auto s = LayerStore::Open(dir.path());
    return !s.ok() &&
                   s.status().code() == absl::StatusCode::kFailedPrecondition &&
                   absl::StrContains(s.status().message(),
                                     absl::StrCat("(pid ", getppid(), ")"))
               ? 0
               : 1;
  });
  EXPECT_TRUE(WIFEXITED(child) && WEXITSTATUS(child) == 0) << child;
  EXPECT_EQ(ReadFileBytes(dir.File("LOCK")), absl::StrCat(getpid(), "\n"));
  first.reset();
  auto third = LayerStore::Open(dir.path());
  EXPECT_TRUE(third.ok()) << third.status();
}

TEST(LayerStoreTest, DamagedAndForeignFilesAreReportedAndTheRestLoads) {
  ScopedTempDir dir("layer_store");
  const LoadedLayer good =
      MakeLayer("good", kAffine4, DType::kF16, 1, true, true);
  std::string truncated, flipped;
  {
    auto store = OpenOrDie(dir.path());
    ASSERT_NE(store, nullptr);
    LoadOrDie(*store);
    ASSERT_TRUE(
        store->Put(MakeLayer("truncated", kAffine4, DType::kF32, 2), 1).ok());
    ASSERT_TRUE(store->Put(good, 2).ok());
    ASSERT_TRUE(
        store->Put(MakeLayer("flipped", kMxfp4, DType::kF32, 3), 3).ok());
    truncated = store->FileOf("truncated");
    flipped = store->FileOf("flipped");
  }
  const std::string t = ReadFileBytes(truncated);
  WriteFile(truncated, t.substr(0, t.size() - 5));
  std::string f = ReadFileBytes(flipped);
  f.back() ^=
      0x01;  // inside the last tensor, .weight: only the checksum can tell
  WriteFile(flipped, f);
  WriteFile(dir.File("notes.txt"), "hello");

  auto store = OpenOrDie(dir.path());
  ASSERT_NE(store, nullptr);
  const LayerStore::Contents contents = LoadOrDie(*store);
  ASSERT_THAT(contents.layers, SizeIs(1));
  ExpectSameLayer(contents.layers[0].layer, good);
  ASSERT_THAT(contents.problems, SizeIs(3));
  // Sorted by file name: L...1, L...3, notes.txt.
  EXPECT_THAT(contents.problems[0], StartsWith(truncated + ": "));
  EXPECT_THAT(contents.problems[0], HasSubstr("safetensors"));
  EXPECT_THAT(contents.problems[1], StartsWith(flipped + ": "));
  EXPECT_THAT(contents.problems[1], HasSubstr("checksum"));
  EXPECT_EQ(contents.problems[2],
            dir.File("notes.txt") + ": not a qlinear layer file");
  EXPECT_EQ(contents.max_version, 3u);
  // Left on disk for the operator.
  EXPECT_THAT(ListDir(dir.path()), SizeIs(5));
}

TEST(LayerStoreTest, OfTwoCopiesTheHigherVersionWinsAndTheOtherIsRemoved) {
  ScopedTempDir dir("layer_store");
  const LoadedLayer newer = MakeLayer("a", kMxfp8, DType::kBF16, 2, true, true);
  std::string old_file, old_bytes;
  {
    auto store = OpenOrDie(dir.path());
    ASSERT_NE(store, nullptr);
    LoadOrDie(*store);
    ASSERT_TRUE(store->Put(MakeLayer("a", kAffine4, DType::kF32, 1), 5).ok());
    old_file = store->FileOf("a");
    old_bytes = ReadFileBytes(old_file);
    ASSERT_TRUE(store->Put(newer, 9).ok());
  }
  // As if the Put had died between its rename and removing the old file.
  WriteFile(old_file, old_bytes);
  ASSERT_THAT(ListDir(dir.path()), SizeIs(3));
  auto store = OpenOrDie(dir.path());
  ASSERT_NE(store, nullptr);
  const LayerStore::Contents contents = LoadOrDie(*store);
  EXPECT_THAT(contents.problems, IsEmpty());
  ASSERT_THAT(contents.layers, SizeIs(1));
  ExpectSameLayer(contents.layers[0].layer, newer);
  EXPECT_EQ(contents.layers[0].version, 9u);
  EXPECT_EQ(contents.max_version, 9u);
  EXPECT_THAT(ListDir(dir.path()),
              ElementsAre("L00000000000000000009-a.safetensors", "LOCK"));
}

TEST(LayerStoreTest, AFileWhoseNameDisagreesWithItsMetadataIsAProblem) {
  ScopedTempDir dir("layer_store");
  const LoadedLayer layer = MakeLayer("a", kAffine4, DType::kF32, 1);
  {
    auto store = OpenOrDie(dir.path());
    ASSERT_NE(store, nullptr);
    LoadOrDie(*store);
    ASSERT_TRUE(store->Put(layer, 4).ok());
  }
  const std::string renamed = dir.File("L00000000000000000008-a.safetensors");
  WriteFile(renamed, ReadFileBytes(dir.File("L00000000000000000004-a.safetensors")));
  WriteFile(dir.File("Lnot-a-version.safetensors"), "x");
  auto store = OpenOrDie(dir.path());
  ASSERT_NE(store, nullptr);
  const LayerStore::Contents contents = LoadOrDie(*store);
  ASSERT_THAT(contents.problems, SizeIs(2));
  EXPECT_THAT(contents.problems[0],
              StartsWith(renamed + ": qlinear.version '4'"));
  EXPECT_THAT(contents.problems[1],
              HasSubstr("Lnot-a-version.safetensors: the file name"));
  ASSERT_THAT(contents.layers, SizeIs(1));
  ExpectSameLayer(contents.layers[0].layer, layer);
  EXPECT_EQ(contents.layers[0].version, 4u);
  EXPECT_EQ(contents.max_version, 8u);
}

TEST(LayerStoreTest, OpenRemovesLeftoverTemporaries) {
  ScopedTempDir dir("layer_store");
  {
    auto store = OpenOrDie(dir.path());
    ASSERT_NE(store, nullptr);
    LoadOrDie(*store);
    ASSERT_TRUE(store->Put(MakeLayer("a", kAffine4, DType::kF32, 1), 1).ok());
  }
  WriteFile(dir.File("L00000000000000000002-a.safetensors.tmp"), "torn");
  WriteFile(dir.File("L00000000000000000003-b.safetensors.tmp.tmp.123.456"),
            "torn too");
  auto store = OpenOrDie(dir.path());
  ASSERT_NE(store, nullptr);
  EXPECT_THAT(ListDir(dir.path()),
              ElementsAre("L00000000000000000001-a.safetensors", "LOCK"));
  const LayerStore::Contents contents = LoadOrDie(*store);
  EXPECT_THAT(contents.problems, IsEmpty());
  EXPECT_THAT(contents.layers, SizeIs(1));
}

TEST(LayerStoreTest, AStrayConfigJsonChangesNothing) {
  ScopedTempDir dir("layer_store");
  auto store = OpenOrDie(dir.path());
  ASSERT_NE(store, nullptr);
  LoadOrDie(*store);
  const LoadedLayer layer = MakeLayer("a", kAffine4, DType::kF32, 1);
  ASSERT_TRUE(store->Put(layer, 1).ok());
  WriteFile(dir.File("config.json"), "{not json");
  store.reset();
  store = OpenOrDie(dir.path());
  const LayerStore::Contents contents = LoadOrDie(*store);
  ASSERT_THAT(contents.layers, SizeIs(1));
  ExpectSameLayer(contents.layers[0].layer, layer);
  ASSERT_THAT(contents.problems, SizeIs(1));  // named as foreign, nothing more
  EXPECT_THAT(contents.problems[0], HasSubstr("config.json: not a qlinear layer file"));
}

TEST(LayerStoreTest, MaxVersionCountsEveryLayerFile) {
  ScopedTempDir dir("layer_store");
  auto store = OpenOrDie(dir.path());
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(LoadOrDie(*store).max_version, 0u);
  ASSERT_TRUE(store->Put(MakeLayer("a", kAffine4, DType::kF32, 1), 7).ok());
  ASSERT_TRUE(store->Put(MakeLayer("b", kAffine4, DType::kF32, 2), 3).ok());
  EXPECT_EQ(LoadOrDie(*store).max_version, 7u);
  // A damaged file still holds its version's name: a new one must not reuse it.
  WriteFile(dir.File("L00000000000000000042-x.safetensors"), "garbage");
  const LayerStore::Contents contents = LoadOrDie(*store);
  EXPECT_EQ(contents.max_version, 42u);
  EXPECT_THAT(contents.problems, SizeIs(1));
  EXPECT_THAT(contents.layers, SizeIs(2));
}

TEST(LayerStoreTest, PutRejectsBadInputWithoutTouchingTheDisk) {
  ScopedTempDir dir("layer_store");
  auto store = OpenOrDie(dir.path());
  ASSERT_NE(store, nullptr);
  LoadOrDie(*store);
  absl::Status s =
      store->Put(MakeLayer("bad\xff", kAffine4, DType::kF32, 1), 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  LoadedLayer wrong_bias = MakeLayer("b", kAffine4, DType::kF32, 1);
  wrong_bias.bias = {1.0f, 2.0f};
  s = store->Put(wrong_bias, 2);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(ListDir(dir.path()), ElementsAre("LOCK"));
}

TEST(LayerStoreTest,
     PutPastTheFileSizeLimitIsResourceExhaustedAndChangesNothing) {
  ScopedTempDir dir("layer_store");
  const LoadedLayer old = MakeLayer("a", kAffine4, DType::kF32, 1);
  {
    auto store = OpenOrDie(dir.path());
    ASSERT_NE(store, nullptr);
    LoadOrDie(*store);
    ASSERT_TRUE(store->Put(old, 1).ok());
  }
  const std::vector<std::string> before = ListDir(dir.path());
  std::string err;
  // In a child, so that the limit and the ignored SIGXFSZ stay there.
  const int status = RunChild(
      [&] {
        auto store = LayerStore::Open(dir.path());
        if (!store.ok() || !(*store)->Load().ok()) return 2;
        ::signal(SIGXFSZ, SIG_IGN);
        const struct rlimit limit = {512, 512};
        if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) return 3;
        const LoadedLayer big =
            MakeLayer("a", kAffine4, DType::kF32, 2, true, true, 64, 256);
        const absl::Status s = (*store)->Put(big, 2);
        std::fprintf(stderr, "%s\n", s.ToString().c_str());
        if (s.code() != absl::StatusCode::kResourceExhausted) return 4;
        const absl::string_view m = s.message();
        if (!absl::StrContains(m,
                               absl::StrCat("state dir '", dir.path(), "'")) ||
            !absl::StrContains(m, "layer 'a'") ||
            !absl::StrContains(m, "L00000000000000000002-a.safetensors") ||
            !absl::StrContains(m, "File too large")) {
          return 5;
        }
        return 0;
      },
      &err);
  ASSERT_TRUE(WIFEXITED(status)) << status << " " << err;
  EXPECT_EQ(WEXITSTATUS(status), 0) << err;
  EXPECT_EQ(ListDir(dir.path()), before);
  auto store = OpenOrDie(dir.path());
  ASSERT_NE(store, nullptr);
  const LayerStore::Contents contents = LoadOrDie(*store);
  EXPECT_THAT(contents.problems, IsEmpty());
  ASSERT_THAT(contents.layers, SizeIs(1));
  ExpectSameLayer(contents.layers[0].layer, old);
  EXPECT_EQ(contents.layers[0].version, 1u);
}

struct CrashCase {
  const char* point;
  bool remove;        // crash in Remove instead of Put
  bool expect_newer;  // which version Load must find (for Remove: whether any
                      // remains)
  size_t files;       // layer files on disk before Load resolves them
};

class LayerStoreCrashTest : public ::testing::TestWithParam<CrashCase> {};

TEST_P(LayerStoreCrashTest, ACrashLeavesTheOldOrTheNewLayerNeverATornOne) {
  const CrashCase& c = GetParam();
  ScopedTempDir dir("layer_store");
  const LoadedLayer old =
      MakeLayer("layer/0", kAffine4, DType::kF16, 1, true, true);
  const LoadedLayer newer = MakeLayer("layer/0", kNvfp4, DType::kF32, 2, true);
  {
    auto store = OpenOrDie(dir.path());
    ASSERT_NE(store, nullptr);
    LoadOrDie(*store);
    ASSERT_TRUE(store->Put(old, 1).ok());
  }  // released: the child takes the lock
  std::string err;
  const int status = RunChild(
      [&] {
        ::setenv("QLINEAR_CRASH_AT", c.point, 1);
        auto store = LayerStore::Open(dir.path());
        if (!store.ok() || !(*store)->Load().ok()) return 2;
        const absl::Status s =
            c.remove ? (*store)->Remove(old.name) : (*store)->Put(newer, 2);
        return s.ok() ? 3 : 4;  // either way: it should have died
      },
      &err);
  ASSERT_TRUE(WIFSIGNALED(status)) << "status " << status << ": " << err;
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
  EXPECT_THAT(err, HasSubstr(c.point));

  size_t layer_files = 0;
  for (const std::string& name : ListDir(dir.path()))
    layer_files += name != "LOCK";
  EXPECT_EQ(layer_files, c.files);
  auto store = OpenOrDie(dir.path());
  ASSERT_NE(store, nullptr);
  const LayerStore::Contents contents = LoadOrDie(*store);
  EXPECT_THAT(contents.problems, IsEmpty());
  EXPECT_THAT(ListDir(dir.path()), SizeIs(2));  // one layer file + LOCK
  ASSERT_THAT(contents.layers, SizeIs(1));
  const LayerStore::StoredLayer& got = contents.layers[0];
  if (c.expect_newer) {
    ExpectSameLayer(got.layer, newer);
    EXPECT_EQ(got.version, 2u);
  } else {
    ExpectSameLayer(got.layer, old);
    EXPECT_EQ(got.version, 1u);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Points, LayerStoreCrashTest,
    ::testing::Values(CrashCase{"store-after-temp", false, false,
                                2},  // old + .tmp
                      CrashCase{"store-after-rename", false, true, 2},
                      CrashCase{"store-after-remove-old", false, true, 1},
                      CrashCase{"store-before-remove", true, false, 1}),
    [](const auto& info) {
      std::string name = info.param.point;
      for (char& ch : name) {
        if (ch == '-') ch = '_';
      }
      return name;
    });

TEST(CrashPointTest, IsANoOpUnlessTheVariableNamesThePoint) {
  ::unsetenv("QLINEAR_CRASH_AT");
  CrashPoint("store-after-temp");
  ::setenv("QLINEAR_CRASH_AT", "store-after-rename", 1);
  CrashPoint("store-after-temp");
  CrashPoint("store-after-rename-but-longer");
  ::unsetenv("QLINEAR_CRASH_AT");
  SUCCEED();
}

}  // namespace
}  // namespace qlinear
