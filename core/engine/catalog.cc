#include "core/engine/catalog.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/names.h"
#include "core/quantize.h"

namespace qlinear {

Catalog::Catalog(uint64_t max_memory_bytes) : budget_(max_memory_bytes) {}

void Catalog::AttachStore(std::unique_ptr<LayerStore> store) {
  absl::MutexLock lock(&mu_);
  store_ = std::move(store);
}

void Catalog::SeedVersions(uint64_t version) { registry_.SeedVersions(version); }

absl::Status Catalog::CheckName(const std::string& name, bool replace) const {
  absl::MutexLock lock(&mu_);
  return CheckNameLocked(name, replace);
}

absl::Status Catalog::CheckNameLocked(const std::string& name, bool replace) const {
  if (draining_) return absl::UnavailableError("server is shutting down");
  if (absl::Status s = ValidateLayerName(name); !s.ok()) return s;
  if (!replace && registry_.Contains(name)) {
    return absl::AlreadyExistsError(
        absl::StrCat("layer ", QuoteForMessage(name), " already exists; set replace to swap it"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Reservation> Catalog::Reserve(const std::string& name, const QuantParams& params,
                                             int64_t n, int64_t k, bool has_bias) {
  // The name's bytes are the layer's too (Layer::Info::bytes_held).
  const uint64_t bytes = Layer::PackedBytes(params, n, k, has_bias) + name.size();
  absl::Status s = budget_.TryReserve(bytes, absl::StrCat("layer ", QuoteForMessage(name)));
  if (!s.ok()) return s;
  return Reservation(&budget_, bytes);
}

absl::StatusOr<std::shared_ptr<const Layer>> Catalog::Publish(const LoadedLayer& layer,
                                                             LayerOrigin origin, bool replace,
                                                             uint64_t version) {
  auto reservation = Reserve(layer.name, layer.q.params, layer.q.n, layer.q.k, !layer.bias.empty());
  if (!reservation.ok()) return reservation.status();
  return Publish(layer, std::move(origin), replace, *std::move(reservation), version);
}

absl::StatusOr<std::shared_ptr<const Layer>> Catalog::Publish(const LoadedLayer& layer,
                                                             LayerOrigin origin, bool replace,
                                                             Reservation reservation,
                                                             uint64_t version) {
  // The one door: whatever path built it, no layer with a scale or bias
  // that is not finite is served.
  if (absl::Status s = ValidateQuantizedValues(layer.q); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", QuoteForMessage(layer.name), ": ", s.message()));
  }
  for (size_t i = 0; i < layer.bias.size(); ++i) {
    if (!std::isfinite(layer.bias[i])) {
      return absl::InvalidArgumentError(absl::StrCat("bias of layer ", QuoteForMessage(layer.name),
                                                     " must be finite; got ", layer.bias[i],
                                                     " at index ", i));
    }
  }
  CatalogEvent event;
  Listener listener;
  std::shared_ptr<const Layer> published;
  {
    absl::MutexLock lock(&mu_);
    absl::Status s = CheckNameLocked(layer.name, replace);
    if (!s.ok()) return s;
    if (version == 0) version = registry_.NextVersion();
    if (store_ != nullptr && origin.kind == OriginKind::kUpload) {
      s = store_->Put(layer, version);
      if (!s.ok()) return s;
      // The layer now lives in the state dir; a restart reads it from there.
      CrashPoint("catalog-after-store");
    } else if (store_ != nullptr && replace) {
      // A layer from elsewhere replacing a stored one: the stored copy must
      // not come back at the next start.
      s = store_->Remove(layer.name);
      if (!s.ok()) return s;
    }
    bool replacing = false;
    uint64_t replaced_version = 0;
    if (auto before = registry_.Get(layer.name); before.ok()) {
      replacing = true;
      replaced_version = before->layer->info().version;
    }
    published = Layer::Create(layer.name, layer.q, layer.bias, layer.report, version,
                              std::move(reservation), std::move(origin));
    // Cannot fail: the name was checked under the same lock.
    s = registry_.Publish(published, replace);
    if (!s.ok()) return s;
    const Layer::Info& info = published->info();
    event = {replacing ? CatalogEvent::Kind::kReplaced : CatalogEvent::Kind::kPublished,
             info.name, info.version, info.bytes_held, info.origin, replaced_version};
    listener = listener_;
  }
  Notify(listener, event);
  return published;
}

absl::Status Catalog::Unload(const std::string& name) {
  CatalogEvent event;
  Listener listener;
  {
    absl::MutexLock lock(&mu_);
    if (draining_) return absl::UnavailableError("server is shutting down");
    auto entry = registry_.Get(name);
    if (!entry.ok()) {
      return absl::NotFoundError(absl::StrCat("layer ", QuoteForMessage(name), " is not loaded"));
    }
    if (store_ != nullptr) {
      absl::Status s = store_->Remove(name);
      if (!s.ok()) return s;
      CrashPoint("catalog-after-remove");
    }
    absl::Status s = registry_.Unload(name);
    if (!s.ok()) return s;
    const Layer::Info& info = entry->layer->info();
    event = {CatalogEvent::Kind::kUnloaded, info.name, info.version, info.bytes_held,
             info.origin, 0};
    listener = listener_;
  }
  Notify(listener, event);
  return absl::OkStatus();
}

void Catalog::SetListener(Listener listener) {
  absl::MutexLock lock(&mu_);
  listener_ = std::move(listener);
}

void Catalog::Notify(const Listener& listener, const CatalogEvent& event) {
  if (listener) listener(event);
}

absl::string_view CatalogEventKindName(CatalogEvent::Kind kind) {
  switch (kind) {
    case CatalogEvent::Kind::kPublished:
      return "published";
    case CatalogEvent::Kind::kReplaced:
      return "replaced";
    case CatalogEvent::Kind::kUnloaded:
      return "unloaded";
  }
  return "unknown";
}

}  // namespace qlinear
