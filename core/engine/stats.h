// Lock-free serving statistics: histograms and per-layer counters.
//
// Recording is a handful of relaxed atomic operations (no lock), so the
// batcher records on its hot path; reading takes a consistent-enough
// snapshot for monitoring.
#ifndef QLINEAR_CORE_ENGINE_STATS_H_
#define QLINEAR_CORE_ENGINE_STATS_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "core/precision.h"

namespace qlinear {

// Histogram with fixed upper bounds (ascending; a last, unbounded bucket
// follows). Percentiles report the upper bound of the bucket that holds the
// requested rank, capped by the maximum seen.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  // ExponentialBounds gives 1, 2, 5, 10, 20, 50, ... up to `max`.
  static std::vector<double> ExponentialBounds(double max);
  // PowersOfTwo gives 1, 2, 4, ... up to `max`.
  static std::vector<double> PowersOfTwo(double max);

  void Record(double value);

  struct Snapshot {
    std::vector<double> bounds;
    std::vector<uint64_t> counts;  // bounds.size() + 1 buckets
    uint64_t count = 0;
    double sum = 0;
    double max = 0;
    double Percentile(double p) const;  // p in [0, 100]
    double Mean() const { return count ? sum / static_cast<double>(count) : 0; }
  };
  Snapshot Read() const;

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;
  std::atomic<uint64_t> count_{0};
  std::atomic<double> sum_{0};
  std::atomic<double> max_{0};
};

// CodeCounter: events (and, with Add's `n`, amounts) by absl::StatusCode,
// lock-free. Codes outside 0..16 count as UNKNOWN.
class CodeCounter {
 public:
  static constexpr int kCodes = 17;  // absl::StatusCode 0..16
  using Counts = std::array<uint64_t, kCodes>;  // indexed by the code's number

  void Add(absl::StatusCode code, uint64_t n = 1) {
    counts_[Index(code)].fetch_add(n, std::memory_order_relaxed);
  }
  // Sub takes back what Add counted (a reclassified event).
  void Sub(absl::StatusCode code, uint64_t n = 1) {
    counts_[Index(code)].fetch_sub(n, std::memory_order_relaxed);
  }
  uint64_t Get(absl::StatusCode code) const {
    return counts_[Index(code)].load(std::memory_order_relaxed);
  }
  Counts Read() const;

 private:
  static size_t Index(absl::StatusCode code) {
    const int c = static_cast<int>(code);
    return static_cast<size_t>(c >= 0 && c < kCodes ? c : static_cast<int>(absl::StatusCode::kUnknown));
  }
  std::array<std::atomic<uint64_t>, kCodes> counts_{};
};

// PrecisionCounter: amounts by Precision (the mode that ran), lock-free.
class PrecisionCounter {
 public:
  using Counts = std::array<uint64_t, kPrecisionCount>;  // indexed by the enum's value

  void Add(Precision p, uint64_t n = 1) {
    counts_[Index(p)].fetch_add(n, std::memory_order_relaxed);
  }
  void Sub(Precision p, uint64_t n = 1) {
    counts_[Index(p)].fetch_sub(n, std::memory_order_relaxed);
  }
  uint64_t Get(Precision p) const { return counts_[Index(p)].load(std::memory_order_relaxed); }
  Counts Read() const;

 private:
  static size_t Index(Precision p) { return static_cast<size_t>(p); }
  std::array<std::atomic<uint64_t>, kPrecisionCount> counts_{};
};

// LayerStats: what one layer (by name) has served.
class LayerStats {
 public:
  LayerStats();

  // RecordRequest counts one answered request under `code`, and, when it
  // is OK, under `ran` (the mode that computed it).
  void RecordRequest(absl::StatusCode code, int64_t rows, Precision ran = Precision::kExact);
  // Reclassify moves one request of `rows` rows counted under `from` to
  // `to` (an answer that was counted, then failed to leave); moved out of
  // OK, it leaves `ran`'s count too, so the per-precision counts always sum
  // to the OK ones.
  void Reclassify(absl::StatusCode from, absl::StatusCode to, int64_t rows,
                  Precision ran = Precision::kExact);
  void RecordBatch(int64_t rows) {
    batches_.fetch_add(1, std::memory_order_relaxed);
    batch_rows.Record(static_cast<double>(rows));
  }

  uint64_t requests(absl::StatusCode code) const { return requests_.Get(code); }
  uint64_t rows(absl::StatusCode code) const { return rows_.Get(code); }
  const CodeCounter& requests() const { return requests_; }
  const CodeCounter& rows() const { return rows_; }
  // OK requests (and their rows) by the mode that ran.
  const PrecisionCounter& requests_by_precision() const { return requests_by_precision_; }
  const PrecisionCounter& rows_by_precision() const { return rows_by_precision_; }
  uint64_t batches() const { return batches_.load(std::memory_order_relaxed); }

  Histogram batch_rows;
  Histogram queue_us;
  Histogram compute_us;
  Histogram total_us;

  static constexpr int kCodes = CodeCounter::kCodes;

 private:
  CodeCounter requests_;
  CodeCounter rows_;
  PrecisionCounter requests_by_precision_;
  PrecisionCounter rows_by_precision_;
  std::atomic<uint64_t> batches_{0};
};

}  // namespace qlinear

#endif  // QLINEAR_CORE_ENGINE_STATS_H_
