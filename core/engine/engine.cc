#include "core/engine/engine.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/half.h"
#include "core/names.h"
#include "core/kernels/qmm.h"
#include "tbb/info.h"
#include "tbb/task_arena.h"

namespace qlinear {
namespace {

int64_t MicrosBetween(Engine::Clock::time_point a, Engine::Clock::time_point b) {
  return std::chrono::duration_cast<std::chrono::microseconds>(b - a).count();
}

}  // namespace

// One accepted request, possibly split across batches.
struct Task {
  Engine::ForwardRequest request;
  Engine::Done done;
  LayerRegistry::Entry entry;  // the version pinned at admission
  Precision precision = Precision::kExact;  // the effective one, for `entry`
  Engine::Clock::time_point enqueued;
  int64_t next_row = 0;  // rows handed to batches so far
  int64_t rows_done = 0;
  Engine::ForwardResult result;
};

struct Engine::Impl {
  explicit Impl(Engine* engine, int threads) : engine(engine), arena(threads) {}

  Engine* engine;
  tbb::task_arena arena;

  std::mutex mu;
  std::condition_variable work_cv;  // dispatcher waits for work
  std::condition_variable idle_cv;  // Drain waits for quiet
  std::map<std::string, std::deque<std::shared_ptr<Task>>> queues;
  std::deque<std::string> turns;  // layers with queued work, in turn order
  int64_t queued_rows = 0;
  bool in_flight = false;
  bool draining = false;
  bool halted = false;  // after a drain timeout: start no more batches
  bool stopping = false;
  std::thread dispatcher;
  // Accepted requests whose `done` has not run yet (Finish counts down).
  std::atomic<int64_t> unanswered{0};
  int64_t refused_draining = 0;  // Submits refused while draining

  // When more work waits, answers leave through the completer thread, so
  // that building responses and handing them to the transport overlaps the
  // next batch's compute instead of delaying it. `answering` counts tasks
  // handed over and not yet answered; Drain waits for it to reach zero.
  struct Answer {
    std::shared_ptr<Task> task;
    absl::Status status;
  };
  std::condition_variable answer_cv;
  std::deque<Answer> answers;
  int64_t answering = 0;
  bool stop_completer = false;
  std::thread completer;

  // Scratch reused by the dispatcher.
  std::vector<float> x_batch, y_batch;

  void Run();
  void Complete();
  // Finish answers a task on the calling thread; AnswerLater hands
  // finished tasks to the completer.
  void Finish(const std::shared_ptr<Task>& task, absl::Status status);
  void AnswerLater(std::vector<Answer> batch);
  std::vector<std::shared_ptr<Task>> TakeAllLocked();
};

void Engine::Impl::Finish(const std::shared_ptr<Task>& task, absl::Status status) {
  const auto now = Clock::now();
  ForwardResult& r = task->result;
  r.status = std::move(status);
  if (!r.status.ok()) r.y.clear();
  r.version = task->entry.layer->info().version;
  r.stats = task->entry.stats;
  if (r.queue_us == 0 && task->next_row == 0) r.queue_us = MicrosBetween(task->enqueued, now);
  r.precision = task->precision;
  LayerStats& stats = *task->entry.stats;
  stats.RecordRequest(r.status.code(), task->request.rows, task->precision);
  stats.queue_us.Record(static_cast<double>(r.queue_us));
  if (r.status.ok()) stats.compute_us.Record(static_cast<double>(r.compute_us));
  stats.total_us.Record(static_cast<double>(MicrosBetween(task->enqueued, now)));
  // Counted down first: once a client holds its answer, it is not
  // "unanswered" to anyone who looks.
  unanswered.fetch_sub(1);
  task->done(std::move(r));
}

void Engine::Impl::AnswerLater(std::vector<Answer> batch) {
  if (batch.empty()) return;
  {
    std::lock_guard<std::mutex> lock(mu);
    answering += static_cast<int64_t>(batch.size());
    for (Answer& a : batch) answers.push_back(std::move(a));
  }
  answer_cv.notify_one();
}

void Engine::Impl::Complete() {
  while (true) {
    std::deque<Answer> ready;
    {
      std::unique_lock<std::mutex> lock(mu);
      answer_cv.wait(lock, [&] { return stop_completer || !answers.empty(); });
      if (answers.empty()) return;  // stopping, and nothing left to answer
      ready.swap(answers);
    }
    for (Answer& a : ready) Finish(a.task, std::move(a.status));
    {
      std::lock_guard<std::mutex> lock(mu);
      answering -= static_cast<int64_t>(ready.size());
    }
    idle_cv.notify_all();
  }
}

std::vector<std::shared_ptr<Task>> Engine::Impl::TakeAllLocked() {
  std::vector<std::shared_ptr<Task>> all;
  for (auto& [name, queue] : queues) {
    for (auto& t : queue) all.push_back(std::move(t));
  }
  queues.clear();
  turns.clear();
  queued_rows = 0;
  return all;
}

void Engine::Impl::Run() {
  const Options& opt = engine->options_;
  while (true) {
    std::vector<std::shared_ptr<Task>> dropped;
    std::vector<absl::Status> dropped_status;
    struct Slice {
      std::shared_ptr<Task> task;
      int64_t row0, rows;
    };
    std::vector<Slice> batch;
    int64_t batch_rows = 0;
    {
      std::unique_lock<std::mutex> lock(mu);
      work_cv.wait(lock, [&] { return stopping || (!halted && !turns.empty()); });
      if (stopping) return;
      const std::string name = turns.front();
      turns.pop_front();
      auto& queue = queues[name];
      // Optionally wait for a fuller batch (never while draining).
      if (opt.max_batch_delay_us > 0 && !draining) {
        // The rows the next batch could take: the queue's head run of one
        // version and precision. Once a request of another follows it, no
        // later one can join (FIFO), so there is nothing to wait for.
        int64_t rows = 0;
        bool closed = false;
        for (const auto& t : queue) {
          if (t->entry.layer != queue.front()->entry.layer ||
              t->precision != queue.front()->precision) {
            closed = true;
            break;
          }
          rows += t->request.rows - t->next_row;
        }
        const auto until = queue.front()->enqueued + std::chrono::microseconds(opt.max_batch_delay_us);
        if (!closed && rows < opt.max_batch_rows && Clock::now() < until) {
          turns.push_front(name);
          work_cv.wait_until(lock, until);
          continue;
        }
      }
      const auto now = Clock::now();
      const Layer* layer = nullptr;
      Precision precision = Precision::kExact;
      while (!queue.empty() && batch_rows < opt.max_batch_rows) {
        std::shared_ptr<Task> task = queue.front();
        if (task->next_row == 0) {
          absl::Status drop;
          if (now >= task->request.deadline) {
            drop = absl::DeadlineExceededError("deadline passed while queued");
          } else if (task->request.cancelled && task->request.cancelled()) {
            drop = absl::CancelledError("cancelled while queued");
          }
          if (!drop.ok()) {
            queue.pop_front();
            queued_rows -= task->request.rows;
            dropped.push_back(std::move(task));
            dropped_status.push_back(std::move(drop));
            continue;
          }
        }
        // One batch runs one version of the layer in one precision.
        if (layer == nullptr) {
          layer = task->entry.layer.get();
          precision = task->precision;
        }
        if (task->entry.layer.get() != layer || task->precision != precision) break;
        const int64_t take = std::min(task->request.rows - task->next_row,
                                      opt.max_batch_rows - batch_rows);
        if (task->next_row == 0) task->result.queue_us = MicrosBetween(task->enqueued, now);
        batch.push_back({task, task->next_row, take});
        task->next_row += take;
        batch_rows += take;
        queued_rows -= take;
        if (task->next_row == task->request.rows) queue.pop_front();
      }
      if (!queue.empty()) {
        turns.push_back(name);
      } else {
        queues.erase(name);
      }
      in_flight = !batch.empty() || !dropped.empty();
    }
    std::vector<Answer> done;
    for (size_t i = 0; i < dropped.size(); ++i) {
      done.push_back({std::move(dropped[i]), std::move(dropped_status[i])});
    }
    if (!batch.empty()) {
      const Layer& layer = *batch.front().task->entry.layer;
      const Precision precision = batch.front().task->precision;
      const int64_t k = layer.info().k;
      const int64_t n = layer.info().n;
      // Gather every slice's rows as float32 (exact), whatever its dtype.
      x_batch.resize(static_cast<size_t>(batch_rows * k));
      int64_t row = 0;
      for (const Slice& s : batch) {
        const ForwardRequest& req = s.task->request;
        float* dst = x_batch.data() + row * k;
        if (req.x_dtype == DType::kF32) {
          std::memcpy(dst, static_cast<const float*>(req.x) + s.row0 * k,
                      static_cast<size_t>(s.rows * k) * 4);
        } else {
          for (int64_t i = 0; i < s.rows * k; ++i) {
            dst[i] = LoadFloat(req.x_dtype, req.x, static_cast<size_t>(s.row0 * k + i));
          }
        }
        row += s.rows;
      }
      y_batch.resize(static_cast<size_t>(batch_rows * n));
      const auto start = Clock::now();
      MatmulOptions mo;
      mo.arena = &arena;
      mo.precision = precision;
      QuantizedMatmul(layer.packed(), DType::kF32, x_batch.data(), batch_rows, layer.bias(),
                      DType::kF32, y_batch.data(), mo);
      const int64_t compute_us = MicrosBetween(start, Clock::now());
      batch.front().task->entry.stats->RecordBatch(batch_rows);
      row = 0;
      for (const Slice& s : batch) {
        ForwardResult& r = s.task->result;
        const DType yd = s.task->request.y_dtype;
        if (r.y.empty()) {
          r.n = n;
          r.y.resize(static_cast<size_t>(s.task->request.rows * n) * DTypeSize(yd));
        }
        const float* src = y_batch.data() + row * n;
        if (yd == DType::kF32) {
          std::memcpy(r.y.data() + static_cast<size_t>(s.row0 * n) * 4, src,
                      static_cast<size_t>(s.rows * n) * 4);
        } else {
          for (int64_t i = 0; i < s.rows * n; ++i) {
            StoreFloat(yd, r.y.data(), static_cast<size_t>(s.row0 * n + i), src[i]);
          }
        }
        row += s.rows;
        r.compute_us += compute_us;
        if (batch_rows > r.batch_rows) {
          r.batch_rows = batch_rows;
          r.batch_requests = static_cast<int64_t>(batch.size());
        }
        s.task->rows_done += s.rows;
        if (s.task->rows_done == s.task->request.rows) done.push_back({s.task, absl::OkStatus()});
      }
    }
    // With work waiting, answers go to the completer so that the next batch
    // starts now; with none, answering here saves the hand-over's latency.
    bool work_waiting;
    {
      std::lock_guard<std::mutex> lock(mu);
      work_waiting = !turns.empty();
    }
    if (work_waiting) {
      AnswerLater(std::move(done));
    } else {
      for (Answer& a : done) Finish(a.task, std::move(a.status));
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      in_flight = false;
    }
    idle_cv.notify_all();
  }
}

Engine::Engine(const Options& options)
    : options_(options), catalog_(options.max_memory_bytes), created_(Clock::now()) {}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const Options& options) {
  if (options.threads < 0 || options.max_batch_rows < 1 || options.max_batch_delay_us < 0 ||
      options.max_queue_rows < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "engine options: need threads >= 0, max_batch_rows >= 1, max_batch_delay_us >= 0, "
        "max_queue_rows >= 1; got ", options.threads, ", ", options.max_batch_rows, ", ",
        options.max_batch_delay_us, ", ", options.max_queue_rows));
  }
  std::unique_ptr<Engine> engine(new Engine(options));
  const int threads = options.threads > 0 ? options.threads : tbb::info::default_concurrency();
  engine->impl_ = std::make_unique<Impl>(engine.get(), threads);
  engine->impl_->completer = std::thread([impl = engine->impl_.get()] { impl->Complete(); });
  engine->impl_->dispatcher = std::thread([impl = engine->impl_.get()] { impl->Run(); });
  return engine;
}

Engine::~Engine() {
  std::vector<std::shared_ptr<Task>> left;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->work_cv.notify_all();
  impl_->dispatcher.join();
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    left = impl_->TakeAllLocked();
    impl_->stop_completer = true;
  }
  impl_->answer_cv.notify_all();
  impl_->completer.join();  // answers everything handed to it first
  for (auto& t : left) impl_->Finish(t, absl::UnavailableError("server is shutting down"));
}

int Engine::threads() const { return impl_->arena.max_concurrency(); }

int64_t Engine::queued_rows() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->queued_rows;
}

bool Engine::draining() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->draining;
}

int64_t Engine::batches_in_flight() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->in_flight ? 1 : 0;
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
  if (!options_.precisions.contains(request.precision)) {
    return reject(absl::InvalidArgumentError(absl::StrCat(
        "precision ", PrecisionName(request.precision), " is not enabled on this server (--precisions ",
        options_.precisions.ToString(), ")")));
  }
  if (!IsFloatDType(request.x_dtype) || !IsFloatDType(request.y_dtype)) {
    return reject(absl::InvalidArgumentError(absl::StrCat(
        "input and output dtypes must be F32, F16 or BF16; got ", DTypeName(request.x_dtype),
        " and ", DTypeName(request.y_dtype))));
  }
  if (request.k != info.k) {
    return reject(absl::InvalidArgumentError(absl::StrCat(
        "layer ", QuoteForMessage(info.name), " expects input [..., ", info.k, "]; got [..., ", request.k, "]")));
  }
  if (request.rows < 1) {
    return reject(absl::InvalidArgumentError(
        absl::StrCat("input must hold at least one row of ", info.k, "; got ", request.rows)));
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
      return reject(absl::ResourceExhaustedError(absl::StrCat(
          "the answer would be ", absl::StrFormat("%.0Lf", answer), " bytes ([", request.rows, ", ",
          info.n, "] of ", DTypeName(request.y_dtype), " and ", overhead,
          " more), over the response limit of ", max,
          " bytes (--max-message-mb); send fewer rows per request")));
    }
  }
  auto task = std::make_shared<Task>();
  task->entry = *entry;
  task->precision = EffectivePrecision(info.params, request.precision);
  task->done = std::move(done);
  task->enqueued = Clock::now();
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->draining || impl_->stopping) {
      ++impl_->refused_draining;
      return reject(absl::UnavailableError("server is shutting down"));
    }
    if (impl_->queued_rows + request.rows > options_.max_queue_rows) {
      return reject(absl::ResourceExhaustedError(absl::StrCat(
          "queue full: ", impl_->queued_rows, " of ", options_.max_queue_rows,
          " rows queued (--max-queue-rows); this request has ", request.rows)));
    }
    task->request = std::move(request);
    impl_->queued_rows += task->request.rows;
    impl_->unanswered.fetch_add(1);
    auto& queue = impl_->queues[task->request.layer];
    if (queue.empty()) impl_->turns.push_back(task->request.layer);
    queue.push_back(std::move(task));
  }
  impl_->work_cv.notify_one();
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

int64_t Engine::unanswered() const { return impl_->unanswered.load(); }

bool Engine::Drain(Clock::time_point deadline, DrainCounts* counts) {
  std::vector<std::shared_ptr<Task>> left;
  bool drained;
  int64_t pending = 0, refused_before = 0;
  catalog_.StartDraining();
  {
    std::unique_lock<std::mutex> lock(impl_->mu);
    impl_->draining = true;
    // No request is accepted from here on: every one counted is answered
    // before Drain returns.
    pending = impl_->unanswered.load();
    refused_before = impl_->refused_draining;
    impl_->work_cv.notify_all();
    drained = impl_->idle_cv.wait_until(lock, deadline, [&] {
      return impl_->queued_rows == 0 && impl_->turns.empty() && !impl_->in_flight &&
             impl_->answering == 0;
    });
    if (!drained) {
      // Let the running batch answer its own requests, start no other, and
      // answer everything still queued (partly computed requests included).
      impl_->halted = true;
      impl_->idle_cv.wait(lock, [&] { return !impl_->in_flight; });
      left = impl_->TakeAllLocked();
    }
  }
  for (auto& t : left) {
    impl_->Finish(t, absl::UnavailableError("server shut down before this request ran (drain timeout)"));
  }
  // Every computed answer has left before Drain returns.
  std::unique_lock<std::mutex> lock(impl_->mu);
  impl_->idle_cv.wait(lock, [&] { return impl_->answering == 0; });
  if (counts != nullptr) {
    counts->pending = pending;
    counts->unavailable = static_cast<int64_t>(left.size());
    counts->answered = pending - counts->unavailable;
    counts->refused = impl_->refused_draining - refused_before;
  }
  return drained;
}

}  // namespace qlinear
