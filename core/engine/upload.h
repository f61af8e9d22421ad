// Streaming uploads: build a layer from chunks as they arrive, then publish.
//
// QuantizeUpload takes float weight rows (any chunking), quantizes each row
// as soon as its bytes are complete and keeps only a partial row of floats,
// so a layer of any size streams through bounded memory. LoadUpload takes
// MLX's pre-quantized tensors in order (weight, scales, biases, bias).
//
// Both publish through the engine's catalog (so, with --state-dir, the layer
// is stored durably before Finish returns) and reserve the finished layer's
// bytes against the memory budget when they start (RESOURCE_EXHAUSTED if they do not fit) and release them if
// abandoned. Errors: INVALID_ARGUMENT for bad specs, sizes, order or values
// (naming what was expected and what came), ALREADY_EXISTS, UNAVAILABLE when
// the engine drains.
//
// Thread safety: one upload is driven by one caller at a time.
#ifndef QLINEAR_CORE_ENGINE_UPLOAD_H_
#define QLINEAR_CORE_ENGINE_UPLOAD_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/engine/engine.h"

namespace qlinear {

struct QuantizeUploadSpec {
  std::string name;
  int64_t n = 0;
  int64_t k = 0;
  DType dtype = DType::kF32;  // of the weight and the bias
  QuantParams params;
  bool has_bias = false;
  bool replace = false;
};

class QuantizeUpload {
 public:
  static absl::StatusOr<std::unique_ptr<QuantizeUpload>> Start(Engine* engine,
                                                               const QuantizeUploadSpec& spec);
  absl::Status AddWeight(absl::Span<const uint8_t> bytes);
  absl::Status AddBias(absl::Span<const uint8_t> bytes);
  // Finish checks that everything arrived and publishes the layer.
  absl::StatusOr<std::shared_ptr<const Layer>> Finish();

 private:
  QuantizeUpload() = default;
  void Allocate(const QuantizeUploadSpec& spec);  // may throw std::bad_alloc
  Engine* engine_ = nullptr;
  QuantizeUploadSpec spec_;
  Reservation reservation_;
  QuantizedMatrix q_;
  std::vector<uint8_t> partial_;  // bytes of the row being received
  std::vector<float> dq_row_;
  int64_t rows_done_ = 0;
  std::vector<uint8_t> bias_bytes_;
  ErrorAccumulator error_;
};

struct LoadUploadSpec {
  std::string name;
  int64_t n = 0;
  int64_t k = 0;
  QuantParams params;
  DType scales_dtype = DType::kF16;  // F32/F16/BF16 for affine, U8 for fp modes
  bool has_bias = false;
  DType bias_dtype = DType::kF32;
  bool replace = false;
};

class LoadUpload {
 public:
  enum class Part { kWeight = 0, kScales = 1, kBiases = 2, kBias = 3 };

  static absl::StatusOr<std::unique_ptr<LoadUpload>> Start(Engine* engine,
                                                           const LoadUploadSpec& spec);
  // Add appends bytes to `part`; parts must come in order, each complete
  // before the next starts.
  absl::Status Add(Part part, absl::Span<const uint8_t> bytes);
  absl::StatusOr<std::shared_ptr<const Layer>> Finish();

 private:
  LoadUpload() = default;
  size_t Expected(Part part) const;
  Engine* engine_ = nullptr;
  LoadUploadSpec spec_;
  Reservation reservation_;
  std::vector<uint8_t> parts_[4];
  int current_ = 0;
};

}  // namespace qlinear

#endif  // QLINEAR_CORE_ENGINE_UPLOAD_H_
