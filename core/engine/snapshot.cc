// Engine::Snapshot and the counters it reads (core/engine/snapshot.h).
#include "core/engine/snapshot.h"

#include <chrono>

#include "core/engine/engine.h"
#include "core/kernels/qmm.h"

namespace qlinear {
namespace {

LayerSnapshot ReadLayer(const LayerRegistry::Entry& entry) {
  LayerSnapshot out;
  out.info = entry.layer->info();
  const LayerStats& st = *entry.stats;
  out.requests = st.requests().Read();
  out.rows = st.rows().Read();
  out.requests_by_precision = st.requests_by_precision().Read();
  out.rows_by_precision = st.rows_by_precision().Read();
  out.batches = st.batches();
  out.batch_rows = st.batch_rows.Read();
  out.queue_us = st.queue_us.Read();
  out.compute_us = st.compute_us.Read();
  out.total_us = st.total_us.Read();
  return out;
}

}  // namespace

EngineSnapshot Engine::ReadSnapshot(const LayerRegistry::Entry* only) const {
  EngineSnapshot s;
  s.uptime_s = std::chrono::duration<double>(Clock::now() - created_).count();
  const std::vector<LayerRegistry::Entry> all = catalog_.List();
  s.layer_count = static_cast<int64_t>(all.size());
  for (const LayerRegistry::Entry& e : all) {
    ++s.layers_by_origin[static_cast<size_t>(e.layer->info().origin.kind)];
  }
  if (only != nullptr) {
    s.layers.push_back(ReadLayer(*only));
  } else {
    s.layers.reserve(all.size());
    for (const LayerRegistry::Entry& e : all) s.layers.push_back(ReadLayer(e));
  }
  s.bytes_held = catalog_.bytes_held();
  s.memory_budget_bytes = catalog_.memory_limit();
  s.rows_queued = queued_rows();
  s.batches_in_flight = batches_in_flight();
  s.threads = threads();
  s.simd_target = std::string(SimdTargetName(DefaultSimdTarget()));
  s.not_loaded_requests = not_loaded_requests_.Read();
  s.not_loaded_rows = not_loaded_rows_.Read();
  s.uploads = uploads_.Read();
  s.data_refusals = data_refusals_.Read();
  s.admin_refusals = admin_refusals_.Read();
  {
    absl::MutexLock lock(&malformed_mu_);
    s.malformed_requests.insert(malformed_.begin(), malformed_.end());
  }
  return s;
}

EngineSnapshot Engine::Snapshot() const { return ReadSnapshot(nullptr); }

absl::StatusOr<EngineSnapshot> Engine::Snapshot(const std::string& layer) const {
  auto entry = catalog_.Get(layer);
  if (!entry.ok()) return entry.status();
  return ReadSnapshot(&*entry);
}

void Engine::RecordRejected(const std::string& layer, absl::StatusCode code) {
  auto entry = catalog_.Get(layer);
  if (entry.ok()) {
    entry->stats->RecordRequest(code, 0);
  } else {
    not_loaded_requests_.Add(code);
  }
}

}  // namespace qlinear
