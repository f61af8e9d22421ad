// qlinear_kernel_bench: the fast kernels against the scalar reference and
// OpenBLAS sgemm/sgemv on the dequantized float32 weights, in one run.
//
// Names: qmm/<mode>_b<bits>_g<gs>/<f32|f16|bf16>/N<N>_K<K>/M<M>[/cold][/int8|/bf16]
// (each exact case is followed by its INT8 and BF16 runs, core/precision.h;
// the label says which mode ran: INT8 on mxfp8 runs BF16), and
// ref/... and sgemm/... carrying the name of the qmm case they stand beside;
// read/.../M1/cold reads as many bytes as the cold case's layers, a floor
// for it.
// Counters: GFLOPS (2·M·N·K per second) and weight_GBps (bytes of weights +
// scales + biases per second: as the kernel holds them for qmm/, as MLX
// stores them for ref/ and sgemm/).
//
// The default run covers N=K=4096: every format with f32 x at M ∈ {1, 8,
// 32, 128}, affine b4 g64 at M ∈ {1, 2, 4, ..., 256}, 3, 29 and 31 (29: a
// batch the server forms on 2 cores; 3, 29, 31: not whole numbers of row
// blocks) for every x dtype, the cold (DRAM) M=1 and M=8 cases with the
// plain read beside them, the reference at M <= 8 and OpenBLAS beside each.
// Passing --benchmark_filter also registers N=11008,K=4096 and
// N=4096,K=11008.
// Threads: QLINEAR_BENCH_THREADS (default: all cores).
#include <cblas.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "absl/strings/str_cat.h"
#include "core/half.h"
#include "core/kernels/qmm.h"
#include "core/quantize.h"
#include "core/reference.h"
#include "tbb/blocked_range.h"
#include "tbb/parallel_for.h"
#include "tbb/partitioner.h"
#include "tbb/task_arena.h"

extern "C" void openblas_set_num_threads(int);

namespace qlinear {
namespace {

struct Layer {
  QuantizedMatrix q;
  PackedMatrix packed;
};

int Threads() {
  const char* env = std::getenv("QLINEAR_BENCH_THREADS");
  return env != nullptr ? std::atoi(env) : tbb::info::default_concurrency();
}

tbb::task_arena& Arena() {
  static tbb::task_arena arena(Threads());
  return arena;
}

std::string FormatName(const QuantParams& p) {
  return std::string(QuantModeName(p.mode)) + "_b" + std::to_string(p.bits) + "_g" +
         std::to_string(p.group_size);
}

// Layers are built once per (format, shape, copy) and kept for the run.
const Layer& GetLayer(const QuantParams& p, int64_t n, int64_t k, int copy = 0) {
  static std::map<std::string, std::unique_ptr<Layer>> cache;
  const std::string key = FormatName(p) + "/" + std::to_string(n) + "x" +
                          std::to_string(k) + "#" + std::to_string(copy);
  auto& slot = cache[key];
  if (!slot) {
    std::mt19937_64 rng(static_cast<uint64_t>(n * 31 + k * 7 + copy));
    std::normal_distribution<float> normal(0.0f, 0.02f);
    std::vector<uint16_t> w(static_cast<size_t>(n * k));
    for (uint16_t& v : w) v = FloatToHalfBits(normal(rng));
    auto q = Quantize(p, DType::kF16, w.data(), n, k);
    if (!q.ok()) std::abort();
    slot = std::make_unique<Layer>(Layer{*q, PackedMatrix::Pack(*q)});
  }
  return *slot;
}

std::vector<uint8_t> RandomX(DType dtype, int64_t count) {
  std::mt19937_64 rng(99);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint8_t> x(static_cast<size_t>(count) * DTypeSize(dtype));
  for (int64_t i = 0; i < count; ++i) StoreFloat(dtype, x.data(), static_cast<size_t>(i), normal(rng));
  return x;
}

void SetCounters(benchmark::State& state, int64_t m, int64_t n, int64_t k, size_t weight_bytes) {
  state.counters["GFLOPS"] = benchmark::Counter(
      2.0 * static_cast<double>(m * n * k) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["weight_GBps"] = benchmark::Counter(
      static_cast<double>(weight_bytes) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Qmm(benchmark::State& state, QuantParams p, DType xd, int64_t n, int64_t k, int64_t m,
            int copies, Precision precision) {
  std::vector<const Layer*> layers;
  for (int c = 0; c < copies; ++c) layers.push_back(&GetLayer(p, n, k, c));
  const std::vector<uint8_t> x = RandomX(xd, m * k);
  std::vector<uint8_t> y(static_cast<size_t>(m * n) * DTypeSize(xd));
  MatmulOptions options;
  options.arena = &Arena();
  options.precision = precision;
  size_t i = 0;
  for (auto _ : state) {
    const Layer& layer = *layers[i++ % layers.size()];
    QuantizedMatmul(layer.packed, xd, x.data(), m, nullptr, xd, y.data(), options);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  SetCounters(state, m, n, k, layers[0]->packed.bytes());
  MatmulOptions ran = options;
  ran.precision = EffectivePrecision(p, precision);
  state.SetLabel(std::string(SimdTargetName(options.target)) + ", " +
                 std::to_string(Arena().max_concurrency()) + " threads, " +
                 std::string(PrecisionName(ran.precision)) + " ran, " +
                 std::string(KernelStrategyName(ChooseStrategy(ran, m))) + " kernel");
}

// Registers the exact case `name` and, for float32 inputs, right after it
// (so that ratios come from one window) the same case in each opt-in
// precision, named with the precision appended: qmm/.../M128/int8.
void RegisterQmm(const std::string& name, QuantParams p, DType xd, int64_t n, int64_t k,
                 int64_t m, int copies) {
  for (Precision precision : {Precision::kExact, Precision::kInt8, Precision::kBf16}) {
    if (precision != Precision::kExact && xd != DType::kF32) continue;
    // (absl::StrCat: GCC 12's -Wrestrict misfires on std::string's operator+.)
    const std::string full = precision == Precision::kExact
                                 ? absl::StrCat("qmm/", name)
                                 : absl::StrCat("qmm/", name, "/", PrecisionName(precision));
    benchmark::RegisterBenchmark(full.c_str(), BM_Qmm, p, xd, n, k, m, copies, precision)
        ->Unit(benchmark::kMillisecond)->UseRealTime();
  }
}

// The floor under the cold variant: the same threads, in the same arena,
// bringing in as many bytes as one packed layer holds from as many
// distinct buffers, in as many tasks as the product has blocks of
// outputs, summing every 64-bit word into eight sums (a single sum kept
// fewer lines in flight and read 10-20 % slower; one word per line, slower
// still). A DRAM-bound product cannot beat it; how close the cold product
// comes shows how well its streaming hides behind compute on this host at
// this moment (its DRAM is shared with other tenants).
void BM_Read(benchmark::State& state, QuantParams p, int64_t n, int64_t k, int copies) {
  constexpr size_t kLineWords = 64 / sizeof(uint64_t);
  const size_t bytes = GetLayer(p, n, k).packed.bytes();
  const size_t lines = (bytes + 63) / 64;
  const int64_t tasks = (n + kernels::kBlockStride - 1) / kernels::kBlockStride;
  // In the same kind of memory as packed weights (huge pages where the OS
  // gives them: qmm.h).
  struct Buffer {
    explicit Buffer(size_t bytes) : bytes(bytes), data(AllocateWeightMemory(bytes)) {
      std::memset(data, 1, bytes);
    }
    ~Buffer() { FreeWeightMemory(data, bytes); }
    size_t bytes;
    void* data;
  };
  std::vector<std::unique_ptr<Buffer>> buffers;
  for (int c = 0; c < copies; ++c) buffers.push_back(std::make_unique<Buffer>(lines * 64));
  std::vector<uint64_t> sums(static_cast<size_t>(tasks));
  tbb::task_arena& arena = Arena();
  size_t i = 0;
  for (auto _ : state) {
    const auto* data = static_cast<const uint64_t*>(buffers[i++ % buffers.size()]->data);
    arena.execute([&] {
      tbb::parallel_for(
          tbb::blocked_range<int64_t>(0, tasks, 1),
          [&](const tbb::blocked_range<int64_t>& range) {
            for (int64_t t = range.begin(); t < range.end(); ++t) {
              const size_t begin = lines * static_cast<size_t>(t) / static_cast<size_t>(tasks);
              const size_t end = lines * static_cast<size_t>(t + 1) / static_cast<size_t>(tasks);
              uint64_t s[kLineWords] = {};
              for (size_t line = begin; line < end; ++line) {
                for (size_t j = 0; j < kLineWords; ++j) s[j] += data[line * kLineWords + j];
              }
              uint64_t sum = 0;
              for (uint64_t v : s) sum += v;
              sums[static_cast<size_t>(t)] = sum;
            }
          },
          tbb::simple_partitioner());
    });
    benchmark::DoNotOptimize(sums.data());
    benchmark::ClobberMemory();
  }
  state.counters["weight_GBps"] = benchmark::Counter(
      static_cast<double>(bytes) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel("plain read of as many bytes, " + std::to_string(arena.max_concurrency()) +
                 " threads");
}

void BM_Ref(benchmark::State& state, QuantParams p, DType xd, int64_t n, int64_t k, int64_t m) {
  const Layer& layer = GetLayer(p, n, k);
  const std::vector<uint8_t> x = RandomX(xd, m * k);
  std::vector<uint8_t> y(static_cast<size_t>(m * n) * DTypeSize(xd));
  for (auto _ : state) {
    ReferenceForward(layer.q, xd, x.data(), m, nullptr, xd, y.data());
    benchmark::DoNotOptimize(y.data());
  }
  SetCounters(state, m, n, k, layer.q.bytes());
  state.SetLabel("scalar reference, 1 thread");
}

void BM_Sgemm(benchmark::State& state, QuantParams p, int64_t n, int64_t k, int64_t m) {
  const Layer& layer = GetLayer(p, n, k);
  std::vector<float> w(static_cast<size_t>(n * k));
  Dequantize(layer.q, DType::kF32, w.data());
  const std::vector<uint8_t> xb = RandomX(DType::kF32, m * k);
  const float* x = reinterpret_cast<const float*>(xb.data());
  std::vector<float> y(static_cast<size_t>(m * n));
  openblas_set_num_threads(Threads());
  for (auto _ : state) {
    if (m == 1) {
      cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(n), static_cast<int>(k), 1.0f,
                  w.data(), static_cast<int>(k), x, 1, 0.0f, y.data(), 1);
    } else {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m),
                  static_cast<int>(n), static_cast<int>(k), 1.0f, x, static_cast<int>(k),
                  w.data(), static_cast<int>(k), 0.0f, y.data(), static_cast<int>(n));
    }
    benchmark::DoNotOptimize(y.data());
  }
  SetCounters(state, m, n, k, layer.q.bytes());
  state.SetLabel("OpenBLAS on dequantized f32, " + std::to_string(Threads()) + " threads");
}

std::string CaseName(const QuantParams& p, DType xd, int64_t n, int64_t k, int64_t m) {
  return FormatName(p) + "/" + std::string(ShortDTypeName(xd)) + "/N" + std::to_string(n) +
         "_K" + std::to_string(k) + "/M" + std::to_string(m);
}

struct Case {
  QuantParams p;
  DType xd;
  int64_t n, k, m;
};

void RegisterAll(bool full_grid) {
  const QuantParams b4{QuantMode::kAffine, 4, 64};
  std::vector<QuantParams> formats = {
      b4, {QuantMode::kAffine, 4, 32}, {QuantMode::kAffine, 4, 128}, {QuantMode::kAffine, 8, 64},
      {QuantMode::kAffine, 2, 64}, {QuantMode::kAffine, 3, 64}, {QuantMode::kAffine, 5, 64},
      {QuantMode::kAffine, 6, 64}, DefaultQuantParams(QuantMode::kMxfp4),
      DefaultQuantParams(QuantMode::kMxfp8), DefaultQuantParams(QuantMode::kNvfp4)};
  std::vector<std::pair<int64_t, int64_t>> shapes = {{4096, 4096}};
  if (full_grid) {
    shapes.push_back({11008, 4096});
    shapes.push_back({4096, 11008});
  }
  std::vector<Case> cases;
  for (auto [n, k] : shapes) {
    for (const QuantParams& p : formats) {
      for (int64_t m : {1, 8, 32, 128}) {
        if (p == b4) continue;  // covered below with every M
        cases.push_back({p, DType::kF32, n, k, m});
      }
    }
    for (DType xd : {DType::kF32, DType::kF16, DType::kBF16}) {
      for (int64_t m : {1, 2, 3, 4, 8, 16, 29, 31, 32, 64, 128, 256}) {
        cases.push_back({b4, xd, n, k, m});
      }
    }
  }
  // A layer of one 64-output block: only the split of rows among tasks
  // gives a second thread work (qmm.cc).
  for (int64_t m : {1, 32, 128}) cases.push_back({b4, DType::kF32, 64, 4096, m});
  for (const Case& c : cases) {
    RegisterQmm(CaseName(c.p, c.xd, c.n, c.k, c.m), c.p, c.xd, c.n, c.k, c.m, 1);
  }
  // Cold: enough distinct copies (> 64 MiB of packed weights) that every
  // call reads its weights from DRAM.
  for (auto [n, k] : shapes) {
    const int copies =
        static_cast<int>((96ll << 20) / static_cast<int64_t>(PackedMatrix::MaxBytes(b4, n, k)) + 1);
    for (int64_t m : {1, 8}) {
      RegisterQmm(CaseName(b4, DType::kF32, n, k, m) + "/cold", b4, DType::kF32, n, k, m, copies);
    }
    benchmark::RegisterBenchmark(("read/" + CaseName(b4, DType::kF32, n, k, 1) + "/cold").c_str(),
                                 BM_Read, b4, n, k, copies)
        ->Unit(benchmark::kMillisecond)->UseRealTime();
  }
  for (const Case& c : cases) {
    if (c.m > 8 || c.n * c.k > 4096 * 4096) continue;
    if (c.xd != DType::kF32 && c.m > 1) continue;
    benchmark::RegisterBenchmark(("ref/" + CaseName(c.p, c.xd, c.n, c.k, c.m)).c_str(), BM_Ref,
                                 c.p, c.xd, c.n, c.k, c.m)
        ->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
  }
  // OpenBLAS last: its worker threads keep spinning after a call and would
  // steal the cores from whatever ran next.
  for (const Case& c : cases) {
    if (c.xd != DType::kF32) continue;
    benchmark::RegisterBenchmark(("sgemm/" + CaseName(c.p, c.xd, c.n, c.k, c.m)).c_str(),
                                 BM_Sgemm, c.p, c.n, c.k, c.m)
        ->Unit(benchmark::kMillisecond)->UseRealTime();
  }
}

}  // namespace
}  // namespace qlinear

int main(int argc, char** argv) {
  // A misspelt QLINEAR_KERNEL or QLINEAR_SIMD would silently measure the
  // default kernels under another name.
  if (absl::Status env = qlinear::CheckKernelEnvironment(); !env.ok()) {
    std::fprintf(stderr, "qlinear_kernel_bench: %s\n", std::string(env.message()).c_str());
    return 2;
  }
  bool full_grid = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--benchmark_filter", 18) == 0) full_grid = true;
  }
  qlinear::RegisterAll(full_grid);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
