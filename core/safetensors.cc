#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace qlinear {
namespace {

using Json = nlohmann::json;

// Far above any real header (HF's reader caps it at 100 MB too).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("safetensors: ", what));
}

absl::Status ErrnoStatus(absl::string_view action, const std::string& path) {
  const int err = errno;
  const std::string msg =
      absl::StrCat(action, " '", path, "': ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(msg);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(msg);
  // A full disk, a quota or a file size limit is a resource the operator
  // can free, not a bug: callers (the state dir) report it as such.
  if (err == ENOSPC || err == EDQUOT || err == EFBIG) {
    return absl::ResourceExhaustedError(msg);
  }
  return absl::InternalError(msg);
}

absl::StatusOr<int64_t> NonNegativeInt(const Json& v, absl::string_view what,
                                       absl::string_view tensor) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u <= static_cast<uint64_t>(INT64_MAX)) return static_cast<int64_t>(u);
  } else if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    return v.get<int64_t>();
  }
  return Invalid(absl::StrCat("tensor '", tensor, "': ", what,
                              " must be non-negative integers; got ", v.dump()));
}

absl::StatusOr<TensorInfo> ParseEntry(const std::string& name, const Json& e,
                                      size_t data_size) {
  if (!e.is_object()) {
    return Invalid(absl::StrCat("tensor '", name,
                                "': expected an object; got ", e.dump()));
  }
  for (auto it = e.begin(); it != e.end(); ++it) {
    if (it.key() != "dtype" && it.key() != "shape" && it.key() != "data_offsets") {
      return Invalid(absl::StrCat("tensor '", name, "': unknown field '",
                                  it.key(), "' (expected dtype, shape, data_offsets)"));
    }
  }
  TensorInfo info;
  info.name = name;
  auto dtype_it = e.find("dtype");
  if (dtype_it == e.end() || !dtype_it->is_string()) {
    return Invalid(absl::StrCat("tensor '", name, "': missing string field 'dtype'"));
  }
  const auto dtype = ParseDTypeName(dtype_it->get<std::string>());
  if (!dtype) {
    return Invalid(absl::StrCat("tensor '", name, "': unknown dtype '",
                                dtype_it->get<std::string>(),
                                "' (expected one of BOOL, U8, I8, F8_E5M2, "
                                "F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, "
                                "F64, I64, U64)"));
  }
  info.dtype = *dtype;

  auto shape_it = e.find("shape");
  if (shape_it == e.end() || !shape_it->is_array()) {
    return Invalid(absl::StrCat("tensor '", name, "': missing array field 'shape'"));
  }
  unsigned __int128 elements = 1;
  for (const Json& d : *shape_it) {
    auto dim = NonNegativeInt(d, "shape dimensions", name);
    if (!dim.ok()) return dim.status();
    info.shape.push_back(*dim);
    elements *= static_cast<uint64_t>(*dim);
    if (elements > (static_cast<unsigned __int128>(1) << 62)) {
      return Invalid(absl::StrCat("tensor '", name, "': shape ",
                                  shape_it->dump(), " is too large"));
    }
  }

  auto off_it = e.find("data_offsets");
  if (off_it == e.end() || !off_it->is_array() || off_it->size() != 2) {
    return Invalid(absl::StrCat("tensor '", name,
                                "': 'data_offsets' must be [begin, end]"));
  }
  auto begin = NonNegativeInt((*off_it)[0], "data_offsets", name);
  if (!begin.ok()) return begin.status();
  auto end = NonNegativeInt((*off_it)[1], "data_offsets", name);
  if (!end.ok()) return end.status();
  if (*end < *begin) {
    return Invalid(absl::StrCat("tensor '", name, "': data_offsets [", *begin,
                                ", ", *end, "] end before they begin"));
  }
  if (static_cast<uint64_t>(*end) > data_size) {
    return Invalid(absl::StrCat("tensor '", name, "': data_offsets [", *begin,
                                ", ", *end, "] run past the data section of ",
                                data_size, " bytes"));
  }
  const unsigned __int128 want = elements * DTypeSize(info.dtype);
  info.begin = static_cast<size_t>(*begin);
  info.size = static_cast<size_t>(*end - *begin);
  if (want != info.size) {
    return Invalid(absl::StrCat(
        "tensor '", name, "': shape ", info.ShapeString(), " of ",
        DTypeName(info.dtype), " needs ", static_cast<uint64_t>(want),
        " bytes but data_offsets span ", info.size));
  }
  return info;
}

}  // namespace

int64_t TensorInfo::elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorInfo::ShapeString() const {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) munmap(mapping_, mapping_size_);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("cannot open", path);
  struct stat st;
  if (fstat(fd, &st) != 0) {
    absl::Status status = ErrnoStatus("cannot stat", path);
    ::close(fd);
    return status;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat("'", path, "' is not a regular file"));
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  const size_t size = static_cast<size_t>(st.st_size);
  if (size > 0) {
    void* map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
      absl::Status status = ErrnoStatus("cannot map", path);
      ::close(fd);
      return status;
    }
    file->mapping_ = map;
    file->mapping_size_ = size;
  }
  ::close(fd);
  absl::Status status =
      file->Init(static_cast<const uint8_t*>(file->mapping_), size);
  if (!status.ok()) {
    return absl::Status(status.code(),
                        absl::StrCat(status.message(), " (in '", path, "')"));
  }
  return file;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Parse(
    absl::string_view bytes) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->owned_.assign(bytes.data(), bytes.size());
  absl::Status status = file->Init(
      reinterpret_cast<const uint8_t*>(file->owned_.data()), file->owned_.size());
  if (!status.ok()) return status;
  return file;
}

absl::Status SafetensorsFile::Init(const uint8_t* bytes, size_t size) {
  if (size < 8) {
    return Invalid(absl::StrCat("file is ", size,
                                " bytes; at least the 8-byte header length is needed"));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > size - 8) {
    return Invalid(absl::StrCat("header length ", header_len,
                                " runs past the end of the file (", size - 8,
                                " bytes follow the length)"));
  }
  if (header_len > kMaxHeaderBytes) {
    return Invalid(absl::StrCat("header length ", header_len,
                                " exceeds the limit of ", kMaxHeaderBytes));
  }
  const char* header = reinterpret_cast<const char*>(bytes + 8);
  const size_t data_size = size - 8 - header_len;
  data_ = bytes + 8 + header_len;

  // Duplicate keys are legal JSON for nlohmann (last one wins) but a
  // corrupt-or-malicious safetensors header: catch them while parsing.
  std::vector<std::set<std::string>> keys_by_depth;
  std::string duplicate;
  auto callback = [&](int depth, Json::parse_event_t event, Json& parsed) {
    const size_t d = static_cast<size_t>(depth);
    if (event == Json::parse_event_t::object_start) {
      if (keys_by_depth.size() <= d + 1) keys_by_depth.resize(d + 2);
      keys_by_depth[d + 1].clear();
    } else if (event == Json::parse_event_t::key) {
      if (keys_by_depth.size() <= d) keys_by_depth.resize(d + 1);
      const std::string key = parsed.get<std::string>();
      if (!keys_by_depth[d].insert(key).second && duplicate.empty()) {
        duplicate = key;
      }
    }
    return true;
  };
  Json root = Json::parse(header, header + header_len, callback,
                          /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return Invalid("header is not valid JSON");
  }
  if (!duplicate.empty()) {
    return Invalid(absl::StrCat("header has the key '", duplicate, "' twice"));
  }
  if (!root.is_object()) {
    return Invalid(absl::StrCat("header must be a JSON object; got ",
                                root.type_name()));
  }

  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) {
        return Invalid("'__metadata__' must be an object of strings");
      }
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) {
          return Invalid(absl::StrCat("'__metadata__' value of '", m.key(),
                                      "' must be a string; got ", m->dump()));
        }
        metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    auto info = ParseEntry(it.key(), *it, data_size);
    if (!info.ok()) return info.status();
    tensors_.push_back(*std::move(info));
  }

  // The spans must tile the data section exactly: no overlap, no hole.
  std::vector<const TensorInfo*> by_offset;
  for (const TensorInfo& t : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) {
              return std::pair(a->begin, a->size) < std::pair(b->begin, b->size);
            });
  size_t expected = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo* t : by_offset) {
    if (t->begin < expected) {
      return Invalid(absl::StrCat("tensor '", t->name, "' at bytes [", t->begin,
                                  ", ", t->begin + t->size, ") overlaps '",
                                  previous->name, "' which ends at ", expected));
    }
    if (t->begin > expected) {
      return Invalid(absl::StrCat("tensor '", t->name, "' starts at byte ",
                                  t->begin, " but the previous tensor ends at ",
                                  expected, ": the data section has a hole"));
    }
    expected = t->begin + t->size;
    previous = t;
  }
  if (expected != data_size) {
    return Invalid(absl::StrCat("tensors cover ", expected,
                                " bytes but the data section has ", data_size));
  }
  return absl::OkStatus();
}

const TensorInfo* SafetensorsFile::Find(absl::string_view name) const {
  for (const TensorInfo& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

absl::Span<const uint8_t> SafetensorsFile::Data(const TensorInfo& info) const {
  return absl::Span<const uint8_t>(data_ + info.begin, info.size);
}

namespace {

absl::Status WriteAll(int fd, const uint8_t* p, size_t n,
                      const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("cannot write", path);
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata,
                              const WriteOptions& options) {
  Json header = Json::object();
  if (!metadata.empty()) {
    Json meta = Json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = meta;
  }
  size_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__") {
      return absl::InvalidArgumentError(
          absl::StrCat("safetensors: invalid tensor name '", t.name, "'"));
    }
    if (header.contains(t.name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("safetensors: tensor '", t.name, "' given twice"));
    }
    size_t elements = 1;
    for (int64_t d : t.shape) {
      if (d < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "safetensors: tensor '", t.name, "' has a negative dimension"));
      }
      elements *= static_cast<size_t>(d);
    }
    if (elements * DTypeSize(t.dtype) != t.data.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "safetensors: tensor '", t.name, "' of ", DTypeName(t.dtype),
          " shape [", absl::StrJoin(t.shape, ", "), "] needs ",
          elements * DTypeSize(t.dtype), " bytes; got ", t.data.size()));
    }
    header[t.name] = {{"dtype", DTypeName(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.data.size()}}};
    offset += t.data.size();
  }
  std::string text = header.dump();
  // Pad with spaces so that the data section starts 8-byte aligned.
  text.append((8 - text.size() % 8) % 8, ' ');

  std::random_device rd;
  const std::string tmp = absl::StrCat(path, ".tmp.", getpid(), ".", rd());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("cannot create a temporary file beside", path);
  auto fail = [&](absl::Status status) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return status;
  };
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(text.size() >> (8 * i));
  absl::Status status = WriteAll(fd, len, 8, tmp);
  if (status.ok()) {
    status = WriteAll(fd, reinterpret_cast<const uint8_t*>(text.data()),
                      text.size(), tmp);
  }
  constexpr size_t kChunk = 1 << 20;
  size_t written = 0;
  for (const TensorToWrite& t : tensors) {
    for (size_t pos = 0; status.ok() && pos < t.data.size(); pos += kChunk) {
      const size_t n = std::min(kChunk, t.data.size() - pos);
      status = WriteAll(fd, t.data.data() + pos, n, tmp);
      written += n;
      if (status.ok() && options.after_chunk) options.after_chunk(written);
    }
  }
  if (!status.ok()) return fail(status);
  if (::fsync(fd) != 0) return fail(ErrnoStatus("cannot fsync", tmp));
  if (::close(fd) != 0) {
    ::unlink(tmp.c_str());
    return ErrnoStatus("cannot close", tmp);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    absl::Status rename_status = ErrnoStatus("cannot rename onto", path);
    ::unlink(tmp.c_str());
    return rename_status;
  }
  // Make the rename itself durable.
  const int dir = ::open(DirectoryOf(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
  return absl::OkStatus();
}

}  // namespace qlinear
