#include "core/engine/startup.h"

#include <map>
#include <random>

#include "absl/strings/str_cat.h"
#include "core/names.h"
#include "core/half.h"
#include "core/status_macros.h"

namespace qlinear {

absl::StatusOr<LoadedLayer> DemoLayer() {
  const int64_t n = 4096, k = 4096;
  std::mt19937_64 rng(0);
  std::normal_distribution<float> normal(0.0f, 1.0f / 64.0f);
  std::vector<uint16_t> w(static_cast<size_t>(n * k));
  for (uint16_t& v : w) v = FloatToHalfBits(normal(rng));
  LoadedLayer layer;
  layer.name = "demo";
  QLINEAR_ASSIGN_OR_RETURN(layer.q, Quantize({QuantMode::kAffine, 4, 64}, DType::kF16, w.data(), n, k));
  layer.report = ComputeErrorReport(layer.q, DType::kF16, w.data());
  return layer;
}

absl::Status LoadAtStart(Engine* engine, const StartupOptions& options,
                         std::vector<std::string>* notes) {
  Catalog& catalog = engine->catalog();
  std::unique_ptr<LayerStore> store;
  if (!options.state_dir.empty()) {
    QLINEAR_ASSIGN_OR_RETURN(store, LayerStore::Open(options.state_dir));
  }

  // Every checkpoint is validated before the first layer is published.
  std::vector<std::unique_ptr<Checkpoint>> models;
  std::map<std::string, std::string> source_of;  // layer -> --model path
  for (const std::string& path : options.models) {
    auto checkpoint = Checkpoint::Open(path, options.checkpoint);
    if (!checkpoint.ok()) {
      return absl::Status(checkpoint.status().code(),
                          absl::StrCat("--model '", path, "': ", checkpoint.status().message()));
    }
    for (const std::string& w : (*checkpoint)->warnings()) {
      notes->push_back(absl::StrCat("--model '", path, "': ", w));
    }
    for (const SkippedTensor& s : (*checkpoint)->skipped()) {
      notes->push_back(absl::StrCat("--model '", path, "': '", s.tensor, "' not served: ", s.reason));
    }
    for (const CheckpointLayer& layer : (*checkpoint)->layers()) {
      // Before any layer is read: a name the catalog would refuse fails the
      // start naming the file.
      if (absl::Status valid = ValidateLayerName(layer.name); !valid.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("--model '", path, "': ", valid.message()));
      }
      auto [it, inserted] = source_of.emplace(layer.name, path);
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat("layer '", layer.name, "' is in both --model '",
                                                       it->second, "' and --model '", path, "'"));
      }
    }
    models.push_back(*std::move(checkpoint));
  }

  LayerStore::Contents stored;
  if (store != nullptr) {
    QLINEAR_ASSIGN_OR_RETURN(stored, store->Load());
    for (const std::string& p : stored.problems) {
      notes->push_back(absl::StrCat("--state-dir '", options.state_dir, "': skipped ", p));
    }
    catalog.SeedVersions(stored.max_version);
  }
  std::map<std::string, const LayerStore::StoredLayer*> in_state;
  for (const LayerStore::StoredLayer& s : stored.layers) in_state[s.layer.name] = &s;

  for (const auto& checkpoint : models) {
    for (const CheckpointLayer& layer : checkpoint->layers()) {
      if (auto it = in_state.find(layer.name); it != in_state.end()) {
        notes->push_back(absl::StrCat("layer '", layer.name, "' of --model '", checkpoint->path(),
                                      "' is served from the state dir instead (version ",
                                      it->second->version, ", a later upload)"));
        continue;
      }
      QLINEAR_ASSIGN_OR_RETURN(LoadedLayer loaded, checkpoint->Load(layer));
      auto published =
          catalog.Publish(loaded, LayerOrigin{OriginKind::kModel, checkpoint->path()}, false);
      if (!published.ok()) {
        return absl::Status(published.status().code(),
                            absl::StrCat("--model '", checkpoint->path(), "': ",
                                         published.status().message()));
      }
    }
  }
  for (const LayerStore::StoredLayer& s : stored.layers) {
    // A layer stored by a server older than the name rule: its file stays
    // on disk, not served (remove the file to drop it for good).
    if (absl::Status valid = ValidateLayerName(s.layer.name); !valid.ok()) {
      notes->push_back(absl::StrCat("--state-dir '", options.state_dir, "': skipped '", s.file,
                                    "': ", valid.message()));
      continue;
    }
    auto published = catalog.Publish(s.layer, LayerOrigin{OriginKind::kState, s.file}, false,
                                     s.version);
    if (!published.ok()) {
      return absl::Status(published.status().code(),
                          absl::StrCat("--state-dir '", options.state_dir, "': '", s.file,
                                       "': ", published.status().message()));
    }
  }
  if (store != nullptr) catalog.AttachStore(std::move(store));
  if (options.models.empty() && options.state_dir.empty()) {
    QLINEAR_ASSIGN_OR_RETURN(LoadedLayer demo, DemoLayer());
    QLINEAR_RETURN_IF_ERROR(
        catalog.Publish(demo, LayerOrigin{OriginKind::kBuiltin, ""}, false).status());
  }
  return absl::OkStatus();
}

}  // namespace qlinear
