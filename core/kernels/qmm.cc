#include "core/kernels/qmm.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/half.h"
#include "tbb/blocked_range.h"
#include "tbb/parallel_for.h"
#include "tbb/partitioner.h"

namespace qlinear {
namespace {

using kernels::Decode;
using kernels::kMaxRows;
using kernels::kTileN;
using kernels::TileArgs;

using TileFn = void (*)(const TileArgs&);

TileFn KernelFor(SimdTarget target) {
  switch (target) {
    case SimdTarget::kAvx512:
      return kernels::TileKernelAvx512;
    case SimdTarget::kAvx2:
      return kernels::TileKernelAvx2;
    case SimdTarget::kPortable:
      break;
  }
  return kernels::TileKernelPortable;
}

SimdTarget DetectBest() {
  __builtin_cpu_init();
  SimdTarget best = SimdTarget::kPortable;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    best = SimdTarget::kAvx2;
  }
  if (__builtin_cpu_supports("avx512f")) best = SimdTarget::kAvx512;
  return best;
}

// Reusable per-thread scratch: grows, never shrinks, so steady-state calls
// allocate nothing.
struct Scratch {
  std::vector<float> x, x_scaled, xsum, y;
};

float* Grow(std::vector<float>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

}  // namespace

absl::string_view SimdTargetName(SimdTarget target) {
  switch (target) {
    case SimdTarget::kAvx512:
      return "avx512";
    case SimdTarget::kAvx2:
      return "avx2";
    case SimdTarget::kPortable:
      break;
  }
  return "portable";
}

bool SimdTargetSupported(SimdTarget target) {
  static const SimdTarget best = DetectBest();
  return static_cast<int>(target) <= static_cast<int>(best);
}

SimdTarget DefaultSimdTarget() {
  static const SimdTarget chosen = [] {
    SimdTarget target = DetectBest();
    if (const char* env = std::getenv("QLINEAR_SIMD")) {
      for (SimdTarget t : {SimdTarget::kPortable, SimdTarget::kAvx2, SimdTarget::kAvx512}) {
        if (SimdTargetName(t) == env && static_cast<int>(t) < static_cast<int>(target)) {
          target = t;
        }
      }
    }
    return target;
  }();
  return chosen;
}

PackedMatrix PackedMatrix::Pack(const QuantizedMatrix& q) {
  PackedMatrix p;
  p.params_ = q.params;
  p.n_ = q.n;
  p.k_ = q.k;
  p.groups_ = q.groups();
  p.tiles_ = (q.n + kTileN - 1) / kTileN;
  switch (q.params.mode) {
    case QuantMode::kMxfp4:
    case QuantMode::kNvfp4:
      p.lane_bits_ = 4;
      p.decode_ = Decode::kFp4;
      break;
    case QuantMode::kMxfp8:
      p.lane_bits_ = 8;
      p.decode_ = Decode::kFp8;
      break;
    case QuantMode::kAffine:
      // 2 and 4 bits keep their width; 3/5/6/8 widen to a byte per code.
      p.lane_bits_ = (q.params.bits == 2 || q.params.bits == 4) ? q.params.bits : 8;
      p.decode_ = Decode::kInt;
      break;
  }
  const int cpl = 32 / p.lane_bits_;
  p.words_per_tile_ = q.k / cpl * kTileN;
  p.codes_.assign(static_cast<size_t>(p.tiles_ * p.words_per_tile_), 0u);
  const size_t group_floats = static_cast<size_t>(p.tiles_ * p.groups_ * kTileN);
  p.scales_.assign(group_floats, 0.0f);
  if (q.params.has_biases()) p.biases_.assign(group_floats, 0.0f);
  const int64_t words = q.params.packed_cols(q.k);
  for (int64_t n = 0; n < q.n; ++n) {
    const int64_t t = n / kTileN;
    const int64_t lane = n % kTileN;
    uint32_t* tile = p.codes_.data() + t * p.words_per_tile_;
    const uint32_t* row = q.wq.data() + n * words;
    for (int64_t k = 0; k < q.k; ++k) {
      const uint32_t code = UnpackCode(row, q.params.bits, k);
      tile[(k / cpl) * kTileN + lane] |= code << ((k % cpl) * p.lane_bits_);
    }
    for (int64_t g = 0; g < p.groups_; ++g) {
      const size_t i = static_cast<size_t>((t * p.groups_ + g) * kTileN + lane);
      p.scales_[i] = GroupScale(q, n, g);
      if (!p.biases_.empty()) p.biases_[i] = GroupBias(q, n, g);
    }
  }
  return p;
}

void QuantizedMatmul(const PackedMatrix& w, DType x_dtype, const void* x,
                     int64_t rows, const float* bias, DType y_dtype, void* y,
                     const MatmulOptions& options) {
  if (rows <= 0) return;
  thread_local Scratch scratch;
  const int64_t k = w.k_;
  const int64_t groups = w.groups_;
  const int64_t gs = w.params_.group_size;

  // float32 inputs (exact widening) and per-group input sums, once per row.
  const float* xf = static_cast<const float*>(x);
  if (x_dtype != DType::kF32) {
    float* buf = Grow(scratch.x, static_cast<size_t>(rows * k));
    for (int64_t i = 0; i < rows * k; ++i) buf[i] = LoadFloat(x_dtype, x, static_cast<size_t>(i));
    xf = buf;
  }
  float* xsum = Grow(scratch.xsum, static_cast<size_t>(rows * groups));
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t g = 0; g < groups; ++g) {
      // Summed in double and rounded once: the bias term b·xsum is where the
      // factored form can cancel, so its input should carry no extra error.
      double s = 0.0;
      for (int64_t i = 0; i < gs; ++i) s += xf[m * k + g * gs + i];
      xsum[m * groups + g] = static_cast<float>(s);
    }
  }

  // Pre-scaled inputs for integer codes masked in place (kernel_args.h),
  // unless some |x| is small enough for the scaling to lose bits.
  const float* x_scaled = nullptr;
  if (w.decode_ == Decode::kInt) {
    const int bits = w.lane_bits_;
    const int cpl = 32 / bits;
    float factor[16];
    for (int i = 0; i < cpl; ++i) factor[i] = std::ldexp(1.0f, -bits * i);
    float* buf = Grow(scratch.x_scaled, static_cast<size_t>(rows * k));
    bool exact = true;
    for (int64_t i = 0; i < rows * k; i += cpl) {
      for (int j = 0; j < cpl; ++j) {
        const float v = xf[i + j];
        exact &= !(std::fabs(v) < 0x1p-96f) || v == 0.0f;
        buf[i + j] = v * factor[j];  // exact for |v| >= 2^-96
      }
    }
    if (exact) x_scaled = buf;
  }

  // Kernels write whole tiles: straight into y when that fits, else scratch.
  const bool direct = y_dtype == DType::kF32 && w.n_ % kTileN == 0;
  const int64_t y_stride = direct ? w.n_ : w.tiles_ * kTileN;
  float* ybuf = direct ? static_cast<float*>(y)
                       : Grow(scratch.y, static_cast<size_t>(rows * y_stride));

  const TileFn kernel = KernelFor(options.target);
  TileArgs base{};
  base.biases = nullptr;
  base.x = xf;
  base.x_scaled = x_scaled;
  base.xsum = xsum;
  base.k = k;
  base.groups = groups;
  base.group_size = gs;
  base.x_stride = k;
  base.xsum_stride = groups;
  base.y_stride = y_stride;
  base.codes_stride = w.words_per_tile_;
  base.lane_bits = w.lane_bits_;
  base.decode = w.decode_;

  auto run_tiles = [&](const tbb::blocked_range<int64_t>& range) {
    TileArgs a = base;
    // Row blocks outside, tiles inside: a block of x rows stays in cache
    // while it meets every tile of the chunk.
    for (int64_t m = 0; m < rows; m += kMaxRows) {
      a.rows = static_cast<int>(std::min<int64_t>(kMaxRows, rows - m));
      a.x = xf + m * k;
      a.x_scaled = x_scaled == nullptr ? nullptr : x_scaled + m * k;
      a.xsum = xsum + m * groups;
      for (int64_t t = range.begin(); t < range.end(); t += kernels::kMaxTiles) {
        a.tiles = static_cast<int>(std::min<int64_t>(kernels::kMaxTiles, range.end() - t));
        a.codes = w.codes_.data() + t * w.words_per_tile_;
        a.scales = w.scales_.data() + t * groups * kTileN;
        a.biases = w.biases_.empty() ? nullptr : w.biases_.data() + t * groups * kTileN;
        a.y = ybuf + m * y_stride + t * kTileN;
        kernel(a);
      }
    }
  };
  auto run = [&] {
    const int64_t threads = std::max(1, tbb::this_task_arena::max_concurrency());
    // Chunks of whole kernel calls (kMaxTiles tiles), about 4 per thread.
    const int64_t calls = (w.tiles_ + kernels::kMaxTiles - 1) / kernels::kMaxTiles;
    const int64_t grain =
        std::max<int64_t>(1, calls / (4 * threads)) * kernels::kMaxTiles;
    tbb::parallel_for(tbb::blocked_range<int64_t>(0, w.tiles_, grain), run_tiles,
                      tbb::simple_partitioner());
  };
  if (options.arena != nullptr) {
    options.arena->execute(run);
  } else {
    run();
  }

  // Epilogue: bias, then the output dtype.
  if (direct && bias == nullptr) return;
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t n = 0; n < w.n_; ++n) {
      float v = ybuf[m * y_stride + n];
      if (bias != nullptr) v += bias[n];
      StoreFloat(y_dtype, y, static_cast<size_t>(m * w.n_ + n), v);
    }
  }
}

}  // namespace qlinear
