// The golden files written by MLX itself (../shared/golden, see its README)
// are the oracle: quantize must reproduce wq/scales/biases bit for bit,
// dequantize must reproduce wdq bit for bit, and the reference forward must
// be as close to the exact product as stated in the core issue.
#include <dirent.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "core/half.h"
#include "core/kernels/qmm.h"
#include "core/quantize.h"
#include "core/reference.h"
#include "core/safetensors.h"
#include "tests/test_util.h"

namespace qlinear {
namespace {

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

// A missing golden folder is a failure, never a skip.
TEST(GoldenTest, FolderHasAllFiles) {
  EXPECT_EQ(GoldenFiles().size(), 76u) << "golden folder: " << GoldenDir();
}

class GoldenFileTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto file = SafetensorsFile::Open(GoldenDir() + "/" + GetParam());
    ASSERT_TRUE(file.ok()) << file.status();
    file_ = *std::move(file);
    const auto& meta = file_->metadata();
    auto mode = ParseQuantMode(meta.at("mode"));
    ASSERT_TRUE(mode.ok()) << mode.status();
    params_.mode = *mode;
    ASSERT_TRUE(absl::SimpleAtoi(meta.at("bits"), &params_.bits));
    ASSERT_TRUE(absl::SimpleAtoi(meta.at("group_size"), &params_.group_size));
    const TensorInfo* w = file_->Find("w");
    ASSERT_NE(w, nullptr);
    dtype_ = w->dtype;
    n_ = w->shape[0];
    k_ = w->shape[1];
  }

  std::vector<uint8_t> Bytes(const char* name) const {
    const TensorInfo* t = file_->Find(name);
    EXPECT_NE(t, nullptr) << name;
    if (t == nullptr) return {};
    auto span = file_->Data(*t);
    return std::vector<uint8_t>(span.begin(), span.end());
  }

  std::vector<float> Floats(const char* name) const {
    const TensorInfo* t = file_->Find(name);
    EXPECT_NE(t, nullptr) << name;
    std::vector<float> out;
    if (t == nullptr) return out;
    auto span = file_->Data(*t);
    for (int64_t i = 0; i < t->elements(); ++i) {
      out.push_back(LoadFloat(t->dtype, span.data(), static_cast<size_t>(i)));
    }
    return out;
  }

  QuantizedMatrix GoldenQuantized() const {
    QuantizedMatrix q;
    q.params = params_;
    q.dtype = dtype_;
    q.n = n_;
    q.k = k_;
    const std::vector<uint8_t> wq = Bytes("wq");
    q.wq.resize(wq.size() / 4);
    std::memcpy(q.wq.data(), wq.data(), wq.size());
    q.scales = Bytes("scales");
    if (params_.has_biases()) q.biases = Bytes("biases");
    return q;
  }

  std::unique_ptr<SafetensorsFile> file_;
  QuantParams params_;
  DType dtype_ = DType::kF32;
  int64_t n_ = 0, k_ = 0;
};

TEST_P(GoldenFileTest, QuantizeIsBitExact) {
  const std::vector<uint8_t> w = Bytes("w");
  auto q = Quantize(params_, dtype_, w.data(), n_, k_);
  ASSERT_TRUE(q.ok()) << q.status();
  const std::vector<uint8_t> want_wq = Bytes("wq");
  ASSERT_EQ(q->wq.size() * 4, want_wq.size());
  size_t mismatches = 0;
  for (size_t i = 0; i < q->wq.size(); ++i) {
    uint32_t want;
    std::memcpy(&want, want_wq.data() + 4 * i, 4);
    if (q->wq[i] != want && mismatches++ < 5) {
      ADD_FAILURE() << "wq word " << i << ": got " << std::hex << q->wq[i]
                    << " want " << want;
    }
  }
  EXPECT_EQ(mismatches, 0u);
  EXPECT_EQ(q->scales, Bytes("scales"));
  if (params_.has_biases()) {
    EXPECT_EQ(q->biases, Bytes("biases"));
  }
}

TEST_P(GoldenFileTest, DequantizeIsBitExact) {
  const QuantizedMatrix q = GoldenQuantized();
  ASSERT_TRUE(ValidateQuantizedValues(q).ok());
  std::vector<uint8_t> out(static_cast<size_t>(n_ * k_) * DTypeSize(dtype_));
  Dequantize(q, dtype_, out.data());
  const std::vector<uint8_t> want = Bytes("wdq");
  ASSERT_EQ(out.size(), want.size());
  size_t mismatches = 0;
  for (size_t i = 0; i < static_cast<size_t>(n_ * k_); ++i) {
    const size_t sz = DTypeSize(dtype_);
    if (std::memcmp(out.data() + i * sz, want.data() + i * sz, sz) != 0 &&
        mismatches++ < 5) {
      ADD_FAILURE() << "element " << i << ": got "
                    << LoadFloat(dtype_, out.data(), i) << " want "
                    << LoadFloat(dtype_, want.data(), i);
    }
  }
  EXPECT_EQ(mismatches, 0u);
}

bool AnyNaN(const std::vector<float>& v) {
  return std::any_of(v.begin(), v.end(), [](float f) { return std::isnan(f); });
}

TEST_P(GoldenFileTest, ReferenceForwardIsAccurate) {
  const QuantizedMatrix q = GoldenQuantized();
  const TensorInfo* x = file_->Find("x");
  ASSERT_NE(x, nullptr);
  const int64_t m = x->shape[0];
  const std::vector<uint8_t> xb = Bytes("x");
  // Output in x's dtype, the service's default.
  std::vector<uint8_t> yb(static_cast<size_t>(m * n_) * DTypeSize(dtype_));
  ReferenceForward(q, x->dtype, xb.data(), m, nullptr, dtype_, yb.data());
  std::vector<float> y;
  for (size_t i = 0; i < static_cast<size_t>(m * n_); ++i) {
    y.push_back(LoadFloat(dtype_, yb.data(), i));
    ASSERT_TRUE(std::isfinite(y.back())) << "output " << i << " is not finite";
  }
  const std::vector<float> mlx_y = Floats("y");
  const std::vector<float> exact = Floats("y_f32ref");
  if (dtype_ == DType::kF32) {
    EXPECT_LE(NormalisedError(y, mlx_y), 1e-5);
  } else if (absl::StartsWith(GetParam(), "edge_f16range")) {
    // MLX's own fp16 dequantize overflows here: its y and y_f32ref are NaN.
    EXPECT_TRUE(AnyNaN(mlx_y));
  } else {
    const double ours = NormalisedError(y, exact);
    const double theirs = NormalisedError(mlx_y, exact);
    EXPECT_LE(ours, theirs) << "ours " << ours << " vs MLX " << theirs;
  }
}

// The fast kernels, on every target this machine runs, stay within the same
// tolerances as the reference.
TEST_P(GoldenFileTest, FastKernelsAreAccurate) {
  const QuantizedMatrix q = GoldenQuantized();
  const PackedMatrix packed = PackedMatrix::Pack(q);
  const TensorInfo* x = file_->Find("x");
  ASSERT_NE(x, nullptr);
  const int64_t m = x->shape[0];
  const std::vector<uint8_t> xb = Bytes("x");
  const std::vector<float> mlx_y = Floats("y");
  const std::vector<float> exact = Floats("y_f32ref");
  for (SimdTarget target : {SimdTarget::kPortable, SimdTarget::kAvx2, SimdTarget::kAvx512}) {
    if (!SimdTargetSupported(target)) continue;
    std::vector<uint8_t> yb(static_cast<size_t>(m * n_) * DTypeSize(dtype_));
    QuantizedMatmul(packed, x->dtype, xb.data(), m, nullptr, dtype_, yb.data(),
                    {.target = target});
    std::vector<float> y;
    for (size_t i = 0; i < static_cast<size_t>(m * n_); ++i) {
      y.push_back(LoadFloat(dtype_, yb.data(), i));
      ASSERT_TRUE(std::isfinite(y.back())) << SimdTargetName(target) << " output " << i;
    }
    if (dtype_ == DType::kF32) {
      EXPECT_LE(NormalisedError(y, mlx_y), 1e-5) << SimdTargetName(target);
    } else if (!AnyNaN(exact)) {
      EXPECT_LE(NormalisedError(y, exact), NormalisedError(mlx_y, exact))
          << SimdTargetName(target);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllFiles, GoldenFileTest, ::testing::ValuesIn(GoldenFiles()),
    [](const ::testing::TestParamInfo<std::string>& info) {
      std::string name = info.param.substr(0, info.param.find('.'));
      for (char& c : name) {
        if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
      }
      return name;
    });

}  // namespace
}  // namespace qlinear
