#include "core/engine/engine.h"

#include <algorithm>
#include <cstring>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/engine/batcher.h"
#include "core/half.h"
#include "core/names.h"
#include "core/kernels/qmm.h"
#include "tbb/info.h"
#include "tbb/task_arena.h"

namespace qlinear {
namespace {

int64_t MicrosBetween(qlinear::Clock::TimePoint a, qlinear::Clock::TimePoint b) {
  return std::chrono::duration_cast<std::chrono::microseconds>(b - a).count();
}

// One accepted request: what the batcher queues, split across batches when
// it is larger than one.
struct Task final : BatchTask {
  Engine::ForwardRequest request;
  Engine::Done done;
  LayerRegistry::Entry entry;  // the version pinned at admission
  Precision precision = Precision::kExact;  // the effective one, for `entry`
  qlinear::Clock::TimePoint enqueued;
  // result.y is allocated at Submit: two slots may write disjoint rows of it
  // at once. The rest of `result` is written under `mu` while slices run,
  // then read by Answer alone (the batcher answers after the last slice).
  Engine::ForwardResult result;
  std::mutex mu;
  bool started = false;  // its first rows ran (queue_us is set)
};

}  // namespace

struct Engine::Impl {
  Impl(int threads, int slots, qlinear::Clock* clock)
      : clock(clock), arena(threads), scratch(static_cast<size_t>(slots)) {}

  qlinear::Clock* const clock;
  // One arena of `threads` for every slot (one master slot, as TBB's
  // default): a batch in flight uses every thread while the others gather,
  // scatter or answer, and batches that compute at once share the threads
  // (a slot that finds the arena full hands its product to the arena's
  // threads and waits). Measured on 2 cores, 2 slots: better than an arena
  // with a master slot per slot (threads + slots - 1 threads).
  tbb::task_arena arena;
  // Per slot (Batch::slot): the gathered rows and the batch's product.
  struct Scratch {
    std::vector<float> x, y;
  };
  std::vector<Scratch> scratch;
  std::unique_ptr<Batcher> batcher;

  void RunBatch(const Batcher::Batch& batch);
  // Answer is the batcher's Done: stats, then the task's `done`.
  void Answer(std::unique_ptr<BatchTask> base, absl::Status status);
};

void Engine::Impl::RunBatch(const Batcher::Batch& batch) {
  const Task& first = *static_cast<const Task*>(batch.slices.front().task);
  const Layer& layer = *first.entry.layer;
  const int64_t k = layer.info().k;
  const int64_t n = layer.info().n;
  const int64_t batch_rows = batch.rows;
  Scratch& s = scratch[static_cast<size_t>(batch.slot)];
  // Gather every slice's rows as float32 (exact), whatever its dtype.
  s.x.resize(static_cast<size_t>(batch_rows * k));
  int64_t row = 0;
  for (const Batcher::Slice& slice : batch.slices) {
    const ForwardRequest& req = static_cast<const Task*>(slice.task)->request;
    float* dst = s.x.data() + row * k;
    if (req.x_dtype == DType::kF32) {
      std::memcpy(dst, static_cast<const float*>(req.x) + slice.row0 * k,
                  static_cast<size_t>(slice.rows * k) * 4);
    } else {
      for (int64_t i = 0; i < slice.rows * k; ++i) {
        dst[i] = LoadFloat(req.x_dtype, req.x, static_cast<size_t>(slice.row0 * k + i));
      }
    }
    row += slice.rows;
  }
  s.y.resize(static_cast<size_t>(batch_rows * n));
  const auto start = clock->Now();
  MatmulOptions mo;
  mo.arena = &arena;
  mo.precision = batch.precision;
  QuantizedMatmul(layer.packed(), DType::kF32, s.x.data(), batch_rows, layer.bias(), DType::kF32,
                  s.y.data(), mo);
  const int64_t compute_us = MicrosBetween(start, clock->Now());
  first.entry.stats->RecordBatch(batch_rows);
  // Scatter: each slice writes only its own rows of its task's answer.
  row = 0;
  for (const Batcher::Slice& slice : batch.slices) {
    Task& task = *static_cast<Task*>(slice.task);
    ForwardResult& r = task.result;
    const DType yd = task.request.y_dtype;
    const float* src = s.y.data() + row * n;
    if (yd == DType::kF32) {
      std::memcpy(r.y.data() + static_cast<size_t>(slice.row0 * n) * 4, src,
                  static_cast<size_t>(slice.rows * n) * 4);
    } else {
      for (int64_t i = 0; i < slice.rows * n; ++i) {
        StoreFloat(yd, r.y.data(), static_cast<size_t>(slice.row0 * n + i), src[i]);
      }
    }
    row += slice.rows;
    std::lock_guard<std::mutex> lock(task.mu);
    if (slice.row0 == 0) {
      task.started = true;
      r.queue_us = MicrosBetween(task.enqueued, batch.cut);
    }
    r.compute_us += compute_us;
    if (batch_rows > r.batch_rows) {
      r.batch_rows = batch_rows;
      r.batch_requests = static_cast<int64_t>(batch.slices.size());
    }
  }
}

void Engine::Impl::Answer(std::unique_ptr<BatchTask> base, absl::Status status) {
  std::unique_ptr<Task> task(static_cast<Task*>(base.release()));
  const auto now = clock->Now();
  ForwardResult& r = task->result;
  r.status = std::move(status);
  if (!r.status.ok()) {
    r.y.clear();
    r.y.shrink_to_fit();
  }
  r.version = task->entry.layer->info().version;
  r.stats = task->entry.stats;
  if (!task->started) r.queue_us = MicrosBetween(task->enqueued, now);
  r.precision = task->precision;
  LayerStats& stats = *task->entry.stats;
  stats.RecordRequest(r.status.code(), task->request.rows, task->precision);
  stats.queue_us.Record(static_cast<double>(r.queue_us));
  if (r.status.ok()) stats.compute_us.Record(static_cast<double>(r.compute_us));
  stats.total_us.Record(static_cast<double>(MicrosBetween(task->enqueued, now)));
  // The batcher counted it answered before calling Done: once a client
  // holds its answer, it is not "unanswered" to anyone who looks.
  task->done(std::move(r));
}

int Engine::AutomaticSlots(int threads) { return std::max(1, std::min(threads, 2)); }

Engine::Engine(const Options& options)
    : options_(options), catalog_(options.max_memory_bytes), created_(Clock::now()) {}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const Options& options) {
  if (options.threads < 0 || options.slots < 0 || options.max_batch_rows < 1 ||
      options.max_batch_delay_us < 0 || options.max_queue_rows < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "engine options: need threads >= 0, slots >= 0, max_batch_rows >= 1, "
        "max_batch_delay_us >= 0, max_queue_rows >= 1; got ", options.threads, ", ",
        options.slots, ", ", options.max_batch_rows, ", ", options.max_batch_delay_us, ", ",
        options.max_queue_rows));
  }
  std::unique_ptr<Engine> engine(new Engine(options));
  const int threads = options.threads > 0 ? options.threads : tbb::info::default_concurrency();
  const int slots = options.slots > 0 ? options.slots : AutomaticSlots(threads);
  qlinear::Clock* clock = options.clock != nullptr ? options.clock : qlinear::Clock::Real();
  engine->impl_ = std::make_unique<Impl>(threads, slots, clock);
  Batcher::Options bo;
  bo.max_batch_rows = options.max_batch_rows;
  bo.max_batch_delay_us = options.max_batch_delay_us;
  bo.max_queue_rows = options.max_queue_rows;
  bo.slots = slots;
  bo.clock = clock;
  Impl* impl = engine->impl_.get();
  auto batcher = Batcher::Create(
      bo, [impl](const Batcher::Batch& batch) { impl->RunBatch(batch); },
      [impl](std::unique_ptr<BatchTask> task, absl::Status status) {
        impl->Answer(std::move(task), std::move(status));
      });
  if (!batcher.ok()) return batcher.status();
  impl->batcher = *std::move(batcher);
  return engine;
}

Engine::~Engine() {
  if (impl_ != nullptr && impl_->batcher != nullptr) impl_->batcher->Stop();
}

int Engine::threads() const { return impl_->arena.max_concurrency(); }

int Engine::slots() const { return impl_->batcher->options().slots; }

int64_t Engine::queued_rows() const { return impl_->batcher->queued_rows(); }

bool Engine::draining() const { return impl_->batcher->draining(); }

int64_t Engine::batches_in_flight() const { return impl_->batcher->batches_in_flight(); }

absl::Status Engine::Check(const ForwardRequest& request) const {
  auto entry = catalog_.Get(request.layer);
  if (!entry.ok()) return entry.status();
  return CheckAgainst(request, entry->layer->info());
}

absl::Status Engine::CheckAgainst(const ForwardRequest& request, const Layer::Info& info) const {
  // No mode outside --precisions ever runs: neither the one asked for nor
  // the one it becomes on this layer (INT8 on mxfp8 runs BF16).
  if (!options_.precisions.contains(request.precision)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "precision ", PrecisionName(request.precision), " is not enabled on this server (--precisions ",
        options_.precisions.ToString(), ")"));
  }
  const Precision runs = EffectivePrecision(info.params, request.precision);
  if (!options_.precisions.contains(runs)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "precision ", PrecisionName(request.precision), " runs as ", PrecisionName(runs), " on ",
        QuantModeName(info.params.mode), " layer ", QuoteForMessage(info.name), ", and ",
        PrecisionName(runs), " is not enabled on this server (--precisions ",
        options_.precisions.ToString(), ")"));
  }
  if (!IsFloatDType(request.x_dtype) || !IsFloatDType(request.y_dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "input and output dtypes must be F32, F16 or BF16; got ", DTypeName(request.x_dtype),
        " and ", DTypeName(request.y_dtype)));
  }
  if (request.k != info.k) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer ", QuoteForMessage(info.name), " expects input [..., ", info.k, "]; got [..., ", request.k, "]"));
  }
  if (request.rows < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("input must hold at least one row of ", info.k, "; got ", request.rows));
  }
  if (request.max_answer_bytes != 0) {
    // rows * n * size + overhead > max, without overflowing.
    const uint64_t row_bytes = static_cast<uint64_t>(info.n) * DTypeSize(request.y_dtype);
    const uint64_t overhead = request.answer_overhead_bytes;
    const uint64_t max = request.max_answer_bytes;
    const uint64_t r = static_cast<uint64_t>(request.rows);
    if (overhead > max || r > (max - overhead) / row_bytes) {
      const long double answer = static_cast<long double>(r) * static_cast<long double>(row_bytes) +
                                 static_cast<long double>(overhead);
      return absl::ResourceExhaustedError(absl::StrCat(
          "the answer would be ", absl::StrFormat("%.0Lf", answer), " bytes ([", request.rows, ", ",
          info.n, "] of ", DTypeName(request.y_dtype), " and ", overhead,
          " more), over the response limit of ", max,
          " bytes (--max-message-mb); send fewer rows per request"));
    }
  }
  return absl::OkStatus();
}

absl::Status Engine::Submit(ForwardRequest request, Done done) {
  auto entry = catalog_.Get(request.layer);
  if (!entry.ok()) {
    // One entry for every unknown name: a client must not grow the stats.
    not_loaded_requests_.Add(entry.status().code());
    not_loaded_rows_.Add(entry.status().code(),
                         static_cast<uint64_t>(std::max<int64_t>(request.rows, 0)));
    return entry.status();
  }
  const Layer::Info& info = entry->layer->info();
  const std::shared_ptr<LayerStats> stats = entry->stats;
  const int64_t rows = request.rows;
  auto reject = [&](absl::Status status) {
    stats->RecordRequest(status.code(), rows);
    return status;
  };
  if (absl::Status checked = CheckAgainst(request, info); !checked.ok()) return reject(checked);
  auto task = std::make_unique<Task>();
  task->entry = *entry;
  task->precision = EffectivePrecision(info.params, request.precision);
  task->done = std::move(done);
  task->result.n = info.n;
  // More rows than the whole queue holds are refused by the batcher below
  // (naming --max-queue-rows): no answer to allocate for them.
  if (request.rows <= options_.max_queue_rows) {
    task->result.y.resize(static_cast<size_t>(request.rows * info.n) * DTypeSize(request.y_dtype));
  }
  task->enqueued = impl_->clock->Now();
  const int64_t rows_asked = request.rows;
  const Clock::time_point deadline = request.deadline;
  std::function<bool()> cancelled = request.cancelled;
  task->request = std::move(request);
  Batcher::Request queued{task->request.layer, info.version, task->precision, rows_asked, deadline,
                          std::move(cancelled)};
  std::unique_ptr<BatchTask> base = std::move(task);
  const absl::Status queued_status = impl_->batcher->Submit(std::move(queued), &base);
  if (!queued_status.ok()) return reject(queued_status);
  return absl::OkStatus();
}

void Engine::RecordUndelivered(const ForwardResult& result, int64_t rows, absl::StatusCode code) {
  if (result.stats == nullptr || result.status.code() == code) return;
  result.stats->Reclassify(result.status.code(), code, rows, result.precision);
}

void Engine::RecordMalformed(absl::string_view rpc) {
  absl::MutexLock lock(&malformed_mu_);
  auto it = malformed_.find(rpc);
  if (it == malformed_.end()) it = malformed_.emplace(std::string(rpc), 0).first;
  ++it->second;
}

Engine::Clock::time_point Engine::Now() const { return impl_->clock->Now(); }

int64_t Engine::unanswered() const { return impl_->batcher->unanswered(); }

bool Engine::Drain(Clock::time_point deadline, DrainCounts* counts) {
  catalog_.StartDraining();
  Batcher::DrainCounts c;
  const bool drained = impl_->batcher->Drain(deadline, &c);
  if (counts != nullptr) {
    counts->pending = c.pending;
    counts->answered = c.answered;
    counts->unavailable = c.unavailable;
    counts->refused = c.refused;
  }
  return drained;
}

}  // namespace qlinear
