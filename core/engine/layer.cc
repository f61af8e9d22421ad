#include "core/engine/layer.h"

#include "absl/strings/str_cat.h"

namespace qlinear {

absl::Status MemoryBudget::TryReserve(uint64_t bytes, absl::string_view what) {
  uint64_t used = used_.load();
  while (true) {
    if (limit_ != 0 && used + bytes > limit_) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "memory budget: ", what, " needs ", bytes, " bytes but ", used, " of the ",
          limit_, " bytes allowed (--max-memory-mb) are held"));
    }
    if (used_.compare_exchange_weak(used, used + bytes)) return absl::OkStatus();
  }
}

Reservation& Reservation::operator=(Reservation&& o) noexcept {
  if (this != &o) {
    if (budget_ != nullptr) budget_->Release(bytes_);
    budget_ = o.budget_;
    bytes_ = o.bytes_;
    o.budget_ = nullptr;
  }
  return *this;
}

void Reservation::ShrinkTo(uint64_t bytes) {
  if (budget_ == nullptr || bytes >= bytes_) return;
  budget_->Release(bytes_ - bytes);
  bytes_ = bytes;
}

Reservation::~Reservation() {
  if (budget_ != nullptr) budget_->Release(bytes_);
}

absl::string_view OriginKindName(OriginKind kind) {
  switch (kind) {
    case OriginKind::kBuiltin:
      return "builtin";
    case OriginKind::kModel:
      return "model";
    case OriginKind::kUpload:
      return "upload";
    case OriginKind::kState:
      return "state";
  }
  return "unknown";
}

uint64_t Layer::PackedBytes(const QuantParams& params, int64_t n, int64_t k,
                            bool has_bias) {
  return PackedMatrix::MaxBytes(params, n, k) + (has_bias ? static_cast<uint64_t>(n) * 4 : 0);
}

std::shared_ptr<const Layer> Layer::Create(std::string name, const QuantizedMatrix& q,
                                           std::vector<float> bias,
                                           std::optional<ErrorReport> report,
                                           uint64_t version, Reservation reservation,
                                           LayerOrigin origin) {
  std::shared_ptr<Layer> layer(new Layer());
  layer->packed_ = PackedMatrix::Pack(q);
  layer->bias_ = std::move(bias);
  layer->reservation_ = std::move(reservation);
  Info& info = layer->info_;
  info.name = std::move(name);
  info.params = q.params;
  info.weight_dtype = q.dtype;
  info.n = q.n;
  info.k = q.k;
  info.has_bias = !layer->bias_.empty();
  info.version = version;
  // The name is held too, and a client chooses its length.
  info.bytes_held = layer->packed_.bytes() + layer->bias_.size() * 4 + info.name.size();
  layer->reservation_.ShrinkTo(info.bytes_held);
  info.error_report = report;
  info.origin = std::move(origin);
  return layer;
}

}  // namespace qlinear
