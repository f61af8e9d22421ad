// The error of the opt-in precisions (core/precision.h) on every golden file
// written by MLX (../shared/golden): INT8 and BF16 products against EXACT and
// against MLX's float32 exact-accumulation reference y_f32ref, with bounds
// enforced on every file, and the figures printed one line per file (the
// table of docs/formats.md, "Precision modes", comes from this log), with
// MLX's own forward (the file's y) measured the same way for comparison,
// and INT8's input rounding and error had its input been quantized in
// blocks of the weight group or of 32 instead of kInt8Block (the reason
// for blocks of 16 in docs/formats.md).
//
// Metrics, all sums in double:
//   max    = max|y_mode - ref| / max|ref|, ref = y_f32ref;
//   relrms = sqrt(Σ (y_mode - y_exact)² / Σ y_exact²), against EXACT;
// for MLX's y, whose weights were rounded to the case dtype as y_f32ref's
// were, both figures are against y_f32ref.
#include <dirent.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "core/half.h"
#include "core/kernels/kernel_args.h"
#include "core/kernels/qmm.h"
#include "core/precision.h"
#include "core/quantize.h"
#include "core/safetensors.h"
#include "tests/test_util.h"

namespace qlinear {
namespace {

// Enforced on every file (issue 16): relative RMS against EXACT.
constexpr double kInt8MaxRelRms = 0.007;
constexpr double kBf16MaxRelRms = 0.003;
// And against EXACT run on the rounded input itself (float32 roundings).
constexpr double kMaxArithRelRms = 1e-5;
// The one file where BF16 exceeds kBf16MaxRelRms: edge_fp8sat_mxfp8. All
// its outputs have the same 34 saturated E4M3 codes (±448) at the same k,
// 78 % of their weights' sum of squares, so every output is nearly the
// same signed sum and a row's outputs share one rounding error instead of
// averaging many: the file's relative RMS is that of a few sums (one per
// row), and scatters far more around the input's own rounding than a file
// of independent outputs does. MLX's own bf16 forward errs 0.62 % there.
// Its bound is relative to what the test computes on that file, the
// input's own BF16 rounding (bf16_input_relrms): at most
// kFp8SatBf16PerInputRounding times it, and never above
// kFp8SatBf16MaxRelRms. Measured (the test prints both): 0.318 % = 1.94 x
// its 0.164 % input rounding, while every other file with rounded inputs
// stays within 1.38 x; 2.2 x leaves that file 13 % of margin, and the cap,
// 0.35 % (the lower of the two here), 10 %.
constexpr char kFp8SatFile[] = "edge_fp8sat_mxfp8";
constexpr double kFp8SatBf16PerInputRounding = 2.2;
constexpr double kFp8SatBf16MaxRelRms = 0.0035;

std::vector<std::string> GoldenFiles() {
  std::vector<std::string> names;
  if (DIR* dir = opendir(GoldenDir().c_str())) {
    while (dirent* e = readdir(dir)) {
      if (absl::EndsWith(e->d_name, ".safetensors")) names.push_back(e->d_name);
    }
    closedir(dir);
  }
  std::sort(names.begin(), names.end());
  return names;
}

// One golden file, read as golden_test reads it.
struct Golden {
  std::string name;
  QuantizedMatrix q;
  DType dtype = DType::kF32;
  int64_t m = 0;
  std::vector<uint8_t> x;     // [m, k] of dtype
  std::vector<float> mlx_y;   // MLX's forward, widened to float32
  std::vector<float> f32ref;  // y_f32ref
};

std::vector<uint8_t> Bytes(const SafetensorsFile& file, const char* name) {
  const TensorInfo* t = file.Find(name);
  EXPECT_NE(t, nullptr) << name;
  if (t == nullptr) return {};
  auto span = file.Data(*t);
  return std::vector<uint8_t>(span.begin(), span.end());
}

std::vector<float> Floats(const SafetensorsFile& file, const char* name) {
  const TensorInfo* t = file.Find(name);
  EXPECT_NE(t, nullptr) << name;
  std::vector<float> out;
  if (t == nullptr) return out;
  auto span = file.Data(*t);
  for (int64_t i = 0; i < t->elements(); ++i) {
    out.push_back(LoadFloat(t->dtype, span.data(), static_cast<size_t>(i)));
  }
  return out;
}

// Load fills *g; false (with a failure recorded) when the file is unusable.
bool Load(const std::string& name, Golden* g) {
  auto file = SafetensorsFile::Open(GoldenDir() + "/" + name);
  EXPECT_TRUE(file.ok()) << name << ": " << file.status();
  if (!file.ok()) return false;
  const auto& meta = (*file)->metadata();
  g->name = name;
  auto mode = ParseQuantMode(meta.at("mode"));
  EXPECT_TRUE(mode.ok()) << mode.status();
  if (!mode.ok()) return false;
  g->q.params.mode = *mode;
  EXPECT_TRUE(absl::SimpleAtoi(meta.at("bits"), &g->q.params.bits));
  EXPECT_TRUE(absl::SimpleAtoi(meta.at("group_size"), &g->q.params.group_size));
  const TensorInfo* w = (*file)->Find("w");
  const TensorInfo* x = (*file)->Find("x");
  EXPECT_TRUE(w != nullptr && x != nullptr) << name;
  if (w == nullptr || x == nullptr) return false;
  g->dtype = w->dtype;
  g->q.dtype = w->dtype;
  g->q.n = w->shape[0];
  g->q.k = w->shape[1];
  const std::vector<uint8_t> wq = Bytes(**file, "wq");
  g->q.wq.resize(wq.size() / 4);
  std::memcpy(g->q.wq.data(), wq.data(), wq.size());
  g->q.scales = Bytes(**file, "scales");
  if (g->q.params.has_biases()) g->q.biases = Bytes(**file, "biases");
  EXPECT_EQ(x->dtype, g->dtype) << name;
  g->m = x->shape[0];
  g->x = Bytes(**file, "x");
  g->mlx_y = Floats(**file, "y");
  g->f32ref = Floats(**file, "y_f32ref");
  const size_t outputs = static_cast<size_t>(g->m * g->q.n);
  EXPECT_EQ(g->mlx_y.size(), outputs) << name;
  EXPECT_EQ(g->f32ref.size(), outputs) << name;
  return ValidateQuantizedValues(g->q).ok() && g->mlx_y.size() == outputs &&
         g->f32ref.size() == outputs;
}

// `rows` rows of x (of dtype) in one call, float32 out.
std::vector<float> Forward(const PackedMatrix& w, DType dtype, const uint8_t* x,
                           int64_t rows, Precision precision,
                           SimdTarget target = DefaultSimdTarget()) {
  std::vector<float> y(static_cast<size_t>(rows * w.n()));
  MatmulOptions options;
  options.precision = precision;
  options.target = target;
  QuantizedMatmul(w, dtype, x, rows, nullptr, DType::kF32, y.data(), options);
  return y;
}

bool AnyNonFinite(const std::vector<float>& v) {
  return std::any_of(v.begin(), v.end(),
                     [](float f) { return !std::isfinite(f); });
}

double SumSquares(const std::vector<float>& v) {
  double s = 0;
  for (float f : v) s += static_cast<double>(f) * f;
  return s;
}

// sqrt(Σ (got - want)² / Σ want²); want must not be all zero.
double RelRms(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    num += d * d;
  }
  return std::sqrt(num / SumSquares(want));
}

// The input each mode's products see, as float32: x' = d·q (INT8, from
// PrepareInt8 with blocks of int8_block consecutive k, kInt8Block in the
// mode itself; lane width 8 keeps q in k order) or bf16(x) with subnormals
// flushed (BF16).
std::vector<float> SeenInput(const Golden& g, Precision p,
                             int64_t int8_block = kernels::kInt8Block) {
  const int64_t k = g.q.k;
  std::vector<float> x(static_cast<size_t>(g.m * k));
  for (size_t i = 0; i < x.size(); ++i)
    x[i] = LoadFloat(g.dtype, g.x.data(), i);
  std::vector<float> seen(x.size());
  if (p == Precision::kInt8) {
    std::vector<int8_t> q(x.size());
    std::vector<float> d(static_cast<size_t>(g.m * (k / int8_block)));
    kernels::PrepareInt8(x.data(), g.m, k, int8_block, /*lane_bits=*/8,
                         q.data(), d.data(), nullptr);
    for (size_t i = 0; i < x.size(); ++i) {
      seen[i] =
          d[i / static_cast<size_t>(int8_block)] * static_cast<float>(q[i]);
    }
  } else {
    for (size_t i = 0; i < x.size(); ++i) {
      const float b = RoundTo(DType::kBF16, x[i]);
      seen[i] = std::fabs(b) < 0x1p-126f ? 0.0f : b;
    }
  }
  return seen;
}

std::vector<float> WidenedInput(const Golden& g) {
  std::vector<float> x(static_cast<size_t>(g.m * g.q.k));
  for (size_t i = 0; i < x.size(); ++i)
    x[i] = LoadFloat(g.dtype, g.x.data(), i);
  return x;
}

bool AllZero(const std::vector<float>& v) {
  return std::all_of(v.begin(), v.end(), [](float f) { return f == 0.0f; });
}

// Family of a golden name for the summary: "affine b4", "mxfp4", ... and
// "edge" for the edge cases.
std::string Family(const Golden& g) {
  if (absl::StartsWith(g.name, "edge_")) return "edge";
  if (g.q.params.mode == QuantMode::kAffine)
    return "affine b" + std::to_string(g.q.params.bits);
  return std::string(QuantModeName(g.q.params.mode));
}

struct Figures {
  double exact_max = 0, int8_max = 0, int8_rms = 0, bf16_max = 0, bf16_rms = 0;
  double int8_input = 0, bf16_input = 0;  // the input's own rounding
  double int8_arith = 0, bf16_arith = 0;  // the rest
  double mlx_max = 0, mlx_rms = 0;        // f16/bf16 cases with a finite y only
  bool has_mlx = false;
  double bf16_ratio = 0;  // bf16_rms / bf16_input
  // INT8 with the input in blocks of the weight group, 32 and kInt8Block:
  // the input's rounding and the output's relative RMS against EXACT (0:
  // not measured, a block larger than the group).
  double block_input[3] = {}, block_out[3] = {};
};

// A figure that is undefined on a file (zero reference) prints as "-".
std::string Fmt(double v, bool defined = true) {
  if (!defined) return "-";
  std::ostringstream s;
  s << std::scientific << std::setprecision(3) << v;
  return s.str();
}

TEST(PrecisionErrorTest, FolderHasAllFiles) {
  // A missing golden folder is a failure, never a skip.
  EXPECT_EQ(GoldenFiles().size(), 76u) << "golden folder: " << GoldenDir();
}

TEST(PrecisionErrorTest, Int8AndBf16StayWithinBoundsOnEveryGoldenFile) {
  const std::vector<std::string> files = GoldenFiles();
  ASSERT_EQ(files.size(), 76u) << "golden folder: " << GoldenDir();
  std::map<std::string, Figures> worst;  // per family: the max of each figure
  Figures all;  // over every file: the block figures and bf16_ratio
  std::cout
      << "file exact_max int8_max int8_relrms bf16_max bf16_relrms mlx_max "
         "mlx_relrms"
         " int8_input_relrms bf16_input_relrms int8_arith bf16_arith outputs"
      << std::endl;
  for (const std::string& name : files) {
    SCOPED_TRACE(name);
    Golden g;
    if (!Load(name, &g)) continue;  // Load recorded the failure
    const PackedMatrix w = PackedMatrix::Pack(g.q);
    const std::vector<float> exact =
        Forward(w, g.dtype, g.x.data(), g.m, Precision::kExact);
    const std::vector<float> int8 =
        Forward(w, g.dtype, g.x.data(), g.m, Precision::kInt8);
    const std::vector<float> bf16 =
        Forward(w, g.dtype, g.x.data(), g.m, Precision::kBf16);
    // Every golden input and layer is finite, and so is every float32
    // forward of it in any mode, edge_f16range included (there MLX's fp16
    // dequantize overflows; qlinear's float32 weights do not).
    ASSERT_FALSE(AnyNonFinite(exact));
    ASSERT_FALSE(AnyNonFinite(int8));
    ASSERT_FALSE(AnyNonFinite(bf16));
    if (g.q.params.mode == QuantMode::kMxfp8) {
      // INT8 asked of mxfp8 runs BF16 (E4M3 has no exact int8 form).
      EXPECT_EQ(std::memcmp(int8.data(), bf16.data(), int8.size() * 4), 0);
    }

    // The reference for the max figure: y_f32ref, except on edge_f16range,
    // where MLX computed it from fp16 weights that overflowed (NaN there):
    // then EXACT, which is finite, stands in (its own figure is 0 there).
    const bool ref_nan = std::any_of(g.f32ref.begin(), g.f32ref.end(),
                                     [](float f) { return std::isnan(f); });
    if (ref_nan) {
      EXPECT_TRUE(absl::StartsWith(name, "edge_f16range"))
          << "y_f32ref has NaN";
    }
    const std::vector<float>& ref = ref_nan ? exact : g.f32ref;

    Figures f;
    if (AllZero(exact)) {
      // Layers that dequantize to all zeros: edge_zeros and edge_fpzeros_*
      // (all-zero weights), and edge_tiny (|w| ~ 1e-8: MLX's scale floor
      // 1e-7 leaves every code 0 and every bias 0). Every product is then
      // zero in every mode, relative figures are undefined, and instead
      // every mode must give exact zeros, as MLX's reference does.
      EXPECT_TRUE(AllZero(g.f32ref)) << "EXACT is all zero but y_f32ref is not";
      EXPECT_TRUE(AllZero(int8)) << "INT8 on all-zero weights is not all zero";
      EXPECT_TRUE(AllZero(bf16)) << "BF16 on all-zero weights is not all zero";
      std::cout << name
                << " all-zero: exact, int8 and bf16 outputs are all exactly 0"
                << std::endl;
      continue;
    }
    f.exact_max = NormalisedError(exact, ref);
    f.int8_max = NormalisedError(int8, ref);
    f.bf16_max = NormalisedError(bf16, ref);
    f.int8_rms = RelRms(int8, exact);
    f.bf16_rms = RelRms(bf16, exact);
    // Where the error comes from: the input's own rounding, sqrt(Σ (x' -
    // x)² / Σ x²), and the mode's arithmetic beyond it, the relative RMS
    // against EXACT run on x' itself. The second must stay at float32
    // rounding level (the integer dot product is exact, the BF16 products
    // are exact in float32): the error is the input's rounding, nothing
    // else.
    const std::vector<float> x = WidenedInput(g);
    const std::vector<float> x_int8 = SeenInput(g, Precision::kInt8);
    const std::vector<float> x_bf16 = SeenInput(g, Precision::kBf16);
    // On mxfp8 INT8 is BF16: its figures there are BF16's.
    const bool int8_runs = g.q.params.mode != QuantMode::kMxfp8;
    f.bf16_input = RelRms(x_bf16, x);
    f.int8_input = int8_runs ? RelRms(x_int8, x) : f.bf16_input;
    f.bf16_arith =
        RelRms(bf16, Forward(w, DType::kF32,
                             reinterpret_cast<const uint8_t*>(x_bf16.data()),
                             g.m, Precision::kExact));
    f.int8_arith =
        int8_runs
            ? RelRms(int8,
                     Forward(w, DType::kF32,
                             reinterpret_cast<const uint8_t*>(x_int8.data()),
                             g.m, Precision::kExact))
            : f.bf16_arith;
    if (int8_runs) {
      EXPECT_LE(f.int8_arith, kMaxArithRelRms)
          << "INT8 beyond its input rounding";
    }
    EXPECT_LE(f.bf16_arith, kMaxArithRelRms)
        << "BF16 beyond its input rounding";
    EXPECT_LE(f.int8_rms, kInt8MaxRelRms)
        << "INT8 relative RMS; the input's own INT8 rounding: " << f.int8_input;
    if (absl::StartsWith(name, kFp8SatFile)) {
      const double bound = std::min(
          kFp8SatBf16MaxRelRms, kFp8SatBf16PerInputRounding * f.bf16_input);
      std::cout << name << " bf16 bound (this file only): min("
                << kFp8SatBf16PerInputRounding << " x bf16_input "
                << Fmt(f.bf16_input) << ", " << Fmt(kFp8SatBf16MaxRelRms)
                << ") = " << Fmt(bound) << "; bf16_relrms " << Fmt(f.bf16_rms)
                << " = " << std::setprecision(3) << f.bf16_rms / f.bf16_input
                << " x bf16_input" << std::endl;
      EXPECT_LE(f.bf16_rms, bound)
          << "BF16 relative RMS; the input's own BF16 rounding: "
          << f.bf16_input;
    } else {
      EXPECT_LE(f.bf16_rms, kBf16MaxRelRms)
          << "BF16 relative RMS; the input's own BF16 rounding: "
          << f.bf16_input;
    }
    // (Only where the input was rounded at all: not on bf16 cases.)
    if (f.bf16_input > 1e-4) f.bf16_ratio = f.bf16_rms / f.bf16_input;
    // INT8's input block: the same figures had the input been quantized in
    // blocks of the weight group (the first definition) or of 32 inputs
    // (output: EXACT run on that x', whose difference from INT8 itself is
    // float32 rounding, as int8_arith shows).
    if (int8_runs) {
      const int64_t gs = g.q.params.group_size;
      const int64_t sizes[3] = {gs, 32, kernels::kInt8Block};
      std::cout << name << " int8 by block (group " << gs << " / 32 / "
                << kernels::kInt8Block << "): input";
      for (int b = 0; b < 3; ++b) {
        if (sizes[b] > gs || gs % sizes[b] != 0) {
          std::cout << " -";
          continue;
        }
        const std::vector<float> seen = SeenInput(g, Precision::kInt8, sizes[b]);
        f.block_input[b] = RelRms(seen, x);
        f.block_out[b] = RelRms(
            Forward(w, DType::kF32, reinterpret_cast<const uint8_t*>(seen.data()),
                    g.m, Precision::kExact),
            exact);
        std::cout << " " << Fmt(f.block_input[b]);
      }
      std::cout << " output";
      for (int b = 0; b < 3; ++b) {
        std::cout << " " << Fmt(f.block_out[b], f.block_out[b] > 0);
      }
      std::cout << std::endl;
    }
    // MLX's own forward accumulates in the case dtype: its error against
    // the same references (its y is NaN on edge_f16range: not measured).
    f.has_mlx = g.dtype != DType::kF32 && !AnyNonFinite(g.mlx_y);
    if (f.has_mlx) {
      f.mlx_max = NormalisedError(g.mlx_y, ref);
      f.mlx_rms = RelRms(g.mlx_y, g.f32ref);
    }
    std::cout << name << " " << Fmt(f.exact_max) << " " << Fmt(f.int8_max)
              << " " << Fmt(f.int8_rms) << " " << Fmt(f.bf16_max) << " "
              << Fmt(f.bf16_rms) << " " << Fmt(f.mlx_max, f.has_mlx) << " "
              << Fmt(f.mlx_rms, f.has_mlx) << " " << Fmt(f.int8_input) << " "
              << Fmt(f.bf16_input) << " " << Fmt(f.int8_arith) << " "
              << Fmt(f.bf16_arith) << " " << exact.size() << std::endl;

    Figures& w_f = worst[Family(g)];
    w_f.exact_max = std::max(w_f.exact_max, f.exact_max);
    w_f.int8_max = std::max(w_f.int8_max, f.int8_max);
    w_f.int8_rms = std::max(w_f.int8_rms, f.int8_rms);
    w_f.bf16_max = std::max(w_f.bf16_max, f.bf16_max);
    w_f.bf16_rms = std::max(w_f.bf16_rms, f.bf16_rms);
    w_f.int8_input = std::max(w_f.int8_input, f.int8_input);
    w_f.bf16_input = std::max(w_f.bf16_input, f.bf16_input);
    w_f.int8_arith = std::max(w_f.int8_arith, f.int8_arith);
    w_f.bf16_arith = std::max(w_f.bf16_arith, f.bf16_arith);
    if (f.has_mlx) {
      w_f.has_mlx = true;
      w_f.mlx_max = std::max(w_f.mlx_max, f.mlx_max);
      w_f.mlx_rms = std::max(w_f.mlx_rms, f.mlx_rms);
    }
    for (int b = 0; b < 3; ++b) {
      all.block_input[b] = std::max(all.block_input[b], f.block_input[b]);
      all.block_out[b] = std::max(all.block_out[b], f.block_out[b]);
    }
    if (!absl::StartsWith(name, kFp8SatFile)) {
      all.bf16_ratio = std::max(all.bf16_ratio, f.bf16_ratio);
    }
  }
  std::cout << "summary (max over the INT8 files) int8 by block (group / 32 / "
            << kernels::kInt8Block << "): input";
  for (int b = 0; b < 3; ++b) std::cout << " " << Fmt(all.block_input[b]);
  std::cout << " output";
  for (int b = 0; b < 3; ++b) std::cout << " " << Fmt(all.block_out[b]);
  std::cout << std::endl;
  std::cout << "summary bf16_relrms / bf16_input, max over the files but "
            << kFp8SatFile << ": " << std::setprecision(3) << all.bf16_ratio
            << std::endl;
  std::cout << "summary (max over files): family exact_max int8_max "
               "int8_relrms bf16_max "
               "bf16_relrms mlx_max mlx_relrms int8_input_relrms "
               "bf16_input_relrms int8_arith "
               "bf16_arith"
            << std::endl;
  for (const auto& [family, f] : worst) {
    std::cout << "summary " << family << " " << Fmt(f.exact_max) << " "
              << Fmt(f.int8_max) << " " << Fmt(f.int8_rms) << " "
              << Fmt(f.bf16_max) << " " << Fmt(f.bf16_rms) << " "
              << Fmt(f.mlx_max, f.has_mlx) << " " << Fmt(f.mlx_rms, f.has_mlx)
              << " " << Fmt(f.int8_input) << " " << Fmt(f.bf16_input) << " "
              << Fmt(f.int8_arith) << " " << Fmt(f.bf16_arith) << std::endl;
  }
}

// Batch invariance on golden inputs: in both opt-in modes (and EXACT), each
// golden row computed alone has the same bits as in a batch of 11 rows
// (more than one 8-row register block) that repeats the file's rows in a
// shuffled order.
TEST(PrecisionErrorTest, RowsAloneEqualTheBatchOnGoldenInputs) {
  const std::vector<std::string> files = GoldenFiles();
  ASSERT_EQ(files.size(), 76u) << "golden folder: " << GoldenDir();
  constexpr int64_t kBatch = 11;
  for (const std::string& name : files) {
    SCOPED_TRACE(name);
    Golden g;
    if (!Load(name, &g)) continue;
    const PackedMatrix w = PackedMatrix::Pack(g.q);
    const size_t row_bytes = static_cast<size_t>(g.q.k) * DTypeSize(g.dtype);
    std::vector<int64_t> source(kBatch);
    std::vector<uint8_t> batch(static_cast<size_t>(kBatch) * row_bytes);
    for (int64_t i = 0; i < kBatch; ++i) {
      source[i] = (i * 5 + 2) % g.m;
      std::memcpy(batch.data() + i * row_bytes,
                  g.x.data() + source[i] * row_bytes, row_bytes);
    }
    for (Precision p :
         {Precision::kExact, Precision::kInt8, Precision::kBf16}) {
      SCOPED_TRACE(PrecisionName(p));
      const std::vector<float> together =
          Forward(w, g.dtype, batch.data(), kBatch, p);
      const std::vector<float> golden_batch =
          Forward(w, g.dtype, g.x.data(), g.m, p);
      for (int64_t r = 0; r < g.m; ++r) {
        const std::vector<float> alone =
            Forward(w, g.dtype, g.x.data() + r * row_bytes, 1, p);
        const size_t n = static_cast<size_t>(g.q.n);
        EXPECT_EQ(std::memcmp(alone.data(), golden_batch.data() + r * n, n * 4),
                  0)
            << "row " << r << " of the file's batch";
        for (int64_t i = 0; i < kBatch; ++i) {
          if (source[i] != r) continue;
          EXPECT_EQ(std::memcmp(alone.data(), together.data() + i * n, n * 4),
                    0)
              << "row " << r << " at " << i << " of the 11-row batch";
        }
      }
    }
  }
}

// docs/formats.md ("Precision modes") written out again from its text alone,
// without qlinear's layout or kernels: the layer's codes, scales and biases
// as QuantizedMatrix holds them, k indices only. The test below requires
// QuantizedMatmul's bits, so the docs are precise enough to reproduce them.
// (No a*b+c expression here: nothing the compiler could contract.)
int DocLaneWidth(const QuantParams& p) {
  if (p.mode == QuantMode::kAffine)
    return p.bits == 2 ? 2 : p.bits == 4 ? 4 : 8;
  return p.mode == QuantMode::kMxfp8 ? 8 : 4;
}

std::vector<float> DocInt8(const Golden& g) {
  const QuantizedMatrix& w = g.q;
  const int64_t k = w.k, gs = w.params.group_size, groups = k / gs;
  constexpr int64_t kBlock = 16;  // the docs' block of inputs
  const int64_t blocks = k / kBlock, per_group = gs / kBlock;
  const bool fp4 = w.params.mode != QuantMode::kAffine;
  const std::vector<float> x = WidenedInput(g);
  std::vector<float> y(static_cast<size_t>(g.m * w.n));
  for (int64_t m = 0; m < g.m; ++m) {
    const float* row = x.data() + m * k;
    std::vector<int> q(static_cast<size_t>(k), 0), qsum(static_cast<size_t>(blocks), 0);
    std::vector<float> d(static_cast<size_t>(blocks)),
        xsum(static_cast<size_t>(groups), 0.0f);
    for (int64_t b = 0; b < blocks; ++b) {
      float amax = 0;
      bool finite = true;
      for (int64_t i = b * kBlock; i < (b + 1) * kBlock; ++i) {
        finite = finite && std::isfinite(row[i]);
        amax = std::max(amax, std::fabs(row[i]));
      }
      d[b] = finite ? amax / 127.0f : std::nanf("");
      for (int64_t i = b * kBlock; i < (b + 1) * kBlock; ++i) {
        if (finite && amax != 0) {
          float r = row[i] / d[b];
          r = -127.0f < r ? r : -127.0f;
          r = r < 127.0f ? r : 127.0f;
          q[i] = static_cast<int>(std::nearbyint(r));  // ties to even
        }
        qsum[b] += q[i];
      }
    }
    // xsum per group: from 0, its blocks ascending, one fma each.
    for (int64_t gi = 0; gi < groups; ++gi) {
      for (int64_t b = gi * per_group; b < (gi + 1) * per_group; ++b)
        xsum[gi] = std::fma(d[b], static_cast<float>(qsum[b]), xsum[gi]);
    }
    for (int64_t n = 0; n < w.n; ++n) {
      const uint32_t* codes = w.wq.data() + n * w.params.packed_cols(k);
      float acc_y = 0.0f;
      for (int64_t gi = 0; gi < groups; ++gi) {
        float acc = 0.0f;
        for (int64_t b = gi * per_group; b < (gi + 1) * per_group; ++b) {
          int32_t p = 0;  // Σ q·code (affine) or Σ q·2·E2M1 (fp4), exact
          for (int64_t i = b * kBlock; i < (b + 1) * kBlock; ++i) {
            const uint32_t code = UnpackCode(codes, w.params.bits, i);
            const int c =
                fp4 ? static_cast<int>(2.0f * CodeValue(w.params.mode, code))
                    : static_cast<int>(code);
            p += q[i] * c;
          }
          acc = std::fma(d[b], static_cast<float>(p), acc);
        }
        if (fp4) acc = acc * 0.5f;  // the doubled E2M1, once per group
        acc_y = std::fma(GroupScale(w, n, gi), acc, acc_y);
        if (!fp4) acc_y = std::fma(GroupBias(w, n, gi), xsum[gi], acc_y);
      }
      y[static_cast<size_t>(m * w.n + n)] = acc_y;
    }
  }
  return y;
}

float DocFlush(float v) {
  return std::fabs(v) < 0x1p-126f ? std::copysign(0.0f, v) : v;
}

std::vector<float> DocBf16(const Golden& g) {
  const QuantizedMatrix& w = g.q;
  const int64_t k = w.k, gs = w.params.group_size, groups = k / gs;
  const int cpl = 32 / DocLaneWidth(w.params);
  const std::vector<float> x = WidenedInput(g);
  std::vector<float> y(static_cast<size_t>(g.m * w.n));
  for (int64_t m = 0; m < g.m; ++m) {
    const float* row = x.data() + m * k;
    std::vector<float> xb(static_cast<size_t>(k)),
        xsum(static_cast<size_t>(groups));
    for (int64_t i = 0; i < k; ++i)
      xb[i] = DocFlush(RoundTo(DType::kBF16, row[i]));
    for (int64_t gi = 0; gi < groups; ++gi) {
      double sum = 0;
      for (int64_t i = gi * gs; i < (gi + 1) * gs; ++i) sum += xb[i];
      xsum[gi] = static_cast<float>(sum);
    }
    for (int64_t n = 0; n < w.n; ++n) {
      const uint32_t* codes = w.wq.data() + n * w.params.packed_cols(k);
      auto v = [&](int64_t i) {
        return CodeValue(w.params.mode, UnpackCode(codes, w.params.bits, i));
      };
      float acc_y = 0.0f;
      for (int64_t gi = 0; gi < groups; ++gi) {
        float acc = 0.0f;
        for (int64_t k0 = gi * gs; k0 < (gi + 1) * gs; k0 += cpl) {
          for (int i = 0; i < cpl / 2; ++i) {
            const int64_t hi = k0 + i + cpl / 2, lo = k0 + i;
            acc = DocFlush(std::fma(xb[hi], v(hi), acc));
            acc = DocFlush(std::fma(xb[lo], v(lo), acc));
          }
        }
        acc_y = std::fma(GroupScale(w, n, gi), acc, acc_y);
        if (w.params.has_biases())
          acc_y = std::fma(GroupBias(w, n, gi), xsum[gi], acc_y);
      }
      y[static_cast<size_t>(m * w.n + n)] = acc_y;
    }
  }
  return y;
}

TEST(PrecisionErrorTest, DocsDefinitionGivesTheSameBitsOnGoldenFiles) {
  const std::vector<std::string> files = GoldenFiles();
  ASSERT_EQ(files.size(), 76u) << "golden folder: " << GoldenDir();
  for (const std::string& name : files) {
    SCOPED_TRACE(name);
    Golden g;
    if (!Load(name, &g)) continue;
    const PackedMatrix w = PackedMatrix::Pack(g.q);
    const std::vector<float> bf16 =
        Forward(w, g.dtype, g.x.data(), g.m, Precision::kBf16);
    EXPECT_EQ(std::memcmp(bf16.data(), DocBf16(g).data(), bf16.size() * 4), 0)
        << "BF16";
    if (g.q.params.mode != QuantMode::kMxfp8) {
      const std::vector<float> int8 =
          Forward(w, g.dtype, g.x.data(), g.m, Precision::kInt8);
      EXPECT_EQ(std::memcmp(int8.data(), DocInt8(g).data(), int8.size() * 4), 0)
          << "INT8";
    }
  }
}

// The figures above hold on every target: each SIMD target this CPU runs
// gives the portable definition's bits in every mode on golden inputs.
TEST(PrecisionErrorTest, TargetsAgreeOnGoldenInputs) {
  const std::vector<std::string> files = GoldenFiles();
  ASSERT_EQ(files.size(), 76u) << "golden folder: " << GoldenDir();
  for (const std::string& name : files) {
    SCOPED_TRACE(name);
    Golden g;
    if (!Load(name, &g)) continue;
    const PackedMatrix w = PackedMatrix::Pack(g.q);
    for (Precision p :
         {Precision::kExact, Precision::kInt8, Precision::kBf16}) {
      const std::vector<float> portable =
          Forward(w, g.dtype, g.x.data(), g.m, p, SimdTarget::kPortable);
      for (SimdTarget target : {SimdTarget::kAvx2, SimdTarget::kAvx512}) {
        if (!SimdTargetSupported(target)) continue;
        const std::vector<float> y =
            Forward(w, g.dtype, g.x.data(), g.m, p, target);
        EXPECT_EQ(std::memcmp(y.data(), portable.data(), y.size() * 4), 0)
            << PrecisionName(p) << " on " << SimdTargetName(target);
      }
    }
  }
}

}  // namespace
}  // namespace qlinear
