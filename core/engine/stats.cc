#include "core/engine/stats.h"

#include <algorithm>
#include <cmath>

namespace qlinear {
namespace {

void AtomicMax(std::atomic<double>& target, double value) {
  double current = target.load(std::memory_order_relaxed);
  while (value > current &&
         !target.compare_exchange_weak(current, value, std::memory_order_relaxed)) {
  }
}

void AtomicAdd(std::atomic<double>& target, double value) {
  double current = target.load(std::memory_order_relaxed);
  while (!target.compare_exchange_weak(current, current + value, std::memory_order_relaxed)) {
  }
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      counts_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0);
}

std::vector<double> Histogram::ExponentialBounds(double max) {
  std::vector<double> bounds;
  for (double decade = 1; decade <= max; decade *= 10) {
    for (double m : {1.0, 2.0, 5.0}) {
      if (decade * m <= max) bounds.push_back(decade * m);
    }
  }
  return bounds;
}

std::vector<double> Histogram::PowersOfTwo(double max) {
  std::vector<double> bounds;
  for (double b = 1; b <= max; b *= 2) bounds.push_back(b);
  return bounds;
}

void Histogram::Record(double value) {
  const size_t bucket = static_cast<size_t>(
      std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
  counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  AtomicAdd(sum_, value);
  AtomicMax(max_, value);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot s;
  s.bounds = bounds_;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    s.counts.push_back(counts_[i].load(std::memory_order_relaxed));
    s.count += s.counts.back();
  }
  s.sum = sum_.load(std::memory_order_relaxed);
  s.max = max_.load(std::memory_order_relaxed);
  return s;
}

double Histogram::Snapshot::Percentile(double p) const {
  if (count == 0) return 0;
  const uint64_t rank = std::max<uint64_t>(
      1, static_cast<uint64_t>(std::ceil(p / 100.0 * static_cast<double>(count))));
  uint64_t seen = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    seen += counts[i];
    if (seen >= rank) return i < bounds.size() ? std::min(bounds[i], max) : max;
  }
  return max;
}

LayerStats::LayerStats()
    : batch_rows(Histogram::PowersOfTwo(1 << 16)),
      queue_us(Histogram::ExponentialBounds(1e8)),
      compute_us(Histogram::ExponentialBounds(1e8)),
      total_us(Histogram::ExponentialBounds(1e8)) {}

CodeCounter::Counts CodeCounter::Read() const {
  Counts out{};
  for (size_t c = 0; c < out.size(); ++c) out[c] = counts_[c].load(std::memory_order_relaxed);
  return out;
}

PrecisionCounter::Counts PrecisionCounter::Read() const {
  Counts out{};
  for (size_t p = 0; p < out.size(); ++p) out[p] = counts_[p].load(std::memory_order_relaxed);
  return out;
}

void LayerStats::RecordRequest(absl::StatusCode code, int64_t rows, Precision ran) {
  const uint64_t n = static_cast<uint64_t>(std::max<int64_t>(rows, 0));
  requests_.Add(code);
  rows_.Add(code, n);
  if (code == absl::StatusCode::kOk) {
    requests_by_precision_.Add(ran);
    rows_by_precision_.Add(ran, n);
  }
}

void LayerStats::Reclassify(absl::StatusCode from, absl::StatusCode to, int64_t rows,
                            Precision ran) {
  const uint64_t n = static_cast<uint64_t>(std::max<int64_t>(rows, 0));
  requests_.Sub(from);
  rows_.Sub(from, n);
  requests_.Add(to);
  rows_.Add(to, n);
  if (from == absl::StatusCode::kOk && to != absl::StatusCode::kOk) {
    requests_by_precision_.Sub(ran);
    rows_by_precision_.Sub(ran, n);
  } else if (from != absl::StatusCode::kOk && to == absl::StatusCode::kOk) {
    requests_by_precision_.Add(ran);
    rows_by_precision_.Add(ran, n);
  }
}

}  // namespace qlinear
