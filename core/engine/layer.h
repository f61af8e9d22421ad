// Layer: one published, immutable quantized linear layer, ready to serve.
//
// A Layer owns its packed weights, its float32 bias and a reservation against
// the server's memory budget, released when the last shared_ptr goes: an
// unloaded or replaced layer stays valid (and counted) until in-flight work
// on it finishes.
//
// Thread safety: immutable after Create; share it as shared_ptr<const Layer>.
#ifndef QLINEAR_CORE_ENGINE_LAYER_H_
#define QLINEAR_CORE_ENGINE_LAYER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/kernels/qmm.h"
#include "core/quantize.h"

namespace qlinear {

// MemoryBudget counts the bytes layers really hold against a limit.
// Thread-safe.
class MemoryBudget {
 public:
  // limit_bytes == 0 means unlimited.
  explicit MemoryBudget(uint64_t limit_bytes) : limit_(limit_bytes) {}

  // TryReserve returns RESOURCE_EXHAUSTED naming the limit, the bytes held
  // and the bytes asked for when they do not fit.
  absl::Status TryReserve(uint64_t bytes, absl::string_view what);
  void Release(uint64_t bytes) { used_.fetch_sub(bytes); }
  uint64_t used() const { return used_.load(); }
  uint64_t limit() const { return limit_; }

 private:
  const uint64_t limit_;
  std::atomic<uint64_t> used_{0};
};

// Reservation holds bytes of a MemoryBudget until destroyed. Movable.
class Reservation {
 public:
  Reservation() = default;
  Reservation(MemoryBudget* budget, uint64_t bytes) : budget_(budget), bytes_(bytes) {}
  Reservation(Reservation&& o) noexcept : budget_(o.budget_), bytes_(o.bytes_) { o.budget_ = nullptr; }
  Reservation& operator=(Reservation&& o) noexcept;
  Reservation(const Reservation&) = delete;
  Reservation& operator=(const Reservation&) = delete;
  ~Reservation();
  uint64_t bytes() const { return budget_ ? bytes_ : 0; }
  // ShrinkTo gives back all but `bytes` (no-op when already smaller).
  void ShrinkTo(uint64_t bytes);

 private:
  MemoryBudget* budget_ = nullptr;  // borrowed; outlives every layer
  uint64_t bytes_ = 0;
};

// Where a layer came from. The kinds are a small fixed set (metrics label
// them); `source` says which file or folder.
enum class OriginKind {
  kBuiltin,  // the demo layer a server without --model or --state-dir serves
  kModel,    // a --model file or folder (source: its path)
  kUpload,   // Quantize or LoadQuantized (source: empty)
  kState,    // read back from --state-dir at start (source: the file)
};

// OriginKindName returns "builtin", "model", "upload" or "state".
absl::string_view OriginKindName(OriginKind kind);

struct LayerOrigin {
  OriginKind kind = OriginKind::kUpload;
  std::string source;
};

class Layer {
 public:
  struct Info {
    std::string name;
    QuantParams params;
    DType weight_dtype = DType::kF32;  // scales' dtype (affine) or source
    int64_t n = 0;
    int64_t k = 0;
    bool has_bias = false;
    uint64_t version = 0;
    uint64_t bytes_held = 0;  // packed tensors + bias + the name's bytes
    std::optional<ErrorReport> error_report;  // when quantized here
    LayerOrigin origin;
  };

  // PackedBytes is the most a layer of this shape can hold (for reserving
  // before building it; Create shrinks the reservation to what it holds).
  static uint64_t PackedBytes(const QuantParams& params, int64_t n, int64_t k,
                              bool has_bias);

  // Create packs `q`; `bias` is empty or q.n float32 values. The
  // reservation must cover PackedBytes(); it shrinks to info().bytes_held.
  static std::shared_ptr<const Layer> Create(std::string name, const QuantizedMatrix& q,
                                             std::vector<float> bias,
                                             std::optional<ErrorReport> report,
                                             uint64_t version, Reservation reservation,
                                             LayerOrigin origin = {});

  const Info& info() const { return info_; }
  const PackedMatrix& packed() const { return packed_; }
  const float* bias() const { return bias_.empty() ? nullptr : bias_.data(); }

 private:
  Layer() = default;
  Info info_;
  PackedMatrix packed_;
  std::vector<float> bias_;
  Reservation reservation_;
};

}  // namespace qlinear

#endif  // QLINEAR_CORE_ENGINE_LAYER_H_
