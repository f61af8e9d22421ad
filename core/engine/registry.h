// LayerRegistry: name -> the published version of a layer and its stats.
// The engine's Catalog owns it: nothing else publishes or unloads.
//
// Publishing or replacing swaps an immutable shared_ptr: work already holding
// the old version finishes on it, and its memory is released when the last
// holder lets go. Stats belong to the name and survive replacement; they go
// with Unload.
//
// Thread safety: all methods are safe to call concurrently.
#ifndef QLINEAR_CORE_ENGINE_REGISTRY_H_
#define QLINEAR_CORE_ENGINE_REGISTRY_H_

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/engine/layer.h"
#include "core/engine/stats.h"

namespace qlinear {

class LayerRegistry {
 public:
  struct Entry {
    std::shared_ptr<const Layer> layer;
    std::shared_ptr<LayerStats> stats;
  };

  // Publish makes `layer` current under its name. ALREADY_EXISTS when the
  // name is taken and `replace` is false.
  absl::Status Publish(std::shared_ptr<const Layer> layer, bool replace);
  // Get returns the current version; NOT_FOUND naming the layer otherwise.
  absl::StatusOr<Entry> Get(const std::string& name) const;
  // Contains tells whether `name` is published now.
  bool Contains(const std::string& name) const;
  // Unload removes the name; NOT_FOUND when absent.
  absl::Status Unload(const std::string& name);
  // List returns every current entry, sorted by name.
  std::vector<Entry> List() const;
  // NextVersion hands out increasing version numbers (1, 2, ...).
  uint64_t NextVersion() { return next_version_.fetch_add(1) + 1; }
  // SeedVersions makes every later NextVersion larger than `version`.
  void SeedVersions(uint64_t version);

 private:
  mutable absl::Mutex mu_;
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> next_version_{0};
};

}  // namespace qlinear

#endif  // QLINEAR_CORE_ENGINE_REGISTRY_H_
