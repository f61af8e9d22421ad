#include "core/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/half.h"

namespace qlinear {
namespace {

constexpr float kFp4Values[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,
                                  4.0f,  6.0f,  -0.0f, -0.5f, -1.0f, -1.5f,
                                  -2.0f, -3.0f, -4.0f, -6.0f};

uint32_t FloatBits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return u;
}

float BitsFloat(uint32_t u) {
  float v;
  std::memcpy(&v, &u, 4);
  return v;
}

// As x86's float -> uint8 conversion does in MLX (via a 32-bit integer).
uint8_t CastToU8(float v) {
  if (!(v > -2147483648.0f && v < 2147483648.0f)) return 0;
  return static_cast<uint8_t>(static_cast<int32_t>(v));
}

void PackCode(uint32_t* row, int bits, int64_t j, uint32_t code) {
  const int64_t bit = j * bits;
  const int64_t word = bit >> 5;
  const int offset = static_cast<int>(bit & 31);
  row[word] |= code << offset;
  if (offset + bits > 32) row[word + 1] |= code >> (32 - offset);
}

void QuantizeAffineGroup(const QuantParams& p, DType dtype, const float* w,
                         uint32_t* wq_row, int64_t first_col, uint8_t* scale,
                         uint8_t* bias) {
  const float n_bins = static_cast<float>((1 << p.bits) - 1);
  const float eps = 1e-7f;
  float w_max = -INFINITY;
  float w_min = INFINITY;
  for (int i = 0; i < p.group_size; ++i) {
    w_max = std::max(w_max, w[i]);
    w_min = std::min(w_min, w[i]);
  }
  const bool mask = std::abs(w_min) > std::abs(w_max);
  float s = std::max((w_max - w_min) / n_bins, eps);
  s = mask ? s : -s;
  const float edge = mask ? w_min : w_max;
  const float q0 = std::rint(edge / s);
  float b = 0.0f;
  if (q0 != 0.0f) {
    s = edge / q0;
    b = edge;
  }
  for (int i = 0; i < p.group_size; ++i) {
    float q = std::rint((w[i] - b) / s);
    // NaN comes from a scale that overflowed T (the layer is then refused by
    // ValidateQuantizedValues); it must not reach the integer cast (UB).
    q = std::isnan(q) ? 0.0f : std::min(std::max(q, 0.0f), n_bins);
    PackCode(wq_row, p.bits, first_col + i, static_cast<uint32_t>(q));
  }
  StoreFloat(dtype, scale, 0, s);
  StoreFloat(dtype, bias, 0, b);
}

// Index of the nearest E2M1 value; ties and NaN go to the lower index, as
// MLX's argmin does. `in_t` rounds each distance to the weight dtype first.
uint32_t NearestFp4(float v, DType dist_dtype) {
  uint32_t best = 0;
  float best_d = std::abs(RoundTo(dist_dtype, v - kFp4Values[0]));
  for (uint32_t i = 1; i < 16; ++i) {
    const float d = std::abs(RoundTo(dist_dtype, v - kFp4Values[i]));
    if (d < best_d) {
      best_d = d;
      best = i;
    }
  }
  return best;
}

void QuantizeFpGroup(const QuantParams& p, DType dtype, const float* w,
                     uint32_t* wq_row, int64_t first_col, uint8_t* scale) {
  const float maxval = p.bits == 4 ? 6.0f : 448.0f;
  float amax = 0.0f;
  for (int i = 0; i < p.group_size; ++i) amax = std::max(amax, std::abs(w[i]));
  const float s = RoundTo(dtype, amax / maxval);

  float divisor;
  DType dist_dtype;
  if (p.mode == QuantMode::kNvfp4) {
    *scale = Fp8E4M3FromFloat(s);
    divisor = RoundTo(dtype, Fp8E4M3ToFloat(*scale));
    dist_dtype = DType::kF32;  // MLX promotes the quotient to float32 here
  } else {
    float e = 0.0f;
    if (s != 0.0f) e = std::rint(RoundTo(dtype, std::log2(s)));
    divisor = RoundTo(dtype, std::exp2(e));
    *scale = CastToU8(RoundTo(dtype, e + 127.0f));
    dist_dtype = dtype;
  }
  for (int i = 0; i < p.group_size; ++i) {
    const float v = RoundTo(dtype, w[i] / divisor);
    const uint32_t code = p.bits == 4 ? NearestFp4(v, dist_dtype)
                                      : Fp8E4M3FromFloat(v);
    PackCode(wq_row, p.bits, first_col + i, code);
  }
}

}  // namespace

uint8_t Fp8E4M3FromFloat(float v) {
  // MLX's ToFP8: round to nearest even with subnormals down to 2^-9; any
  // |v| >= 448 (kFp8Max is 448.0f's bits), inf or NaN saturates to 0x7E.
  constexpr uint32_t kFp8Max = 543u << 21;
  constexpr uint32_t kDenormMask = 141u << 23;
  uint32_t bits = FloatBits(v);
  const uint32_t sign = bits & 0x80000000u;
  bits ^= sign;
  uint8_t result;
  if (bits >= kFp8Max) {
    result = 0x7E;
  } else if (bits < (121u << 23)) {
    result = static_cast<uint8_t>(
        FloatBits(BitsFloat(bits) + BitsFloat(kDenormMask)) - kDenormMask);
  } else {
    const uint32_t mant_odd = (bits >> 20) & 1u;
    bits += (static_cast<uint32_t>(7 - 127) << 23) + 0x7FFFFu + mant_odd;
    result = static_cast<uint8_t>(bits >> 20);
  }
  return result | static_cast<uint8_t>(sign >> 24);
}

float Fp8E4M3ToFloat(uint8_t b) {
  const float magnitude =
      HalfBitsToFloat(static_cast<uint16_t>((b & 127u) << 7)) * 256.0f;
  return (b & 128u) ? -magnitude : magnitude;
}

float CodeValue(QuantMode mode, uint32_t code) {
  switch (mode) {
    case QuantMode::kMxfp4:
    case QuantMode::kNvfp4:
      return kFp4Values[code & 15];
    case QuantMode::kMxfp8:
      return Fp8E4M3ToFloat(static_cast<uint8_t>(code));
    case QuantMode::kAffine:
      break;
  }
  return static_cast<float>(code);
}

uint32_t UnpackCode(const uint32_t* row, int bits, int64_t j) {
  const int64_t bit = j * bits;
  const int64_t word = bit >> 5;
  const int offset = static_cast<int>(bit & 31);
  uint64_t window = row[word] >> offset;
  if (offset + bits > 32) window |= static_cast<uint64_t>(row[word + 1]) << (32 - offset);
  return static_cast<uint32_t>(window & ((1u << bits) - 1));
}

float GroupScale(const QuantizedMatrix& q, int64_t r, int64_t g) {
  const size_t i = static_cast<size_t>(r * q.groups() + g);
  switch (q.params.mode) {
    case QuantMode::kAffine:
      return LoadFloat(q.dtype, q.scales.data(), i);
    case QuantMode::kNvfp4:
      return Fp8E4M3ToFloat(q.scales[i]);
    case QuantMode::kMxfp4:
    case QuantMode::kMxfp8:
      break;
  }
  return std::ldexp(1.0f, static_cast<int>(q.scales[i]) - 127);
}

float GroupBias(const QuantizedMatrix& q, int64_t r, int64_t g) {
  if (!q.params.has_biases()) return 0.0f;
  return LoadFloat(q.dtype, q.biases.data(),
                   static_cast<size_t>(r * q.groups() + g));
}

absl::Status CheckFinite(DType dtype, const void* w, int64_t rows, int64_t k,
                         int64_t first_row) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < k; ++c) {
      const float v = LoadFloat(dtype, w, static_cast<size_t>(r * k + c));
      if (!std::isfinite(v)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "weights must be finite; got ", absl::StrFormat("%g", v),
            " at row ", first_row + r, ", column ", c));
      }
    }
  }
  return absl::OkStatus();
}

void QuantizeRows(const QuantParams& p, DType dtype, const void* w,
                  int64_t rows, int64_t k, uint32_t* wq, uint8_t* scales,
                  uint8_t* biases) {
  const int64_t words = p.packed_cols(k);
  const int64_t groups = p.groups(k);
  const size_t scale_size = p.has_biases() ? DTypeSize(dtype) : 1;
  std::vector<float> group(static_cast<size_t>(p.group_size));
  for (int64_t r = 0; r < rows; ++r) {
    uint32_t* wq_row = wq + r * words;
    std::fill(wq_row, wq_row + words, 0u);
    for (int64_t g = 0; g < groups; ++g) {
      const size_t base = static_cast<size_t>(r * k + g * p.group_size);
      for (int i = 0; i < p.group_size; ++i) {
        group[static_cast<size_t>(i)] = LoadFloat(dtype, w, base + i);
      }
      const size_t gi = static_cast<size_t>(r * groups + g);
      if (p.mode == QuantMode::kAffine) {
        QuantizeAffineGroup(p, dtype, group.data(), wq_row, g * p.group_size,
                            scales + gi * scale_size, biases + gi * scale_size);
      } else {
        QuantizeFpGroup(p, dtype, group.data(), wq_row, g * p.group_size,
                        scales + gi);
      }
    }
  }
}

absl::StatusOr<QuantizedMatrix> Quantize(const QuantParams& params,
                                         DType dtype, const void* w, int64_t n,
                                         int64_t k) {
  absl::Status status = ValidateQuantParams(params);
  if (!status.ok()) return status;
  if (!IsFloatDType(dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("weights must be F32, F16 or BF16; got ", DTypeName(dtype)));
  }
  if (n <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("output dimension N must be positive; got ", n));
  }
  status = ValidateInputDim(params, k);
  if (!status.ok()) return status;
  status = CheckFinite(dtype, w, n, k);
  if (!status.ok()) return status;

  QuantizedMatrix q;
  q.params = params;
  q.dtype = dtype;
  q.n = n;
  q.k = k;
  q.wq.assign(static_cast<size_t>(n * params.packed_cols(k)), 0u);
  const size_t groups = static_cast<size_t>(n * params.groups(k));
  q.scales.assign(groups * DTypeSize(q.scales_dtype()), 0);
  if (params.has_biases()) q.biases.assign(groups * DTypeSize(dtype), 0);
  QuantizeRows(params, dtype, w, n, k, q.wq.data(), q.scales.data(),
               q.biases.data());
  // Finite weights can still give a scale that is not finite in T (a range
  // wider than T's largest value); such a layer would answer NaN.
  status = ValidateQuantizedValues(q);
  if (!status.ok()) return status;
  return q;
}

void DequantizeRows(const QuantizedMatrix& q, int64_t row0, int64_t rows,
                    DType out_dtype, void* out) {
  const QuantParams& p = q.params;
  const int64_t words = p.packed_cols(q.k);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row = row0 + r;
    const uint32_t* wq_row = q.wq.data() + row * words;
    for (int64_t g = 0; g < q.groups(); ++g) {
      const float s = GroupScale(q, row, g);
      const float b = GroupBias(q, row, g);
      const float s_out = RoundTo(out_dtype, s);
      for (int i = 0; i < p.group_size; ++i) {
        const int64_t col = g * p.group_size + i;
        const uint32_t code = UnpackCode(wq_row, p.bits, col);
        float v;
        if (p.mode == QuantMode::kAffine) {
          v = RoundTo(out_dtype, RoundTo(out_dtype, static_cast<float>(code) * s) + b);
        } else {
          v = RoundTo(out_dtype, RoundTo(out_dtype, CodeValue(p.mode, code)) * s_out);
        }
        StoreFloat(out_dtype, out, static_cast<size_t>(r * q.k + col), v);
      }
    }
  }
}

void Dequantize(const QuantizedMatrix& q, DType out_dtype, void* out) {
  DequantizeRows(q, 0, q.n, out_dtype, out);
}

std::string ErrorReport::ToString() const {
  return absl::StrFormat("max_abs_err=%.4g rms_err=%.4g rel_fro_err=%.4g",
                         max_abs, rms, rel_fro);
}

void ErrorAccumulator::Add(DType dtype, const void* w, const float* dq,
                           size_t count) {
  for (size_t i = 0; i < count; ++i) {
    const double wv = LoadFloat(dtype, w, i);
    const double err = static_cast<double>(dq[i]) - wv;
    max_abs_ = std::max(max_abs_, std::abs(err));
    sum_sq_err_ += err * err;
    sum_sq_w_ += wv * wv;
  }
  count_ += count;
}

ErrorReport ErrorAccumulator::Finish() const {
  ErrorReport report;
  report.max_abs = max_abs_;
  if (count_ > 0) report.rms = std::sqrt(sum_sq_err_ / static_cast<double>(count_));
  if (sum_sq_w_ > 0) report.rel_fro = std::sqrt(sum_sq_err_ / sum_sq_w_);
  return report;
}

ErrorReport ComputeErrorReport(const QuantizedMatrix& q, DType dtype,
                               const void* w) {
  ErrorAccumulator acc;
  std::vector<float> dq(static_cast<size_t>(q.k));
  const size_t row_bytes = static_cast<size_t>(q.k) * DTypeSize(dtype);
  for (int64_t r = 0; r < q.n; ++r) {
    DequantizeRows(q, r, 1, DType::kF32, dq.data());
    acc.Add(dtype, static_cast<const uint8_t*>(w) + r * row_bytes, dq.data(),
            dq.size());
  }
  return acc.Finish();
}

absl::Status ValidateQuantizedValues(const QuantizedMatrix& q) {
  return ValidateQuantizedRows(q, 0, q.n);
}

absl::Status ValidateQuantizedRows(const QuantizedMatrix& q, int64_t row0, int64_t rows) {
  for (int64_t r = row0; r < row0 + rows; ++r) {
    for (int64_t g = 0; g < q.groups(); ++g) {
      const size_t i = static_cast<size_t>(r * q.groups() + g);
      if (q.params.mode == QuantMode::kAffine) {
        const float s = LoadFloat(q.dtype, q.scales.data(), i);
        const float b = LoadFloat(q.dtype, q.biases.data(), i);
        if (!std::isfinite(s) || !std::isfinite(b)) {
          return absl::InvalidArgumentError(absl::StrCat(
              "scales and biases must be finite; got scale ",
              absl::StrFormat("%g", s), " and bias ", absl::StrFormat("%g", b),
              " at row ", r, ", group ", g));
        }
      } else if (q.params.mode != QuantMode::kNvfp4 && q.scales[i] == 0xFF) {
        return absl::InvalidArgumentError(absl::StrCat(
            "E8M0 scales must encode a finite power of two (0..254); got 0xFF "
            "(NaN) at row ", r, ", group ", g));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace qlinear
