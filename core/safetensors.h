// safetensors I/O: a validating, memory-mapped reader and a crash-safe writer.
//
// Format: an 8-byte little-endian header length H, H bytes of JSON mapping
// tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
// into the data section that follows) plus an optional "__metadata__" object
// of string values, then the data section.
//
// SafetensorsFile::Open validates everything before returning: header length
// against the file size, well-formed JSON without duplicate keys, known
// dtypes, non-negative shapes, shape x dtype size == byte span, spans inside
// the data section that neither overlap nor leave holes. Every fault is
// INVALID_ARGUMENT naming the tensor and what was expected and found; I/O
// failures are NOT_FOUND / PERMISSION_DENIED / INTERNAL as errno says.
//
// WriteSafetensors writes a temporary file beside the target, fsyncs it,
// renames it over the target and fsyncs the folder: a crash at any point
// leaves either the old file or the new one, never a half-written file.
//
// Thread safety: a SafetensorsFile is immutable after Open; concurrent reads
// are safe. The mapping lives as long as the object.
#ifndef QLINEAR_CORE_SAFETENSORS_H_
#define QLINEAR_CORE_SAFETENSORS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/dtype.h"

namespace qlinear {

// TensorInfo describes one tensor of a file.
struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  size_t begin = 0;  // offset of the first byte in the data section
  size_t size = 0;   // bytes

  int64_t elements() const;
  std::string ShapeString() const;  // "[4096, 512]"
};

class SafetensorsFile {
 public:
  // Open maps and validates `path`.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(
      const std::string& path);
  // Parse validates an in-memory file; `bytes` is copied.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Parse(
      absl::string_view bytes);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // tensors() lists the tensors sorted by name.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // Find returns the tensor named `name`, or nullptr.
  const TensorInfo* Find(absl::string_view name) const;
  // Data returns the bytes of `info` (which must come from this file). They
  // need not be aligned: read multi-byte elements with memcpy.
  absl::Span<const uint8_t> Data(const TensorInfo& info) const;
  // metadata() is the "__metadata__" object (empty when absent).
  const std::map<std::string, std::string>& metadata() const {
    return metadata_;
  }

 private:
  SafetensorsFile() = default;
  absl::Status Init(const uint8_t* bytes, size_t size);

  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  std::string owned_;  // for Parse
  const uint8_t* data_ = nullptr;  // start of the data section
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// TensorToWrite is one tensor for WriteSafetensors; `data` is borrowed for the
// duration of the call and must hold exactly elements x dtype size bytes.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  absl::Span<const uint8_t> data;
};

struct WriteOptions {
  // Called after each chunk of the data section reaches the temporary file,
  // with the bytes written so far (tests use it to simulate a crash).
  std::function<void(size_t)> after_chunk;
};

// WriteSafetensors writes `tensors` (in the given order) and `metadata`
// atomically to `path`. INVALID_ARGUMENT for a duplicate or empty name,
// "__metadata__" as a name, or a size mismatch; for I/O errors the code errno
// suggests (NOT_FOUND, PERMISSION_DENIED, else INTERNAL) and the path (the
// target is then untouched and the temporary file removed).
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata,
                              const WriteOptions& options = {});

}  // namespace qlinear

#endif  // QLINEAR_CORE_SAFETENSORS_H_
