#include "core/engine/registry.h"

#include "absl/strings/str_cat.h"
#include "core/names.h"

namespace qlinear {

absl::Status LayerRegistry::Publish(std::shared_ptr<const Layer> layer, bool replace) {
  std::shared_ptr<const Layer> old;  // released outside the lock
  absl::MutexLock lock(&mu_);
  const std::string& name = layer->info().name;
  auto it = entries_.find(name);
  if (it != entries_.end()) {
    if (!replace) {
      return absl::AlreadyExistsError(absl::StrCat(
          "layer '", name, "' already exists (version ", it->second.layer->info().version,
          "); set replace to swap it"));
    }
    old = std::move(it->second.layer);
    it->second.layer = std::move(layer);
    return absl::OkStatus();
  }
  entries_[name] = Entry{std::move(layer), std::make_shared<LayerStats>()};
  return absl::OkStatus();
}

absl::StatusOr<LayerRegistry::Entry> LayerRegistry::Get(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    return absl::NotFoundError(absl::StrCat("layer ", QuoteForMessage(name), " is not loaded"));
  }
  return it->second;
}

bool LayerRegistry::Contains(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  return entries_.count(name) > 0;
}

absl::Status LayerRegistry::Unload(const std::string& name) {
  Entry old;  // released outside the lock
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    return absl::NotFoundError(absl::StrCat("layer ", QuoteForMessage(name), " is not loaded"));
  }
  old = std::move(it->second);
  entries_.erase(it);
  return absl::OkStatus();
}

void LayerRegistry::SeedVersions(uint64_t version) {
  uint64_t current = next_version_.load();
  while (current < version && !next_version_.compare_exchange_weak(current, version)) {
  }
}

std::vector<LayerRegistry::Entry> LayerRegistry::List() const {
  absl::MutexLock lock(&mu_);
  std::vector<Entry> out;
  for (const auto& [name, entry] : entries_) out.push_back(entry);
  return out;
}

}  // namespace qlinear
