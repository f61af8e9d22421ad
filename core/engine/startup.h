// Startup: the layers a server serves when it starts, loaded in one place.
//
// In order: the state dir is opened and locked (a second server on it
// fails here, naming the holder); every --model checkpoint is opened and
// validated, and two sources giving the same layer name are an error naming
// both; the state dir is read (a damaged or foreign file is named in the
// notes and skipped); then every layer is published through the catalog:
// --model layers with origin "model" unless the state dir holds the same
// name (the state dir's wins: it was a later, explicit upload; a note says
// so), state-dir layers with origin "state" and their stored versions.
// Versions continue above the largest stored one. The demo layer is served
// only when there is neither a --model nor a state dir.
//
// Any error (a malformed checkpoint, a layer that does not fit the memory
// budget) is returned before the server reports SERVING: a server serves a
// whole folder or nothing.
//
// Thread safety: call once, before serving.
#ifndef QLINEAR_CORE_ENGINE_STARTUP_H_
#define QLINEAR_CORE_ENGINE_STARTUP_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/checkpoint.h"
#include "core/engine/engine.h"

namespace qlinear {

struct StartupOptions {
  std::vector<std::string> models;  // --model paths (files or folders)
  CheckpointOptions checkpoint;     // how float weights are quantized
  std::string state_dir;            // empty: no durable store
};

// LoadAtStart publishes the start-up layers into `engine`; `notes` receives
// one line per warning (skipped tensors, ignored overrides, damaged state
// files, state-dir layers that win over a --model one).
absl::Status LoadAtStart(Engine* engine, const StartupOptions& options,
                         std::vector<std::string>* notes);

// DemoLayer is the built-in demo: 4096x4096, affine b4 g64, seeded random
// float16 weights N(0, 1/64^2) (as in qlinear_kernel_bench), so its scales
// and biases are float16 too.
absl::StatusOr<LoadedLayer> DemoLayer();

}  // namespace qlinear

#endif  // QLINEAR_CORE_ENGINE_STARTUP_H_
