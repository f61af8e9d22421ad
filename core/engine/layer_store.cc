#include "core/engine/layer_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "core/mlx_file.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace qlinear {
namespace {

using Json = nlohmann::json;

constexpr char kLockFile[] = "LOCK";
// The largest version of a layer that was removed: a version handed out
// once must not come back after its file is gone.
constexpr char kVersionFile[] = "VERSION";
constexpr char kSuffix[] = ".safetensors";
constexpr size_t kVersionDigits = 20;  // UINT64_MAX has 20 digits
constexpr size_t kSlugBytes = 48;

absl::StatusCode ErrnoCode(int err) {
  switch (err) {
    case ENOENT:
      return absl::StatusCode::kNotFound;
    case EACCES:
    case EPERM:
      return absl::StatusCode::kPermissionDenied;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return absl::StatusCode::kResourceExhausted;
    default:
      return absl::StatusCode::kInternal;
  }
}

// ErrnoStatus reads errno itself so callers cannot pass a stale one.
absl::Status ErrnoStatus(absl::string_view what) {
  const int err = errno;
  return absl::Status(ErrnoCode(err),
                      absl::StrCat(what, ": ", std::strerror(err)));
}

std::string Join(const std::string& dir, absl::string_view name) {
  if (!dir.empty() && dir.back() == '/') return absl::StrCat(dir, name);
  return absl::StrCat(dir, "/", name);
}

absl::Status SyncDir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return ErrnoStatus(absl::StrCat("cannot open state dir '", dir, "'"));
  absl::Status status;
  if (::fsync(fd) != 0)
    status = ErrnoStatus(absl::StrCat("cannot fsync state dir '", dir, "'"));
  ::close(fd);
  return status;
}

// WriteVersionFile records `version` durably: a temporary, fsync, rename,
// fsync of the folder.
absl::Status WriteVersionFile(const std::string& dir, uint64_t version) {
  const std::string path = Join(dir, kVersionFile);
  const std::string tmp = path + ".tmp";
  const std::string text = absl::StrCat(version, "\n");
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(absl::StrCat("cannot write '", tmp, "'"));
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
                  ::fsync(fd) == 0;
  const int err = errno;
  ::close(fd);
  if (!ok) {
    ::unlink(tmp.c_str());
    errno = err;
    return ErrnoStatus(absl::StrCat("cannot write '", tmp, "'"));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return ErrnoStatus(absl::StrCat("cannot rename '", tmp, "'"));
  }
  return SyncDir(dir);
}

// MakeDirs is `mkdir -p`: every missing component is created.
absl::Status MakeDirs(const std::string& dir) {
  if (dir.empty())
    return absl::InvalidArgumentError("the state dir path is empty");
  for (size_t pos = dir.find('/', 1);; pos = dir.find('/', pos + 1)) {
    const std::string prefix = dir.substr(0, pos);
    if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      return ErrnoStatus(
          absl::StrCat("cannot create state dir '", prefix, "'"));
    }
    if (pos == std::string::npos) break;
  }
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) {
    return ErrnoStatus(absl::StrCat("cannot stat state dir '", dir, "'"));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("state dir '", dir, "' exists and is not a folder"));
  }
  return absl::OkStatus();
}

struct DirEntry {
  std::string name;
  bool regular = false;
};

// ListDir returns the entries of `dir` (without . and ..) sorted by name, so
// that Load's problems come out in a stable order.
absl::StatusOr<std::vector<DirEntry>> ListDir(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr)
    return ErrnoStatus(absl::StrCat("cannot list state dir '", dir, "'"));
  std::vector<DirEntry> out;
  errno = 0;
  while (const struct dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    struct stat st;
    // lstat semantics: a symlink is not ours, whatever it points at.
    const bool regular =
        ::fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        S_ISREG(st.st_mode);
    out.push_back({name, regular});
    errno = 0;
  }
  const int err = errno;
  ::closedir(d);
  if (err != 0) {
    errno = err;
    return ErrnoStatus(absl::StrCat("cannot list state dir '", dir, "'"));
  }
  std::sort(out.begin(), out.end(), [](const DirEntry& a, const DirEntry& b) {
    return a.name < b.name;
  });
  return out;
}

// IsTemporary matches what a Put leaves behind when it dies before its
// rename: "<file>.tmp" and WriteSafetensors' own "<file>.tmp.tmp.<pid>.<n>".
bool IsTemporary(absl::string_view name) {
  if (absl::EndsWith(name, ".tmp")) return true;
  return absl::StartsWith(name, "L") &&
         absl::StrContains(name, ".safetensors.tmp.");
}

bool IsLayerFileName(absl::string_view name) {
  return absl::StartsWith(name, "L") && absl::EndsWith(name, kSuffix);
}

// FileVersion parses the version out of "L<20 digits>-<slug>.safetensors".
std::optional<uint64_t> FileVersion(absl::string_view name) {
  if (!IsLayerFileName(name) ||
      name.size() < 1 + kVersionDigits + 1 + strlen(kSuffix) ||
      name[1 + kVersionDigits] != '-') {
    return std::nullopt;
  }
  const absl::string_view digits = name.substr(1, kVersionDigits);
  if (!std::all_of(digits.begin(), digits.end(),
                   [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  uint64_t version = 0;
  if (!absl::SimpleAtoi(digits, &version))
    return std::nullopt;  // above UINT64_MAX
  return version;
}

std::string FileName(uint64_t version, absl::string_view name) {
  std::string slug(name.substr(0, kSlugBytes));
  for (char& c : slug) {
    const bool keep = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                      (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                      c == '-';
    if (!keep) c = '_';
  }
  return absl::StrCat("L", absl::StrFormat("%020u", version), "-", slug,
                      kSuffix);
}

bool IsValidUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (size_t j = 1; j < len; ++j) {
      const unsigned char cc = static_cast<unsigned char>(s[i + j]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Overlong forms, surrogates and code points past U+10FFFF are what
    // nlohmann's strict UTF-8 check rejects too.
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += len;
  }
  return true;
}

uint64_t Fnv1a64(uint64_t h, absl::Span<const uint8_t> bytes) {
  for (uint8_t b : bytes) {
    h ^= b;
    h *= 0x100000001b3ull;
  }
  return h;
}
constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ull;

std::string Hex64(uint64_t h) { return absl::StrFormat("%016x", h); }

// ReportNumber writes a double so that it reads back bit for bit; the rare
// non-finite value (JSON has none) becomes a string strtod understands.
std::string ReportNumber(double v) {
  if (std::isfinite(v)) return absl::StrFormat("%.17g", v);
  return absl::StrCat("\"", absl::StrFormat("%g", v), "\"");
}

std::string ReportJson(const ErrorReport& r) {
  return absl::StrCat("{\"max_abs\":", ReportNumber(r.max_abs),
                      ",\"rms\":", ReportNumber(r.rms),
                      ",\"rel_fro\":", ReportNumber(r.rel_fro), "}");
}

absl::StatusOr<ErrorReport> ParseReport(const std::string& text) {
  const Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  auto bad = [&] {
    return absl::InvalidArgumentError(absl::StrCat(
        "'qlinear.error_report' is not {\"max_abs\", \"rms\", \"rel_fro\"}: ",
        text));
  };
  if (j.is_discarded() || !j.is_object()) return bad();
  ErrorReport r;
  for (auto [key, field] :
       {std::pair<const char*, double*>{"max_abs", &r.max_abs},
        {"rms", &r.rms},
        {"rel_fro", &r.rel_fro}}) {
    auto it = j.find(key);
    if (it == j.end()) return bad();
    if (it->is_number()) {
      *field = it->get<double>();
    } else if (it->is_string()) {
      const std::string s = it->get<std::string>();
      char* end = nullptr;
      *field = std::strtod(s.c_str(), &end);
      if (s.empty() || *end != '\0') return bad();
    } else {
      return bad();
    }
  }
  return r;
}

// WithoutPath drops the path from a Checkpoint message ("'P': ..." and
// "... (in 'P')"): the problem line already starts with it.
std::string WithoutPath(const absl::Status& status, const std::string& path) {
  std::string msg(status.message());
  absl::StrReplaceAll({{absl::StrCat("'", path, "': "), ""},
                       {absl::StrCat(" (in '", path, "')"), ""}},
                      &msg);
  return msg;
}

// ReadLayerFile reads and checks one layer file; any error is the reason it
// is skipped.
absl::StatusOr<LayerStore::StoredLayer> ReadLayerFile(const std::string& path,
                                                      const std::string& base) {
  const std::optional<uint64_t> version = FileVersion(base);
  if (!version) {
    return absl::InvalidArgumentError(
        "the file name is not L<20-digit version>-<slug>.safetensors");
  }
  // The file describes itself; a config.json someone left in the state
  // dir must not change how it reads.
  CheckpointOptions options;
  options.read_config_json = false;
  QLINEAR_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> c,
                           Checkpoint::Open(path, options));
  const std::map<std::string, std::string>& meta = c->metadata();
  auto get = [&](const char* key) -> const std::string* {
    auto it = meta.find(key);
    return it == meta.end() ? nullptr : &it->second;
  };
  const std::string* name = get("qlinear.name");
  const std::string* version_text = get("qlinear.version");
  const std::string* checksum = get("qlinear.checksum");
  if (name == nullptr || version_text == nullptr || checksum == nullptr) {
    return absl::InvalidArgumentError(
        "metadata lacks qlinear.name, qlinear.version or qlinear.checksum");
  }
  if (c->layers().size() != 1 || c->layers()[0].name != *name ||
      !c->layers()[0].quantized) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected exactly one quantized layer named like its "
                     "qlinear.name; found ",
                     c->layers().size(), " layer(s)"));
  }
  uint64_t meta_version = 0;
  if (!absl::SimpleAtoi(*version_text, &meta_version) ||
      meta_version != *version) {
    return absl::InvalidArgumentError(
        absl::StrCat("qlinear.version '", *version_text,
                     "' does not match the file name's ", *version));
  }
  // The data section is the tensors in offset order (SafetensorsFile checks
  // that they tile it), which is how Put computed the checksum.
  std::vector<const TensorInfo*> by_offset = c->tensors();
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) {
              return a->begin < b->begin;
            });
  uint64_t h = kFnvOffset;
  for (const TensorInfo* t : by_offset) h = Fnv1a64(h, c->Data(*t));
  if (Hex64(h) != *checksum) {
    return absl::DataLossError(
        absl::StrCat("checksum mismatch: the metadata says ", *checksum,
                     ", the data hashes to ", Hex64(h)));
  }
  QLINEAR_ASSIGN_OR_RETURN(LoadedLayer layer, c->Load(c->layers()[0]));
  if (const std::string* dtype_name = get("qlinear.dtype")) {
    const std::optional<DType> dtype = ParseDTypeName(*dtype_name);
    if (!dtype || !IsFloatDType(*dtype) ||
        (layer.q.params.has_biases() && *dtype != layer.q.dtype)) {
      return absl::InvalidArgumentError(
          absl::StrCat("qlinear.dtype '", *dtype_name,
                       "' is not a float dtype that fits the scales"));
    }
    // The fp modes' scales are U8 whatever the source dtype was.
    layer.q.dtype = *dtype;
  }
  layer.report.reset();
  if (const std::string* report = get("qlinear.error_report")) {
    QLINEAR_ASSIGN_OR_RETURN(layer.report, ParseReport(*report));
  }
  return LayerStore::StoredLayer{std::move(layer), *version, path};
}

}  // namespace

absl::StatusOr<std::unique_ptr<LayerStore>> LayerStore::Open(
    const std::string& dir) {
  QLINEAR_RETURN_IF_ERROR(MakeDirs(dir));
  std::unique_ptr<LayerStore> store(new LayerStore());
  store->dir_ = dir;
  const std::string lock_path = Join(dir, kLockFile);
  store->lock_fd_ =
      ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (store->lock_fd_ < 0)
    return ErrnoStatus(absl::StrCat("cannot open '", lock_path, "'"));
  const int fd = store->lock_fd_;
  // flock belongs to the open file description, so even a second Open in
  // this process conflicts, and the kernel drops it when the process dies.
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK)
      return ErrnoStatus(absl::StrCat("cannot lock '", lock_path, "'"));
    char buf[32] = {};
    const ssize_t got = ::pread(fd, buf, sizeof(buf) - 1, 0);
    std::string pid(buf, got > 0 ? static_cast<size_t>(got) : 0);
    pid = std::string(absl::StripAsciiWhitespace(pid));
    // Empty when the holder has truncated LOCK but not yet written its pid.
    if (pid.empty()) pid = "unknown";
    return absl::FailedPreconditionError(
        absl::StrCat("state dir '", dir,
                     "' is in use by another qlinear-server (pid ", pid, ")"));
  }
  const std::string pid = absl::StrCat(getpid(), "\n");
  if (::ftruncate(fd, 0) != 0 ||
      ::pwrite(fd, pid.data(), pid.size(), 0) !=
          static_cast<ssize_t>(pid.size()) ||
      ::fsync(fd) != 0) {
    return ErrnoStatus(absl::StrCat("cannot write '", lock_path, "'"));
  }

  QLINEAR_ASSIGN_OR_RETURN(std::vector<DirEntry> entries, ListDir(dir));
  bool removed = false;
  for (const DirEntry& e : entries) {
    if (!e.regular || !IsTemporary(e.name)) continue;
    const std::string path = Join(dir, e.name);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      return ErrnoStatus(
          absl::StrCat("cannot remove the leftover temporary '", path, "'"));
    }
    removed = true;
  }
  if (removed) QLINEAR_RETURN_IF_ERROR(SyncDir(dir));
  return store;
}

LayerStore::~LayerStore() {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

absl::StatusOr<LayerStore::Contents> LayerStore::Load() {
  QLINEAR_ASSIGN_OR_RETURN(std::vector<DirEntry> entries, ListDir(dir_));
  Contents contents;
  std::map<std::string, StoredLayer> best;
  std::vector<std::string> superseded;  // full paths
  for (const DirEntry& e : entries) {
    if (e.name == kLockFile) continue;
    const std::string path = Join(dir_, e.name);
    if (e.name == kVersionFile) {
      std::ifstream in(path);
      uint64_t v = 0;
      if (e.regular && (in >> v)) {
        removed_high_ = v;
        contents.max_version = std::max(contents.max_version, v);
      } else {
        contents.problems.push_back(absl::StrCat(path, ": not a version number"));
      }
      continue;
    }
    if (!e.regular || !IsLayerFileName(e.name)) {
      contents.problems.push_back(
          absl::StrCat(path, ": not a qlinear layer file"));
      continue;
    }
    // Counted even when the file is damaged: a new version must never reuse
    // the name of a file still on disk.
    if (auto v = FileVersion(e.name))
      contents.max_version = std::max(contents.max_version, *v);
    absl::StatusOr<StoredLayer> stored = ReadLayerFile(path, e.name);
    if (!stored.ok()) {
      contents.problems.push_back(
          absl::StrCat(path, ": ", WithoutPath(stored.status(), path)));
      continue;
    }
    auto [it, inserted] = best.try_emplace(stored->layer.name);
    if (inserted) {
      it->second = *std::move(stored);
    } else if (stored->version == it->second.version) {
      // Two names for one version: no writer does that, so leave both for
      // the operator rather than guess.
      contents.problems.push_back(
          absl::StrCat(path, ": layer '", stored->layer.name, "' version ",
                       stored->version, " is also in ", it->second.file));
    } else if (stored->version > it->second.version) {
      // A Put that died between its rename and removing the old file.
      superseded.push_back(it->second.file);
      it->second = *std::move(stored);
    } else {
      superseded.push_back(stored->file);
    }
  }
  bool removed = false;
  for (const std::string& path : superseded) {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      const int err = errno;
      contents.problems.push_back(absl::StrCat(
          path, ": superseded by a newer version but cannot be removed: ",
          std::strerror(err)));
      continue;
    }
    removed = true;
  }
  if (removed) QLINEAR_RETURN_IF_ERROR(SyncDir(dir_));

  files_.clear();
  for (auto& [name, stored] : best) {
    files_[name] = stored.file.substr(stored.file.find_last_of('/') + 1);
    contents.layers.push_back(std::move(stored));
  }
  return contents;
}

absl::Status LayerStore::Put(const LoadedLayer& layer, uint64_t version) {
  const std::string& name = layer.name;
  const QuantizedMatrix& q = layer.q;
  // WriteSafetensors' JSON header would throw on anything else.
  if (!IsValidUtf8(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("state dir '", dir_, "': layer name is not valid UTF-8"));
  }
  if (!layer.bias.empty() && layer.bias.size() != static_cast<size_t>(q.n)) {
    return absl::InvalidArgumentError(
        absl::StrCat("state dir '", dir_, "': layer '", name, "' has ",
                     layer.bias.size(), " bias values for ", q.n, " outputs"));
  }
  const std::string base = FileName(version, name);
  const std::string path = Join(dir_, base);
  const std::string tmp = absl::StrCat(path, ".tmp");

  std::vector<TensorToWrite> tensors = QuantizedTensors(name, q);
  if (!layer.bias.empty()) {
    tensors.push_back({name + ".bias",
                       DType::kF32,
                       {q.n},
                       absl::Span<const uint8_t>(
                           reinterpret_cast<const uint8_t*>(layer.bias.data()),
                           layer.bias.size() * sizeof(float))});
  }
  // Name order is the file's offset order, so a reader hashes the data
  // section as it lies.
  std::sort(tensors.begin(), tensors.end(),
            [](const TensorToWrite& a, const TensorToWrite& b) {
              return a.name < b.name;
            });
  uint64_t h = kFnvOffset;
  for (const TensorToWrite& t : tensors) h = Fnv1a64(h, t.data);

  std::map<std::string, std::string> metadata = {
      {"format", "mlx"},
      {"quantization", QuantizationConfig::ToJson(q.params)},
      {"qlinear.name", name},
      {"qlinear.version", absl::StrCat(version)},
      {"qlinear.dtype", std::string(DTypeName(q.dtype))},
      {"qlinear.checksum", Hex64(h)},
  };
  if (layer.report) {
    metadata["qlinear.error_report"] = ReportJson(*layer.report);
  }

  auto failure = [&](const absl::Status& status) {
    return absl::Status(
        status.code(),
        absl::StrCat("state dir '", dir_, "': cannot write layer '", name,
                     "' to '", base, "': ", status.message()));
  };
  // WriteSafetensors syncs the data and renames its own temporary to `tmp`
  // (removing it on failure); the second rename below is what lets a crash
  // point sit between "synced" and "in place".
  absl::Status written = WriteSafetensors(tmp, tensors, metadata);
  if (!written.ok()) return failure(written);
  CrashPoint("store-after-temp");

  const auto old = files_.find(name);
  const bool replaces_same_file = old != files_.end() && old->second == base;
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const absl::Status status =
        ErrnoStatus(absl::StrCat("cannot rename '", tmp, "'"));
    ::unlink(tmp.c_str());
    return failure(status);
  }
  if (absl::Status synced = SyncDir(dir_); !synced.ok()) {
    // Not durable, so not stored: undo, unless that would drop the old copy.
    if (!replaces_same_file) ::unlink(path.c_str());
    return failure(synced);
  }
  CrashPoint("store-after-rename");

  if (old != files_.end() && !replaces_same_file) {
    // Failing here leaves an older copy that the next Load removes; the
    // new layer is durable either way, so Put has succeeded.
    const std::string old_path = Join(dir_, old->second);
    if (::unlink(old_path.c_str()) == 0) (void)SyncDir(dir_);
  }
  CrashPoint("store-after-remove-old");
  files_[name] = base;
  return absl::OkStatus();
}

absl::Status LayerStore::Remove(const std::string& name) {
  auto it = files_.find(name);
  if (it == files_.end()) return absl::OkStatus();
  CrashPoint("store-before-remove");
  if (auto v = FileVersion(it->second); v && *v > removed_high_) {
    QLINEAR_RETURN_IF_ERROR(WriteVersionFile(dir_, *v));
    removed_high_ = *v;
  }
  const std::string path = Join(dir_, it->second);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoStatus(absl::StrCat("state dir '", dir_,
                                    "': cannot remove layer '", name,
                                    "' file '", it->second, "'"));
  }
  files_.erase(it);
  return SyncDir(dir_);
}

std::string LayerStore::FileOf(const std::string& name) const {
  auto it = files_.find(name);
  return it == files_.end() ? std::string() : Join(dir_, it->second);
}

void CrashPoint(const char* point) {
  const char* at = std::getenv("QLINEAR_CRASH_AT");
  if (at == nullptr || std::strcmp(at, point) != 0) return;
  const std::string line = absl::StrCat("qlinear: QLINEAR_CRASH_AT=", point,
                                        ": killing the process here\n");
  // write(2), not stdio: nothing buffered may leave the process.
  if (::write(STDERR_FILENO, line.data(), line.size()) < 0) {
    // Nothing to do: the kill below is the point.
  }
  ::kill(getpid(), SIGKILL);
  std::abort();  // unreachable: SIGKILL cannot be caught
}

}  // namespace qlinear
