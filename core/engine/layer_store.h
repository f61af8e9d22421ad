// LayerStore: the durable copy of the layers uploaded to a server, kept in
// one folder (--state-dir) so that they survive a restart or a SIGKILL.
//
// Layout: one MLX safetensors file per layer, named
//   L<version, 20 digits>-<slug>.safetensors
// where the slug is the first 48 bytes of the layer name with every byte
// outside [A-Za-z0-9._-] replaced by '_' (for people reading the folder).
// The version makes the name unique — a version is never given twice — so
// any layer name fits, whatever its length, and no two layers can collide
// (the name must be valid UTF-8: it is a key of the file's JSON header, as
// it is a proto3 string on the wire). Each file holds <name>.bias (float32,
// when the layer has one), <name>.biases (affine), <name>.scales and
// <name>.weight, as MLX writes them, in that order (sorted by tensor name),
// and string metadata: "format" = "mlx", "quantization" (mlx-lm's object
// for the layer), "qlinear.name", "qlinear.version" (decimal),
// "qlinear.dtype" (QuantizedMatrix::dtype, e.g. "F32": for fp modes the
// tensors alone do not say it), "qlinear.error_report" (JSON {"max_abs",
// "rms", "rel_fro"}, %.17g, when the layer has a report) and
// "qlinear.checksum" (FNV-1a 64, 16 lowercase hex digits, of the data
// section: the tensors' bytes in file offset order, which is name order),
// so a damaged file is told from a good one. The checksum does not cover
// the header: a flip there shows as a name, version, shape or JSON fault,
// except inside the error report's digits. A file named LOCK holds the
// holder's pid; a file named VERSION holds the largest version of a layer
// that Remove deleted (written before the unlink), so that versions go on
// above it after a restart and never name two layers.
//
// Writes are atomic and durable: Put writes "<file>.tmp" (through
// WriteSafetensors, whose own "<file>.tmp.tmp.<pid>.<random>" is renamed to
// it once synced), fsyncs it, renames it into place and fsyncs the folder
// before returning OK; only then does it remove the previous file of the
// same name (and fsyncs the folder again). A crash at any point leaves
// either the old file, or both (the higher version wins at Load, which then
// removes the other), never a torn layer: a torn temporary is ignored and
// removed at Open (every "*.tmp" and "L*.safetensors.tmp.*" file).
//
// Crash points (see CrashPoint), in the order a Put passes them:
//   "store-after-temp"        <file>.tmp written and synced, not renamed;
//   "store-after-rename"      <file> in place and the folder synced, the
//                             previous file of the name still there;
//   "store-after-remove-old"  the previous file (if any) removed, synced;
// and in Remove, when the store holds a file of the name:
//   "store-before-remove"     nothing removed yet.
// The catalog (catalog.cc) adds two: "catalog-after-store" (stored, not
// yet published) and "catalog-after-remove" (file gone, layer still
// registered).
//
// The store learns which file holds a name from Load and from its own
// Puts: call Load once after Open, before any Put or Remove (a Put before
// it leaves the earlier file, which the next Load resolves by version; a
// Remove before it finds nothing).
//
// Thread safety: not thread-safe; the catalog serialises every call.
// Ownership: the store owns nothing of the caller's; Put only reads.
#ifndef QLINEAR_CORE_ENGINE_LAYER_STORE_H_
#define QLINEAR_CORE_ENGINE_LAYER_STORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/checkpoint.h"
#include "core/quantize.h"

namespace qlinear {

class LayerStore {
 public:
  // StoredLayer is one layer read back from the folder.
  struct StoredLayer {
    LoadedLayer layer;
    uint64_t version = 0;
    std::string file;  // full path
  };
  struct Contents {
    std::vector<StoredLayer> layers;  // sorted by name
    // "<file>: <why>" for each damaged or foreign file, skipped (left on
    // disk untouched for the operator to look at).
    std::vector<std::string> problems;
    uint64_t max_version = 0;  // the largest version of any layer file seen
  };

  // Open creates `dir` when missing, takes an exclusive lock on it (flock of
  // dir/LOCK, which then holds this process's pid) and removes leftover
  // temporaries. FAILED_PRECONDITION naming the folder and the holder's pid
  // when another process holds it; the errno's code and the path for I/O
  // failures. The lock is released when the store is destroyed.
  static absl::StatusOr<std::unique_ptr<LayerStore>> Open(const std::string& dir);
  ~LayerStore();

  const std::string& dir() const { return dir_; }

  // Load reads every layer file (through Checkpoint). Of two files with the
  // same layer name the higher version wins and the other is removed.
  absl::StatusOr<Contents> Load();

  // Put stores `layer` at `version` durably, then drops the previous file of
  // that name. On failure nothing changed on disk (the temporary is
  // removed): RESOURCE_EXHAUSTED for a full disk or a file size limit
  // (ENOSPC, EDQUOT, EFBIG), else the errno's code; the message names the
  // state dir, the file and the layer. INVALID_ARGUMENT for a name that is
  // not valid UTF-8 or a bias of other than q.n values. Once the new file
  // is durable Put returns OK even if the previous file cannot be removed:
  // the layer is stored, and the next Load drops the older copy.
  absl::Status Put(const LoadedLayer& layer, uint64_t version);

  // Remove deletes the file of `name` and fsyncs the folder. OK when the
  // store holds no file of that name.
  absl::Status Remove(const std::string& name);

  // FileOf is the path holding `name`, or empty.
  std::string FileOf(const std::string& name) const;

 private:
  LayerStore() = default;
  std::string dir_;
  int lock_fd_ = -1;
  std::map<std::string, std::string> files_;  // layer name -> file name
  uint64_t removed_high_ = 0;  // the VERSION file's value
};

// CrashPoint kills the process when the environment variable
// QLINEAR_CRASH_AT equals `point` (tests kill the server at named points of
// the write path this way; the names are listed at the top of this file):
// it writes one line naming the point to stderr, then raises SIGKILL, so
// that, like a real kill, nothing else is flushed and no handler runs. A
// no-op otherwise.
void CrashPoint(const char* point);

}  // namespace qlinear

#endif  // QLINEAR_CORE_ENGINE_LAYER_STORE_H_
