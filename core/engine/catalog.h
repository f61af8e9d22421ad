// Catalog: the one owner of a layer's life. Every publish, replace and
// unload goes through it — server start (--model, --state-dir, the demo
// layer), the upload RPCs and UnloadLayer — and nothing else touches the
// registry or the memory budget.
//
// With a LayerStore attached (--state-dir), a layer that arrives by upload
// is written to the store and synced before it becomes visible, and
// Publish answers only after both: a layer a client was told is published
// survives a crash. Unload removes the stored file before the layer goes.
// A store write that fails publishes nothing and returns its status.
//
// Versions are handed out once: 1, 2, ... above anything the store holds
// (SeedVersions), so a version number never names two different layers.
//
// Admission: every method that changes the catalog returns UNAVAILABLE once
// StartDraining has been called. Publish returns ALREADY_EXISTS when the
// name is taken and `replace` is false, RESOURCE_EXHAUSTED when the bytes do
// not fit the budget, INVALID_ARGUMENT for a bias that is not finite or a
// name outside core/names.h's rule (checked before anything is reserved); Unload and Get return NOT_FOUND for an unknown name.
//
// Thread safety: all methods may be called concurrently. Changes are
// serialised by one mutex (they are rare and may write to disk); Get and
// List, on the Forward path, only take the registry's short lock.
//
// Events: a listener (SetListener) hears of every change that took effect —
// publish, replace, unload, whoever made it — after the change and outside
// the catalog's mutex, on the thread that made it. Core logs nothing; the
// server's listener does. Two concurrent changes may be heard in either
// order; their versions tell them apart.
#ifndef QLINEAR_CORE_ENGINE_CATALOG_H_
#define QLINEAR_CORE_ENGINE_CATALOG_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/checkpoint.h"
#include "core/engine/layer.h"
#include "core/engine/layer_store.h"
#include "core/engine/registry.h"

namespace qlinear {

// CatalogEvent: one change that took effect, as a listener hears it.
struct CatalogEvent {
  enum class Kind { kPublished, kReplaced, kUnloaded };
  Kind kind = Kind::kPublished;
  std::string name;
  // The version published (kPublished, kReplaced) or removed (kUnloaded),
  // with the bytes it holds and where it came from.
  uint64_t version = 0;
  uint64_t bytes = 0;
  LayerOrigin origin;
  uint64_t replaced_version = 0;  // kReplaced: the version it displaced
};

// CatalogEventKindName returns "published", "replaced" or "unloaded".
absl::string_view CatalogEventKindName(CatalogEvent::Kind kind);

class Catalog {
 public:
  using Listener = std::function<void(const CatalogEvent&)>;

  // max_memory_bytes == 0 means unlimited.
  explicit Catalog(uint64_t max_memory_bytes);

  // AttachStore makes `store` the durable copy of uploads (ownership
  // transferred). Call before serving.
  void AttachStore(std::unique_ptr<LayerStore> store);
  bool has_store() const { return store_ != nullptr; }
  // SeedVersions makes every later version larger than `version`.
  void SeedVersions(uint64_t version);
  // SetListener makes `listener` hear every later change (replacing any
  // earlier one; an empty function stops it). It runs on the changing
  // thread after the change, with no catalog lock held, and must not call
  // back into the catalog's changing methods. Call before the first change.
  void SetListener(Listener listener);

  // CheckName returns what Publish would for the name alone: UNAVAILABLE
  // when draining, INVALID_ARGUMENT for a name ValidateLayerName refuses
  // (core/names.h), ALREADY_EXISTS when
  // taken and !replace. Uploads call it before receiving any weights.
  absl::Status CheckName(const std::string& name, bool replace) const;
  // Reserve holds the most bytes a layer of this shape and name can take,
  // the name's bytes included (uploads
  // reserve before the weights arrive). RESOURCE_EXHAUSTED naming the layer,
  // the budget and what is held when they do not fit.
  absl::StatusOr<Reservation> Reserve(const std::string& name, const QuantParams& params,
                                      int64_t n, int64_t k, bool has_bias);

  // Publish makes `layer` current under its name, from `origin`, holding
  // `reservation` (from Reserve for this shape). With a store attached and an
  // upload origin, the layer is stored durably first. `version` 0 takes the
  // next version; a state-dir layer keeps its stored one.
  absl::StatusOr<std::shared_ptr<const Layer>> Publish(const LoadedLayer& layer,
                                                      LayerOrigin origin, bool replace,
                                                      Reservation reservation,
                                                      uint64_t version = 0);
  // Publish reserving its own bytes.
  absl::StatusOr<std::shared_ptr<const Layer>> Publish(const LoadedLayer& layer,
                                                      LayerOrigin origin, bool replace,
                                                      uint64_t version = 0);

  // Unload removes the layer (and its stored file). In-flight work on it
  // finishes on the version it holds.
  absl::Status Unload(const std::string& name);

  absl::StatusOr<LayerRegistry::Entry> Get(const std::string& name) const {
    return registry_.Get(name);
  }
  bool Contains(const std::string& name) const { return registry_.Contains(name); }
  std::vector<LayerRegistry::Entry> List() const { return registry_.List(); }

  uint64_t bytes_held() const { return budget_.used(); }
  uint64_t memory_limit() const { return budget_.limit(); }

  void StartDraining() { draining_ = true; }
  bool draining() const { return draining_; }

 private:
  absl::Status CheckNameLocked(const std::string& name, bool replace) const;
  // Notify hands `event` to the listener taken under mu_ (empty: none).
  static void Notify(const Listener& listener, const CatalogEvent& event);

  mutable absl::Mutex mu_;  // serialises changes (and store writes)
  MemoryBudget budget_;
  LayerRegistry registry_;
  std::unique_ptr<LayerStore> store_ ABSL_GUARDED_BY(mu_);
  Listener listener_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> draining_{false};
};

}  // namespace qlinear

#endif  // QLINEAR_CORE_ENGINE_CATALOG_H_
