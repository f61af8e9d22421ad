#include "core/engine/upload.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/half.h"
#include "core/names.h"

namespace qlinear {
namespace {

absl::Status CheckCommon(Engine* engine, const std::string& name, int64_t n, int64_t k,
                         const QuantParams& params, bool replace) {
  absl::Status s = engine->catalog().CheckName(name, replace);
  if (!s.ok()) return s;
  s = ValidateQuantParams(params);
  if (!s.ok()) return s;
  if (n <= 0 || n > (int64_t{1} << 31)) {
    return absl::InvalidArgumentError(
        absl::StrCat("out_features must be in [1, 2^31]; got ", n));
  }
  if (k > (int64_t{1} << 31)) {
    return absl::InvalidArgumentError(absl::StrCat("in_features must be at most 2^31; got ", k));
  }
  return ValidateInputDim(params, k);
}

std::vector<float> ToFloats(DType dtype, const std::vector<uint8_t>& bytes) {
  std::vector<float> out(bytes.size() / DTypeSize(dtype));
  for (size_t i = 0; i < out.size(); ++i) out[i] = LoadFloat(dtype, bytes.data(), i);
  return out;
}

absl::StatusOr<std::shared_ptr<const Layer>> Publish(Engine* engine, LoadedLayer layer,
                                                     bool replace, Reservation reservation) {
  return engine->catalog().Publish(layer, LayerOrigin{OriginKind::kUpload, ""}, replace,
                                   std::move(reservation));
}

}  // namespace

absl::StatusOr<std::unique_ptr<QuantizeUpload>> QuantizeUpload::Start(
    Engine* engine, const QuantizeUploadSpec& spec) {
  absl::Status s = CheckCommon(engine, spec.name, spec.n, spec.k, spec.params, spec.replace);
  if (!s.ok()) return s;
  if (!IsFloatDType(spec.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weights to quantize must be F32, F16 or BF16; got ", DTypeName(spec.dtype)));
  }
  auto reservation =
      engine->catalog().Reserve(spec.name, spec.params, spec.n, spec.k, spec.has_bias);
  if (!reservation.ok()) return reservation.status();
  std::unique_ptr<QuantizeUpload> up(new QuantizeUpload());
  try {
    up->Allocate(spec);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot allocate the staging buffers of layer ", QuoteForMessage(spec.name), " [", spec.n, ", ", spec.k, "]"));
  }
  up->engine_ = engine;
  up->spec_ = spec;
  up->reservation_ = *std::move(reservation);
  return up;
}

void QuantizeUpload::Allocate(const QuantizeUploadSpec& spec) {
  QuantizedMatrix& q = q_;
  q.params = spec.params;
  q.dtype = spec.dtype;
  q.n = spec.n;
  q.k = spec.k;
  q.wq.assign(static_cast<size_t>(spec.n * spec.params.packed_cols(spec.k)), 0u);
  const size_t groups = static_cast<size_t>(spec.n * spec.params.groups(spec.k));
  q.scales.assign(groups * DTypeSize(q.scales_dtype()), 0);
  if (spec.params.has_biases()) q.biases.assign(groups * DTypeSize(spec.dtype), 0);
  dq_row_.resize(static_cast<size_t>(spec.k));
}

absl::Status QuantizeUpload::AddWeight(absl::Span<const uint8_t> bytes) {
  const size_t row_bytes = static_cast<size_t>(spec_.k) * DTypeSize(spec_.dtype);
  const int64_t groups = spec_.params.groups(spec_.k);
  const size_t scale_size = DTypeSize(q_.scales_dtype());
  while (!bytes.empty()) {
    if (rows_done_ == spec_.n) {
      return absl::InvalidArgumentError(absl::StrCat(
          "weight stream is longer than [", spec_.n, ", ", spec_.k, "] of ",
          DTypeName(spec_.dtype), " (", spec_.n * row_bytes, " bytes)"));
    }
    const size_t take = std::min(bytes.size(), row_bytes - partial_.size());
    partial_.insert(partial_.end(), bytes.begin(), bytes.begin() + static_cast<ptrdiff_t>(take));
    bytes.remove_prefix(take);
    if (partial_.size() < row_bytes) break;
    absl::Status s = CheckFinite(spec_.dtype, partial_.data(), 1, spec_.k, rows_done_);
    if (!s.ok()) return s;
    const int64_t r = rows_done_;
    QuantizeRows(spec_.params, spec_.dtype, partial_.data(), 1, spec_.k,
                 q_.wq.data() + r * spec_.params.packed_cols(spec_.k),
                 q_.scales.data() + static_cast<size_t>(r * groups) * scale_size,
                 q_.biases.empty() ? nullptr
                                   : q_.biases.data() + static_cast<size_t>(r * groups) * scale_size);
    s = ValidateQuantizedRows(q_, r, 1);
    if (!s.ok()) return s;
    DequantizeRows(q_, r, 1, DType::kF32, dq_row_.data());
    error_.Add(spec_.dtype, partial_.data(), dq_row_.data(), dq_row_.size());
    partial_.clear();
    ++rows_done_;
  }
  return absl::OkStatus();
}

absl::Status QuantizeUpload::AddBias(absl::Span<const uint8_t> bytes) {
  if (!spec_.has_bias) {
    return absl::InvalidArgumentError("bias bytes sent but the header says has_bias = false");
  }
  if (rows_done_ != spec_.n || !partial_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bias must follow the whole weight; got it after ", rows_done_, " of ", spec_.n, " rows"));
  }
  const size_t want = static_cast<size_t>(spec_.n) * DTypeSize(spec_.dtype);
  if (bias_bytes_.size() + bytes.size() > want) {
    return absl::InvalidArgumentError(absl::StrCat("bias stream is longer than [", spec_.n,
                                                   "] of ", DTypeName(spec_.dtype)));
  }
  bias_bytes_.insert(bias_bytes_.end(), bytes.begin(), bytes.end());
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const Layer>> QuantizeUpload::Finish() {
  const size_t row_bytes = static_cast<size_t>(spec_.k) * DTypeSize(spec_.dtype);
  if (rows_done_ != spec_.n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weight stream ended early: got ", rows_done_ * static_cast<int64_t>(row_bytes) +
                                                 static_cast<int64_t>(partial_.size()),
        " of ", spec_.n * static_cast<int64_t>(row_bytes), " bytes (", rows_done_, " of ",
        spec_.n, " rows)"));
  }
  const size_t bias_want = spec_.has_bias ? static_cast<size_t>(spec_.n) * DTypeSize(spec_.dtype) : 0;
  if (bias_bytes_.size() != bias_want) {
    return absl::InvalidArgumentError(absl::StrCat("bias stream ended early: got ",
                                                   bias_bytes_.size(), " of ", bias_want, " bytes"));
  }
  return Publish(engine_,
                 LoadedLayer{spec_.name, std::move(q_), ToFloats(spec_.dtype, bias_bytes_),
                             error_.Finish()},
                 spec_.replace, std::move(reservation_));
}

absl::StatusOr<std::unique_ptr<LoadUpload>> LoadUpload::Start(Engine* engine,
                                                              const LoadUploadSpec& spec) {
  absl::Status s = CheckCommon(engine, spec.name, spec.n, spec.k, spec.params, spec.replace);
  if (!s.ok()) return s;
  if (spec.params.has_biases() ? !IsFloatDType(spec.scales_dtype)
                               : spec.scales_dtype != DType::kU8) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scales of ", spec.params.ToString(), " must be ",
        spec.params.has_biases() ? "F32, F16 or BF16" : "U8", "; got ",
        DTypeName(spec.scales_dtype)));
  }
  if (spec.has_bias && !IsFloatDType(spec.bias_dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("bias must be F32, F16 or BF16; got ", DTypeName(spec.bias_dtype)));
  }
  auto reservation =
      engine->catalog().Reserve(spec.name, spec.params, spec.n, spec.k, spec.has_bias);
  if (!reservation.ok()) return reservation.status();
  std::unique_ptr<LoadUpload> up(new LoadUpload());
  up->engine_ = engine;
  up->spec_ = spec;
  up->reservation_ = *std::move(reservation);
  return up;
}

size_t LoadUpload::Expected(Part part) const {
  const size_t n = static_cast<size_t>(spec_.n);
  const size_t groups = static_cast<size_t>(spec_.params.groups(spec_.k));
  switch (part) {
    case Part::kWeight:
      return n * static_cast<size_t>(spec_.params.packed_cols(spec_.k)) * 4;
    case Part::kScales:
      return n * groups * DTypeSize(spec_.scales_dtype);
    case Part::kBiases:
      return spec_.params.has_biases() ? n * groups * DTypeSize(spec_.scales_dtype) : 0;
    case Part::kBias:
      return spec_.has_bias ? n * DTypeSize(spec_.bias_dtype) : 0;
  }
  return 0;
}

absl::Status LoadUpload::Add(Part part, absl::Span<const uint8_t> bytes) {
  static const char* kNames[] = {"weight", "scales", "biases", "bias"};
  const int p = static_cast<int>(part);
  if (p < current_) {
    return absl::InvalidArgumentError(absl::StrCat(
        kNames[p], " bytes arrived after ", kNames[current_],
        "; the order is weight, scales, biases, bias"));
  }
  // Moving on: every earlier part must be complete.
  for (int earlier = current_; earlier < p; ++earlier) {
    if (parts_[earlier].size() != Expected(static_cast<Part>(earlier))) {
      return absl::InvalidArgumentError(absl::StrCat(
          kNames[p], " bytes arrived before ", kNames[earlier], " was complete (",
          parts_[earlier].size(), " of ", Expected(static_cast<Part>(earlier)), " bytes)"));
    }
  }
  current_ = p;
  if (Expected(part) == 0 && !bytes.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        kNames[p], " bytes sent but ", spec_.params.ToString(),
        part == Part::kBias ? " with has_bias = false" : "", " takes none"));
  }
  if (parts_[p].size() + bytes.size() > Expected(part)) {
    return absl::InvalidArgumentError(absl::StrCat(kNames[p], " stream is longer than the ",
                                                   Expected(part), " bytes the header implies"));
  }
  try {
    parts_[p].insert(parts_[p].end(), bytes.begin(), bytes.end());
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot allocate the ", kNames[p], " of layer ", QuoteForMessage(spec_.name)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const Layer>> LoadUpload::Finish() {
  static const char* kNames[] = {"weight", "scales", "biases", "bias"};
  for (int p = 0; p < 4; ++p) {
    if (parts_[p].size() != Expected(static_cast<Part>(p))) {
      return absl::InvalidArgumentError(
          absl::StrCat(kNames[p], " stream ended early: got ", parts_[p].size(), " of ",
                       Expected(static_cast<Part>(p)), " bytes"));
    }
  }
  QuantizedMatrix q;
  q.params = spec_.params;
  q.dtype = spec_.params.has_biases() ? spec_.scales_dtype : DType::kBF16;
  q.n = spec_.n;
  q.k = spec_.k;
  q.wq.resize(parts_[0].size() / 4);
  std::memcpy(q.wq.data(), parts_[0].data(), parts_[0].size());
  q.scales = std::move(parts_[1]);
  q.biases = std::move(parts_[2]);
  absl::Status s = ValidateQuantizedValues(q);
  if (!s.ok()) return s;
  return Publish(engine_,
                 LoadedLayer{spec_.name, std::move(q), ToFloats(spec_.bias_dtype, parts_[3]),
                             std::nullopt},
                 spec_.replace, std::move(reservation_));
}

}  // namespace qlinear
