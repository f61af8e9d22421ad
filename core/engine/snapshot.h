// EngineSnapshot: one reading of the engine's state — the server's totals
// and, per layer, what it is and what it has served. It is the one source
// every consumer renders (the Stats RPC, the metrics endpoint and through
// Stats the CLI), so no two of them can disagree about a count.
//
//   EngineSnapshot s = engine.Snapshot();
//   for (const LayerSnapshot& l : s.layers) {
//     uint64_t ok = l.requests[static_cast<int>(absl::StatusCode::kOk)];
//   }
//
// Taking one is lock-free with respect to the Forward path (counters and
// histograms are read with relaxed loads; the catalog is listed under the
// registry's short lock), so it may be taken at any rate. The counters are
// not read at one instant: a request finishing during the read may show in
// one counter and not yet in another. Read twice while the engine is idle
// and the two agree exactly.
//
// A snapshot is a plain value: copy it, keep it, read it from any thread.
#ifndef QLINEAR_CORE_ENGINE_SNAPSHOT_H_
#define QLINEAR_CORE_ENGINE_SNAPSHOT_H_

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/engine/layer.h"
#include "core/engine/stats.h"

namespace qlinear {

// Counts by absl::StatusCode, indexed by the code's number (0..16).
using CodeCounts = CodeCounter::Counts;

// The OriginKinds in order, for indexing EngineSnapshot::layers_by_origin.
inline constexpr int kOriginKinds = 4;

struct LayerSnapshot {
  // What the layer is: name, version, origin, n, k, params, bytes held,
  // error report (when quantized here).
  Layer::Info info;
  // Forward requests (and their rows) by the code they were answered with.
  // Stats belong to the name: they survive a replace and go with Unload.
  CodeCounts requests{};
  CodeCounts rows{};
  // OK requests (and their rows) by the mode that ran, indexed by
  // Precision's value; they sum to requests[OK] / rows[OK].
  PrecisionCounter::Counts requests_by_precision{};
  PrecisionCounter::Counts rows_by_precision{};
  uint64_t batches = 0;
  Histogram::Snapshot batch_rows;  // rows per batch
  Histogram::Snapshot queue_us;    // admission to the first batch (or to the answer)
  Histogram::Snapshot compute_us;  // matrix products, OK requests only
  Histogram::Snapshot total_us;    // admission to the answer
};

struct EngineSnapshot {
  double uptime_s = 0;  // since the engine was created
  // Layers loaded now, in all and by OriginKind (always every layer, even
  // when `layers` below was narrowed to one).
  int64_t layer_count = 0;
  std::array<int64_t, kOriginKinds> layers_by_origin{};
  uint64_t bytes_held = 0;           // by every live layer version
  uint64_t memory_budget_bytes = 0;  // 0 = unlimited
  int64_t rows_queued = 0;
  int64_t batches_in_flight = 0;
  int threads = 0;
  std::string simd_target;  // the kernels' target, e.g. "avx512"
  // Forward requests for a layer that is not loaded, under one entry for
  // every such name (the names are never kept: unknown names must not grow
  // the snapshot or the metrics' label sets).
  CodeCounts not_loaded_requests{};
  CodeCounts not_loaded_rows{};
  // Upload streams (Quantize, LoadQuantized) by the code they ended with.
  CodeCounts uploads{};
  // Calls the Authorizer refused, by plane and code (server/auth.h).
  CodeCounts data_refusals{};
  CodeCounts admin_refusals{};
  // Requests whose bytes did not parse, by RPC ("Forward", "Quantize",
  // "LoadQuantized"); only the server's own method names are keys.
  std::map<std::string, uint64_t> malformed_requests;
  // Every layer, sorted by name, or the one asked for.
  std::vector<LayerSnapshot> layers;
};

}  // namespace qlinear

#endif  // QLINEAR_CORE_ENGINE_SNAPSHOT_H_
