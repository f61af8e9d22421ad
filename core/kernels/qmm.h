// Fast quantized matrix products: y = x · dequantize(W)ᵀ (+ bias) for every
// format, on the best SIMD target of this CPU, in parallel with oneTBB.
//
//   PackedMatrix w = PackedMatrix::Pack(q);   // once, at load time
//   QuantizedMatmul(w, DType::kF32, x, m, bias, DType::kF32, y, {.arena = &a});
//
// Results are batch-invariant and deterministic: each output is computed by
// one fixed sequence of float32 operations per precision (kernel_args.h),
// so a row's bits never depend on the other rows of the batch, the batch
// size, the thread count or the SIMD target (AVX-512, AVX2+FMA, portable).
//
// Thread safety: a PackedMatrix is immutable after Pack; any number of
// threads may run QuantizedMatmul on it at once.
#ifndef QLINEAR_CORE_KERNELS_QMM_H_
#define QLINEAR_CORE_KERNELS_QMM_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "core/dtype.h"
#include "core/kernels/kernel_args.h"
#include "core/precision.h"
#include "core/quantize.h"

#include "tbb/task_arena.h"

namespace qlinear {

enum class SimdTarget { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

absl::string_view SimdTargetName(SimdTarget target);

// SimdTargetSupported tells whether this CPU (and OS) can run `target`.
bool SimdTargetSupported(SimdTarget target);

// DefaultSimdTarget is the best supported target, capped by the environment
// variable QLINEAR_SIMD (portable | avx2 | avx512) when set; chosen once.
SimdTarget DefaultSimdTarget();

// How an EXACT product on AVX-512 uses the cores' pipes; every strategy
// gives the same bits (kernel_args.h's sequence), only speed differs.
//   kRegister: codes decoded in registers, shared by up to 8 rows
//              (qmm_avx512.cc).
//   kPanel:    a block's codes decoded once per task, 1024 inputs at a
//              time, into a float32 panel in L2, then a 6-row x 64-output
//              micro-kernel over every row (qmm_panel_avx512.cc), the
//              GEMM-style strategy.
//   kAuto:     ChooseStrategy's rule.
// Measured (docs/performance.md, N = K = 4096 4-bit): on a 16-core Xeon
// the panel is within a few per cent of the register kernel at M = 128
// (16 threads: 1-6 % faster in three alternating rounds, 5 % slower in
// another run) and slower at M <= 32; on Zen 5 its first form lost at few
// rows and won no clear margin at 32 or 128. So kAuto runs
// the register kernel; the panel is there to be asked for
// (QLINEAR_KERNEL=panel) and measured on other CPUs. Other targets and
// precisions run their tile kernels whatever is asked.
enum class KernelStrategy { kAuto = 0, kRegister = 1, kPanel = 2 };

absl::string_view KernelStrategyName(KernelStrategy strategy);

// DefaultKernelStrategy is kAuto unless the environment variable
// QLINEAR_KERNEL (auto | register | panel) says otherwise; read once.
KernelStrategy DefaultKernelStrategy();

// The values QLINEAR_SIMD and QLINEAR_KERNEL may take, '|'-separated, the
// first meaning "no choice" (the readers above ignore it): the one list,
// read by CheckKernelEnvironment and by the server's --simd and --kernel
// settings (server/settings.cc). qmm_test checks it against the names.
inline constexpr char kSimdChoices[] = "best|avx512|avx2|portable";
inline constexpr char kKernelChoices[] = "auto|register|panel";

// CheckKernelEnvironment: QLINEAR_SIMD and QLINEAR_KERNEL, where set, hold
// one of their choices above, in lower case (the readers ignore any other
// value). InvalidArgument names the variable, what it may be and what it
// is. Read afresh at each call; for programs that take the variables
// straight from their environment (the server checks its own settings).
absl::Status CheckKernelEnvironment();

struct MatmulOptions {
  SimdTarget target = DefaultSimdTarget();
  KernelStrategy strategy = DefaultKernelStrategy();
  // Run inside this arena (owned by the caller); null: the calling thread's
  // current arena.
  tbb::task_arena* arena = nullptr;
  // The arithmetic (core/precision.h); QuantizedMatmul runs
  // EffectivePrecision(w.params(), precision).
  Precision precision = Precision::kExact;
};

// ChooseStrategy is what QuantizedMatmul runs for `rows` rows under
// `options`: kRegister or kPanel, never kAuto (kPanel only when asked for,
// and only for EXACT on AVX-512). The one dispatch point between them.
KernelStrategy ChooseStrategy(const MatmulOptions& options, int64_t rows);

// CpuHasVnni / CpuHasAvx512Bf16 tell whether this CPU has AVX512-VNNI
// (vpdpbusd on 512 bits) and AVX512-BF16 (vdpbf16ps): the INT8 and BF16
// kernels of the AVX-512 target use them, and otherwise run code that
// gives the same bits without them.
bool CpuHasVnni();
bool CpuHasAvx512Bf16();

class PackedMatrix;

// Memory for packed weights, at least 64-byte aligned. An allocation of
// 2 MiB or more is its own mapping, from a 2 MiB boundary to the end of
// the OS page that holds its last byte, and asks the OS for transparent
// huge pages there (madvise; where the OS gives none, it keeps 4 KiB
// pages): a one-row product streams its weights across thousands of 4 KiB
// pages, and their address translations cost DRAM-bound calls time
// (measured in docs/performance.md). Throws std::bad_alloc when out of
// memory.
void* AllocateWeightMemory(size_t bytes);
// Frees what AllocateWeightMemory(bytes) returned.
void FreeWeightMemory(void* p, size_t bytes);

// QuantizedMatmul computes y[m, n] = Σ_k x[m, k] w[n, k] (+ bias[n]) for
// m < rows. x: [rows, w.k()] of x_dtype; y: [rows, w.n()] of y_dtype (F32,
// F16 or BF16); bias: w.n() floats or null. Preconditions (validated by the
// caller): dtypes floating, `target` supported. Allocates nothing per call
// beyond reusable per-thread scratch.
void QuantizedMatmul(const PackedMatrix& w, DType x_dtype, const void* x,
                     int64_t rows, const float* bias, DType y_dtype, void* y,
                     const MatmulOptions& options = MatmulOptions());

// PackedMatrix: a QuantizedMatrix repacked into output-interleaved tiles of
// 16 outputs, four tiles to a block (see kernel_args.h), scales and biases
// in the narrowest of bfloat16, float16 and float32 that holds them all
// exactly.
class PackedMatrix {
 public:
  static PackedMatrix Pack(const QuantizedMatrix& q);
  // MaxBytes is the most bytes() can be for this shape (float32 scales).
  static size_t MaxBytes(const QuantParams& params, int64_t n, int64_t k);

  int64_t n() const { return n_; }
  int64_t k() const { return k_; }
  const QuantParams& params() const { return params_; }
  // bytes() is what the packed form really holds.
  size_t bytes() const { return codes_.size() * 4 + scales_.size() + biases_.size(); }
  kernels::ScaleType scale_type() const { return scale_type_; }

 private:
  friend void QuantizedMatmul(const PackedMatrix&, DType, const void*, int64_t,
                              const float*, DType, void*, const MatmulOptions&);
  QuantParams params_;
  int64_t n_ = 0, k_ = 0, tiles_ = 0, groups_ = 0, words_per_tile_ = 0;
  int lane_bits_ = 4;
  kernels::Decode decode_ = kernels::Decode::kInt;
  // From AllocateWeightMemory: each word of 16 lanes is one cache line, and
  // large matrices sit on huge pages.
  template <typename T>
  struct WeightAllocator {
    using value_type = T;
    WeightAllocator() = default;
    template <typename U>
    WeightAllocator(const WeightAllocator<U>&) {}
    T* allocate(size_t n) { return static_cast<T*>(AllocateWeightMemory(n * sizeof(T))); }
    void deallocate(T* p, size_t n) { FreeWeightMemory(p, n * sizeof(T)); }
    bool operator==(const WeightAllocator&) const { return true; }
  };
  // [tiles][k / cpl][16], after kPadWords zero words and before as many
  // more (kernels may read a few bytes either side of a word:
  // kernel_args.h).
  static constexpr int64_t kPadWords = kernels::kTileN;  // one 64-byte word
  std::vector<uint32_t, WeightAllocator<uint32_t>> codes_;
  const uint32_t* codes() const { return codes_.data() + kPadWords; }
  kernels::ScaleType scale_type_ = kernels::ScaleType::kF32;
  // [blocks][groups][4 tiles][16] values of scale_type_, as bytes.
  std::vector<uint8_t> scales_;
  std::vector<uint8_t> biases_;  // empty for fp modes

  size_t scale_bytes() const { return scale_type_ == kernels::ScaleType::kF32 ? 4 : 2; }
};

}  // namespace qlinear

#endif  // QLINEAR_CORE_KERNELS_QMM_H_
