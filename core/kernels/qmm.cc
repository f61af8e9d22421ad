#include "core/kernels/qmm.h"

#include <cpuid.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "absl/algorithm/container.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/half.h"
#include "core/names.h"
#include "tbb/blocked_range.h"
#include "tbb/parallel_for.h"
#include "tbb/partitioner.h"

#if defined(__SANITIZE_THREAD__)
#define QLINEAR_UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define QLINEAR_UNDER_TSAN 1
#endif
#endif
#ifdef QLINEAR_UNDER_TSAN
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace qlinear {
namespace {

// oneTBB's scheduler (Debian's libtbb, not built with ThreadSanitizer) hands
// tasks between threads where TSan cannot see it. These state the ordering
// parallel_for guarantees: what the caller wrote before it is visible to
// every body, and what the bodies wrote is visible once it returns.
// No-ops outside TSan builds.
// One address for every call: a body cannot read a per-call one from its
// captures before the edge exists (TSan builds only; it also orders
// concurrent calls from different threads, which can only hide a race there).
#ifdef QLINEAR_UNDER_TSAN
char tsan_sync;
void HappensBefore() { __tsan_release(&tsan_sync); }
void HappensAfter() { __tsan_acquire(&tsan_sync); }
#else
void HappensBefore() {}
void HappensAfter() {}
#endif

using kernels::Decode;
using kernels::kMaxRows;
using kernels::kBlockStride;
using kernels::kBlockTiles;
using kernels::kTileN;
using kernels::TileArgs;

using TileFn = void (*)(const TileArgs&);

// The fewest rows a panel task takes (qmm_panel_avx512.cc decodes its
// block's codes once per task): four of its 6-row micro-kernel blocks.
constexpr int64_t kPanelChunkRows = 24;

// Inputs (rows x k values), or outputs, from which a call prepares its rows,
// or finishes them, on all its threads rather than on the caller's alone
// (QuantizedMatmul).
constexpr int64_t kParallelPrepareValues = 16384;

// The most input (float32 rows of k: 16 rows at k = 4096; one row block of
// kMaxRows when that alone holds more) one tile-kernel task takes, so that
// tasks are small beside a call and many per thread for large batches: a
// thread that falls behind (an interrupt, another tenant) then delays the
// call's end by a small task, not by a quarter of it. Measured on the
// 16-core Xeon at 16 threads, N = K = 4096 4-bit, two runs of alternating
// calls (docs/performance.md): M=128 3.38 and 3.29 ms against 3.88 and
// 3.89 with one block of all 128 rows per task (four per thread); 8 rows
// per task about as fast, 32 slower.
constexpr int64_t kTaskInputBytes = 256 << 10;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Runs body(0) .. body(count - 1) as separate tasks in options.arena (or
// the caller's arena), and returns when all have: the door through which
// a call's work reaches its threads. Each body brackets its work with
// HappensAfter() / HappensBefore().
template <typename Body>
void RunTasks(const MatmulOptions& options, int64_t count, const Body& body) {
  auto run = [&] {
    // An arena whose slots are taken (the engine's compute slots share
    // one) may run this on another of its threads: its reads of the
    // captures need the same edge as the bodies'.
    HappensAfter();
#ifdef QLINEAR_UNDER_TSAN
    // TSan builds run a call's tasks on this thread. oneTBB (not built with
    // TSan) hands a finished task back through an atomic in a wait context
    // on this thread's stack, written by the worker after its body's last
    // HappensBefore and read back inside libtbb, unseen: the stack memory
    // that later frames reuse was then reported as racing with that write
    // (CI, engine_test, once tasks over rows made workers join small
    // calls). The engine's own threads and the arena stay as they are.
    for (int64_t task = 0; task < count; ++task) body(task);
#else
    // One task per index: on a shared host one core can run slower than
    // the other, and a one-row block is only ~4 us of work, so fine tasks
    // even out the end of a call (measured 2-3 % faster at one row than 4
    // chunks per thread, no change for larger batches).
    tbb::parallel_for(int64_t{0}, count, int64_t{1}, body, tbb::simple_partitioner());
#endif
    HappensBefore();
  };
  HappensBefore();
  if (options.arena != nullptr) {
    options.arena->execute(run);
  } else {
    run();
  }
  HappensAfter();
}

// body(first, last) over rows [0, rows): at once on the caller's thread for
// one row or fewer than kParallelPrepareValues `values`, else in pieces of
// whole rows, two per thread, through RunTasks.
template <typename Body>
void ForRows(const MatmulOptions& options, int64_t threads, int64_t rows, int64_t values,
             const Body& body) {
  if (threads <= 1 || rows <= 1 || values < kParallelPrepareValues) return body(0, rows);
  const int64_t piece = CeilDiv(rows, 2 * threads);
  RunTasks(options, CeilDiv(rows, piece), [&](int64_t task) {
    HappensAfter();
    body(task * piece, std::min(rows, (task + 1) * piece));
    HappensBefore();
  });
}

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

// The INT8 and BF16 kernels of a target (core/precision.h). AVX-512
// without VNNI or BF16 runs the AVX2 kernels, which give the same bits.
TileFn Int8KernelFor(SimdTarget target) {
  switch (target) {
    case SimdTarget::kAvx512:
      return CpuHasVnni() ? kernels::TileKernelInt8Avx512Vnni : kernels::TileKernelInt8Avx2;
    case SimdTarget::kAvx2:
      return kernels::TileKernelInt8Avx2;
    case SimdTarget::kPortable:
      break;
  }
  return kernels::TileKernelInt8Portable;
}

TileFn Bf16KernelFor(SimdTarget target) {
  switch (target) {
    case SimdTarget::kAvx512:
      return CpuHasAvx512Bf16() ? kernels::TileKernelBf16Avx512Bf16 : kernels::TileKernelBf16Avx2;
    case SimdTarget::kAvx2:
      return kernels::TileKernelBf16Avx2;
    case SimdTarget::kPortable:
      break;
  }
  return kernels::TileKernelBf16Portable;
}

SimdTarget DetectBest() {
  __builtin_cpu_init();
  SimdTarget best = SimdTarget::kPortable;
  // F16C through CPUID: clang 14's __builtin_cpu_supports does not know "f16c".
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c) {
    best = SimdTarget::kAvx2;
  }
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) {
    best = SimdTarget::kAvx512;
  }
  return best;
}

// Reusable per-thread scratch: grows, never shrinks, so steady-state calls
// allocate nothing.
struct Scratch {
  std::vector<float> x, x_scaled, xsum, y, xd;
  std::vector<int8_t> xq;
  std::vector<int32_t> xqsum;
  std::vector<uint32_t> xb;
};

template <typename T>
T* Grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

bool HoldsExactly(const std::vector<float>& values, kernels::ScaleType type) {
  for (float v : values) {
    const float back = type == kernels::ScaleType::kF16 ? HalfBitsToFloat(FloatToHalfBits(v))
                                                       : BF16BitsToFloat(FloatToBF16Bits(v));
    if (std::memcmp(&back, &v, sizeof v) != 0) return false;
  }
  return true;
}

kernels::ScaleType NarrowestExact(const std::vector<float>& scales,
                                  const std::vector<float>& biases) {
  for (kernels::ScaleType type : {kernels::ScaleType::kBF16, kernels::ScaleType::kF16}) {
    if (HoldsExactly(scales, type) && HoldsExactly(biases, type)) return type;
  }
  return kernels::ScaleType::kF32;
}

std::vector<uint8_t> Narrow(const std::vector<float>& values, kernels::ScaleType type) {
  if (type == kernels::ScaleType::kF32) {
    std::vector<uint8_t> out(values.size() * 4);
    if (!values.empty()) std::memcpy(out.data(), values.data(), out.size());
    return out;
  }
  std::vector<uint8_t> out(values.size() * 2);
  for (size_t i = 0; i < values.size(); ++i) {
    const uint16_t h = type == kernels::ScaleType::kF16 ? FloatToHalfBits(values[i])
                                                        : FloatToBF16Bits(values[i]);
    std::memcpy(out.data() + 2 * i, &h, 2);
  }
  return out;
}

constexpr size_t kHugePage = size_t{2} << 20;
constexpr std::align_val_t kCacheLine{64};

// The mapping's length: whole OS pages.
size_t MappedBytes(size_t bytes) {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return (bytes + page - 1) / page * page;
}

}  // namespace

void* AllocateWeightMemory(size_t bytes) {
  if (bytes < kHugePage) return ::operator new(bytes, kCacheLine);
  const size_t length = MappedBytes(bytes);
  // One huge page more than needed, then the slack either side unmapped:
  // the mapping starts on a 2 MiB boundary and ends with the weights, so
  // that every whole 2 MiB inside may become a huge page and the tail
  // (in 4 KiB pages) holds nothing unused.
  void* raw = mmap(nullptr, length + kHugePage, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  const uintptr_t begin = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t start = (begin + kHugePage - 1) / kHugePage * kHugePage;
  const uintptr_t end = begin + length + kHugePage;
  if (start > begin) munmap(raw, start - begin);
  if (end > start + length) munmap(reinterpret_cast<void*>(start + length), end - start - length);
  void* p = reinterpret_cast<void*>(start);
  // Advice only: without transparent huge pages the memory still works.
  madvise(p, length, MADV_HUGEPAGE);
  return p;
}

void FreeWeightMemory(void* p, size_t bytes) {
  if (p == nullptr) return;
  if (bytes < kHugePage) return ::operator delete(p, kCacheLine);
  munmap(p, MappedBytes(bytes));
}

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

bool CpuHasVnni() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") != 0;
  }();
  return has;
}

bool CpuHasAvx512Bf16() {
  // CPUID leaf 7 subleaf 1, EAX bit 5 (GCC 12's __builtin_cpu_supports
  // has no name for it).
  static const bool has = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    return __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && (eax & (1u << 5)) != 0 &&
           SimdTargetSupported(SimdTarget::kAvx512);
  }();
  return has;
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

absl::string_view KernelStrategyName(KernelStrategy strategy) {
  switch (strategy) {
    case KernelStrategy::kRegister:
      return "register";
    case KernelStrategy::kPanel:
      return "panel";
    case KernelStrategy::kAuto:
      break;
  }
  return "auto";
}

KernelStrategy DefaultKernelStrategy() {
  static const KernelStrategy chosen = [] {
    if (const char* env = std::getenv("QLINEAR_KERNEL")) {
      for (KernelStrategy s : {KernelStrategy::kRegister, KernelStrategy::kPanel}) {
        if (KernelStrategyName(s) == env) return s;
      }
    }
    return KernelStrategy::kAuto;
  }();
  return chosen;
}

absl::Status CheckKernelEnvironment() {
  for (const auto& [name, choices] : {std::pair<const char*, const char*>{"QLINEAR_SIMD", kSimdChoices},
                                      {"QLINEAR_KERNEL", kKernelChoices}}) {
    const char* env = std::getenv(name);
    if (env == nullptr) continue;
    const std::vector<absl::string_view> allowed = absl::StrSplit(choices, '|');
    if (absl::c_linear_search(allowed, absl::string_view(env))) continue;
    return absl::InvalidArgumentError(absl::StrCat(name, " must be one of ",
                                                   absl::StrJoin(allowed, ", "), "; got ",
                                                   QuoteForMessage(env)));
  }
  return absl::OkStatus();
}

KernelStrategy ChooseStrategy(const MatmulOptions& options, int64_t rows) {
  if (options.target != SimdTarget::kAvx512 || options.precision != Precision::kExact) {
    return KernelStrategy::kRegister;
  }
  // kAuto: the register kernel at every row count, on every CPU measured
  // so far (qmm.h). A rule by shape and CPU goes here.
  (void)rows;
  return options.strategy == KernelStrategy::kPanel ? KernelStrategy::kPanel
                                                    : KernelStrategy::kRegister;
}

namespace {

int LaneBits(const QuantParams& params) {
  switch (params.mode) {
    case QuantMode::kMxfp4:
    case QuantMode::kNvfp4:
      return 4;
    case QuantMode::kMxfp8:
      return 8;
    case QuantMode::kAffine:
      break;
  }
  // 2 and 4 bits keep their width; 3/5/6/8 widen to a byte per code.
  return (params.bits == 2 || params.bits == 4) ? params.bits : 8;
}

// Whole blocks of tiles: the padding tiles have zero codes and scales.
int64_t PaddedTiles(int64_t n) { return (n + kBlockStride - 1) / kBlockStride * kBlockTiles; }

}  // namespace

size_t PackedMatrix::MaxBytes(const QuantParams& params, int64_t n, int64_t k) {
  const size_t outputs = static_cast<size_t>(PaddedTiles(n) * kTileN);
  // Codes, and the zero words either side of them.
  const size_t codes =
      outputs * static_cast<size_t>(k) * LaneBits(params) / 8 + 2 * kPadWords * 4;
  const size_t group_params = outputs * static_cast<size_t>(params.groups(k));
  return codes + group_params * 4 * (params.has_biases() ? 2 : 1);
}

PackedMatrix PackedMatrix::Pack(const QuantizedMatrix& q) {
  PackedMatrix p;
  p.params_ = q.params;
  p.n_ = q.n;
  p.k_ = q.k;
  p.groups_ = q.groups();
  p.tiles_ = PaddedTiles(q.n);
  p.lane_bits_ = LaneBits(q.params);
  p.decode_ = q.params.mode == QuantMode::kAffine  ? Decode::kInt
              : q.params.mode == QuantMode::kMxfp8 ? Decode::kFp8
                                                   : Decode::kFp4;
  const int cpl = 32 / p.lane_bits_;
  p.words_per_tile_ = q.k / cpl * kTileN;
  p.codes_.assign(static_cast<size_t>(p.tiles_ * p.words_per_tile_ + 2 * kPadWords), 0u);
  // Scales and biases in tile order, as float32 first.
  const size_t params = static_cast<size_t>(p.tiles_ * p.groups_ * kTileN);
  std::vector<float> scales(params, 0.0f), biases;
  if (q.params.has_biases()) biases.assign(params, 0.0f);
  const int64_t words = q.params.packed_cols(q.k);
  for (int64_t n = 0; n < q.n; ++n) {
    // Output n is lane n % 16 of tile n / 16, and lane n % 64 of the
    // interleaved scales of block n / 64 (kernel_args.h).
    const int64_t b = n / kBlockStride;
    const int64_t lane = n % kBlockStride;
    uint32_t* tile = p.codes_.data() + kPadWords + n / kTileN * p.words_per_tile_;
    const uint32_t* row = q.wq.data() + n * words;
    for (int64_t k = 0; k < q.k; ++k) {
      const uint32_t code = UnpackCode(row, q.params.bits, k);
      tile[(k / cpl) * kTileN + n % kTileN] |= code << ((k % cpl) * p.lane_bits_);
    }
    for (int64_t g = 0; g < p.groups_; ++g) {
      const size_t i = static_cast<size_t>((b * p.groups_ + g) * kBlockStride + lane);
      scales[i] = GroupScale(q, n, g);
      if (!biases.empty()) biases[i] = GroupBias(q, n, g);
    }
  }
  // Then in the narrowest type that holds every one of them exactly:
  // float16 or bfloat16 scales (MLX models' usual storage, and every
  // E8M0 / E4M3 scale) halve the bytes a one-row product streams.
  p.scale_type_ = NarrowestExact(scales, biases);
  p.scales_ = Narrow(scales, p.scale_type_);
  p.biases_ = Narrow(biases, p.scale_type_);
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

  const Precision precision = EffectivePrecision(w.params_, options.precision);
  MatmulOptions effective = options;
  effective.precision = precision;
  const bool panel = ChooseStrategy(effective, rows) == KernelStrategy::kPanel;

  // Once per row, before the products: the float32 input (exact widening),
  // for EXACT its per-group sums, and the pre-scaled input below. At 16
  // threads and 128 rows of K = 4096 this took about 0.45 ms on one thread
  // (a tenth of the call), so with several rows it runs on the call's
  // threads too.
  //
  // The AVX-512 tile kernel reads integer codes from pre-scaled inputs
  // (kernel_args.h), and so does the AVX2 kernel for one row (with several
  // rows it is FMA-bound, and its masks in place measured no faster),
  // unless some |x| is too small to scale exactly. The panel decodes
  // codes to their values and reads x as it is.
  const bool scale = !panel && precision == Precision::kExact && w.decode_ == Decode::kInt &&
                     (options.target == SimdTarget::kAvx512 ||
                      (options.target == SimdTarget::kAvx2 && rows == 1));
  const float* xf = static_cast<const float*>(x);
  float* widened = nullptr;
  if (x_dtype != DType::kF32) {
    widened = Grow(scratch.x, static_cast<size_t>(rows * k));
    xf = widened;
  }
  float* xsum = Grow(scratch.xsum, static_cast<size_t>(rows * groups));
  float* scaled = scale ? Grow(scratch.x_scaled, static_cast<size_t>(rows * k)) : nullptr;
  std::atomic<bool> scaled_exactly{true};
  auto prepare_rows = [&](int64_t first, int64_t last) {
    if (widened != nullptr) {
      for (int64_t i = first * k; i < last * k; ++i) {
        widened[i] = LoadFloat(x_dtype, x, static_cast<size_t>(i));
      }
    }
    // Summed in double, k ascending, and rounded once: the bias term b·xsum
    // is where the factored form can cancel, so its input should carry no
    // extra error. Eight groups at a time, so that their add chains
    // overlap. (INT8 and BF16 write their own sums below.)
    for (int64_t m = first; precision == Precision::kExact && m < last; ++m) {
      const float* row = xf + m * k;
      for (int64_t g0 = 0; g0 < groups; g0 += 8) {
        const int64_t count = std::min<int64_t>(8, groups - g0);
        double s[8] = {};
        for (int64_t i = 0; i < gs; ++i) {
          for (int64_t j = 0; j < count; ++j) s[j] += row[(g0 + j) * gs + i];
        }
        for (int64_t j = 0; j < count; ++j) xsum[m * groups + g0 + j] = static_cast<float>(s[j]);
      }
    }
    if (scaled != nullptr) {
      const int64_t n = (last - first) * k;
      const bool ok =
          options.target == SimdTarget::kAvx512
              ? kernels::PrescaleAvx512(xf + first * k, n, w.lane_bits_, scaled + first * k)
              : kernels::PrescaleAvx2(xf + first * k, n, w.lane_bits_, scaled + first * k);
      if (!ok) scaled_exactly.store(false, std::memory_order_relaxed);
    }
  };
  const int64_t threads = options.arena != nullptr ? options.arena->max_concurrency()
                                                   : tbb::this_task_arena::max_concurrency();
  if (widened != nullptr || precision == Precision::kExact) {
    ForRows(options, threads, rows, rows * k, prepare_rows);
  }
  const float* x_scaled = scaled_exactly.load(std::memory_order_relaxed) ? scaled : nullptr;

  // INT8 and BF16 read their prepared input (kernel_args.h).
  const void* xp = nullptr;
  int64_t xp_stride = 0;
  const float* xd = nullptr;
  int64_t xd_stride = 0;
  const int32_t* xqsum = nullptr;
  if (precision == Precision::kInt8) {
    const int64_t blocks = k / kernels::kInt8Block;
    int8_t* q = Grow(scratch.xq, static_cast<size_t>(rows * k));
    float* d = Grow(scratch.xd, static_cast<size_t>(rows * blocks));
    int32_t* qs = Grow(scratch.xqsum, static_cast<size_t>(rows * blocks));
    // The same bits on every target (kernel_args.h).
    (options.target == SimdTarget::kAvx512 ? kernels::PrepareInt8Avx512
     : options.target == SimdTarget::kAvx2 ? kernels::PrepareInt8Avx2
                                           : kernels::PrepareInt8)(
        xf, rows, k, kernels::kInt8Block, w.lane_bits_, q, d, qs);
    xp = q;
    xp_stride = k;
    xd = d;
    xd_stride = blocks;
    xqsum = qs;
    // The bias term multiplies the sum of the input the products saw, so
    // the affine offset cancels as in x·dequantize(W)ᵀ (kernel_args.h).
    if (w.params_.has_biases()) kernels::Int8GroupSums(d, qs, rows, k, gs, xsum);
  } else if (precision == Precision::kBf16) {
    uint32_t* b = Grow(scratch.xb, static_cast<size_t>(rows * k / 2));
    kernels::PrepareBf16(xf, rows, k, w.lane_bits_, b);
    xp = b;
    xp_stride = k * 2;
    // The same for BF16: the sum of the rounded, flushed input.
    if (w.params_.has_biases()) kernels::Bf16GroupSums(xf, rows, k, gs, xsum);
  }

  // Kernels write whole blocks: straight into y when that fits, else scratch.
  const bool direct = y_dtype == DType::kF32 && w.n_ == w.tiles_ * kTileN;
  const int64_t y_stride = direct ? w.n_ : w.tiles_ * kTileN;
  float* ybuf = direct ? static_cast<float*>(y)
                       : Grow(scratch.y, static_cast<size_t>(rows * y_stride));

  const TileFn kernel = precision == Precision::kInt8   ? Int8KernelFor(options.target)
                        : precision == Precision::kBf16 ? Bf16KernelFor(options.target)
                        : panel                         ? kernels::PanelKernelAvx512
                                                        : KernelFor(options.target);
  TileArgs base{};
  base.xp = xp;
  base.xp_stride = xp_stride;
  base.xd = xd;
  base.xd_stride = xd_stride;
  base.xqsum = xqsum;
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
  base.lane_bits = w.lane_bits_;
  base.codes_stride = w.words_per_tile_;
  base.decode = w.decode_;
  base.scale_type = w.scale_type_;
  base.scale_bytes = static_cast<int>(w.scale_bytes());

  const int64_t blocks = w.tiles_ / kBlockTiles;
  const size_t block_words = static_cast<size_t>(kBlockTiles * w.words_per_tile_);
  const size_t block_param_bytes =
      static_cast<size_t>(groups * kBlockStride) * w.scale_bytes();
  // Tasks over outputs and rows (never over k: that would change each
  // output's summation order): blocks of 64 outputs, and the rows in
  // chunks of at most kTaskInputBytes of input for the tile kernels, halved
  // while there are fewer than four tasks per thread (a layer of few blocks
  // still gives every thread work). A chunk is whole row blocks of the
  // kernel: kMaxRows rows for the tile kernels, at least kPanelChunkRows for
  // the panel (each chunk decodes its panels again).
  const int64_t unit = panel ? kPanelChunkRows : kMaxRows;
  int64_t chunk = panel ? rows : std::max<int64_t>(rows, kMaxRows);
  if (!panel) {
    const int64_t fit = kTaskInputBytes / (k * static_cast<int64_t>(sizeof(float)));
    chunk = std::min(chunk, std::max(unit, fit / unit * unit));
  }
  while (chunk > unit && blocks * CeilDiv(rows, chunk) < 4 * threads) {
    chunk = std::max(unit, CeilDiv(CeilDiv(chunk, 2), unit) * unit);
  }
  const int64_t chunks = CeilDiv(rows, chunk);
  // The body takes its task by value (TBB's index form): TBB reads its
  // ranges in its own frames, which the TSan build's suppressions name.
  auto run_task = [&](int64_t task) {
    HappensAfter();
    const int64_t b = task / chunks;
    const int64_t first = task % chunks * chunk;
    const int64_t last = std::min(rows, first + chunk);
    TileArgs a = base;
    a.tiles = kBlockTiles;
    a.codes = w.codes() + b * block_words;
    a.scales = w.scales_.data() + b * block_param_bytes;
    a.biases = w.biases_.empty() ? nullptr : w.biases_.data() + b * block_param_bytes;
    // The panel takes the chunk at once; the tile kernels row block by row
    // block, the block's codes staying in L2 while each meets them.
    const int64_t step = panel ? chunk : kMaxRows;
    for (int64_t m = first; m < last; m += step) {
      a.rows = static_cast<int>(std::min<int64_t>(step, last - m));
      a.x = xf + m * k;
      a.x_scaled = base.x_scaled == nullptr ? nullptr : base.x_scaled + m * k;
      a.xsum = xsum + m * groups;
      a.xp = xp == nullptr ? nullptr : static_cast<const char*>(xp) + m * xp_stride;
      a.xd = xd == nullptr ? nullptr : xd + m * xd_stride;
      a.xqsum = xqsum == nullptr ? nullptr : xqsum + m * xd_stride;
      a.y = ybuf + m * y_stride + b * kBlockStride;
      kernel(a);
    }
    HappensBefore();
  };
  RunTasks(options, blocks * chunks, run_task);

  // Epilogue: bias, then the output dtype; on all the call's threads for
  // many outputs, like the preparation.
  if (direct && bias == nullptr) return;
  auto finish_rows = [&](int64_t first, int64_t last) {
    for (int64_t m = first; m < last; ++m) {
      for (int64_t n = 0; n < w.n_; ++n) {
        float v = ybuf[m * y_stride + n];
        if (bias != nullptr) v += bias[n];
        StoreFloat(y_dtype, y, static_cast<size_t>(m * w.n_ + n), v);
      }
    }
  };
  ForRows(options, threads, rows, rows * w.n_, finish_rows);
}

}  // namespace qlinear
