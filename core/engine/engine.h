// Engine: the in-process serving core. It owns the catalog of layers (with
// the memory budget and, with --state-dir, the durable store), one dynamic
// batcher per layer and the oneTBB arena that runs the
// batches. No gRPC here: the server translates to and from it.
//
// Batching: each layer has a FIFO queue of requests. One dispatcher thread
// takes turns among layers with queued work; as soon as the compute slot is
// free it takes up to max_batch_rows rows of the next layer (splitting a
// request larger than that across batches), optionally waiting up to
// max_batch_delay_us for more, and runs them as one matrix product on all
// threads. Because the kernels are batch-invariant, a row's result is the
// same bits whoever it shares a batch with.
//
// Admission: Submit refuses with RESOURCE_EXHAUSTED when the queued rows
// would exceed max_queue_rows, and with UNAVAILABLE while draining. Requests
// whose deadline passes or that are cancelled while queued are answered
// DEADLINE_EXCEEDED / CANCELLED without compute.
//
// Thread safety: every method may be called from any thread.
#ifndef QLINEAR_CORE_ENGINE_ENGINE_H_
#define QLINEAR_CORE_ENGINE_ENGINE_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/dtype.h"
#include "core/engine/layer.h"
#include "core/engine/catalog.h"

namespace qlinear {

class Engine {
 public:
  using Clock = std::chrono::steady_clock;

  struct Options {
    // Threads of the compute arena; 0 = every core.
    int threads = 0;
    // Most rows one batch takes (1 disables batching).
    int64_t max_batch_rows = 128;
    // How long a non-full batch may wait for more rows; 0 = never wait.
    int64_t max_batch_delay_us = 0;
    // Most rows queued over all layers before Submit refuses.
    int64_t max_queue_rows = 8192;
    // Bytes all layers may hold; 0 = unlimited.
    uint64_t max_memory_bytes = 0;
  };

  struct ForwardRequest {
    std::string layer;
    DType x_dtype = DType::kF32;
    const void* x = nullptr;  // [rows, k]; borrowed until `done` runs
    int64_t rows = 0;
    int64_t k = 0;
    DType y_dtype = DType::kF32;
    Clock::time_point deadline = Clock::time_point::max();
    std::function<bool()> cancelled;  // optional; polled while queued
  };

  struct ForwardResult {
    absl::Status status;
    std::vector<uint8_t> y;  // [rows, n] of y_dtype when OK
    int64_t n = 0;
    uint64_t version = 0;
    int64_t queue_us = 0;
    int64_t compute_us = 0;
    int64_t batch_rows = 0;      // largest batch this request rode in
    int64_t batch_requests = 0;  // requests in that batch
  };
  using Done = std::function<void(ForwardResult)>;

  static absl::StatusOr<std::unique_ptr<Engine>> Create(const Options& options);
  // Stops the dispatcher; queued requests are answered UNAVAILABLE.
  ~Engine();

  const Options& options() const { return options_; }
  int threads() const;
  // catalog() is the one door through which layers are published,
  // replaced and unloaded.
  Catalog& catalog() { return catalog_; }
  const Catalog& catalog() const { return catalog_; }

  // Submit queues a forward pass. On OK, `done` runs exactly once, later, on
  // the dispatcher thread (keep it short: copy out and finish). Otherwise it
  // never runs: NOT_FOUND (unknown layer), INVALID_ARGUMENT (dtype, K or row
  // count), RESOURCE_EXHAUSTED (queue full), UNAVAILABLE (draining).
  absl::Status Submit(ForwardRequest request, Done done);

  // Drain stops admission, then waits until every accepted request is
  // answered or `deadline` passes; then the ones still queued are answered
  // UNAVAILABLE. Returns true when all finished normally.
  bool Drain(Clock::time_point deadline);

  int64_t queued_rows() const;
  // draining() is true once Drain has started.
  bool draining() const;

 private:
  struct Impl;
  explicit Engine(const Options& options);

  Options options_;
  Catalog catalog_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qlinear

#endif  // QLINEAR_CORE_ENGINE_ENGINE_H_
