#include "server/wire_forward.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/names.h"
#include "grpcpp/support/proto_buffer_reader.h"
#include "proto/wire.h"

namespace qlinear {
namespace {

constexpr int64_t kMaxElements = int64_t{1} << 40;

absl::Status Validate(const ForwardLimits& limits, ParsedForward* out) {
  const v1::ForwardRequest& m = out->message;
  auto precision = PrecisionFromProto(m.precision());
  if (!precision.ok()) return precision.status();
  if (absl::Status s = ValidateLayerName(m.layer()); !s.ok()) return s;
  const v1::Tensor& input = m.input();
  auto x_dtype = FloatDTypeFromProto(input.dtype(), "input dtype");
  if (!x_dtype.ok()) return x_dtype.status();
  DType y_dtype = *x_dtype;
  if (m.output_dtype() != v1::DTYPE_UNSPECIFIED) {
    auto y = FloatDTypeFromProto(m.output_dtype(), "output_dtype");
    if (!y.ok()) return y.status();
    y_dtype = *y;
  }
  const auto& shape = input.shape();
  if (shape.empty()) {
    return absl::InvalidArgumentError("input shape must be [..., in_features]; got []");
  }
  for (int i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) {
      return absl::InvalidArgumentError(absl::StrCat("input shape ", ShapeText(shape),
                                                     ": dimension ", i, " is negative"));
    }
  }
  // rows: the product of the leading dimensions; both it and rows * K
  // stay within 2^40.
  int64_t rows = 1;
  const int64_t k = shape[shape.size() - 1];
  for (int i = 0; i < shape.size(); ++i) {
    const int64_t d = shape[i];
    if (d > 0 && rows > kMaxElements / d) {
      return absl::InvalidArgumentError(absl::StrCat("input shape ", ShapeText(shape),
                                                     " holds more than 2^40 elements"));
    }
    if (i + 1 < shape.size()) rows *= d;
  }
  const uint64_t need = static_cast<uint64_t>(rows * k) * DTypeSize(*x_dtype);
  if (need != input.data().size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "input data holds ", input.data().size(), " bytes but shape ", ShapeText(shape), " of ",
        DTypeName(*x_dtype), " needs ", need));
  }
  Engine::ForwardRequest& r = out->request;
  r.layer = m.layer();
  r.x_dtype = *x_dtype;
  r.x = input.data().data();
  r.rows = rows;
  r.k = k;
  r.y_dtype = y_dtype;
  r.precision = *precision;
  r.max_answer_bytes = limits.max_answer_bytes;
  r.answer_overhead_bytes = AnswerOverheadBytes(m);
  return absl::OkStatus();
}

absl::Status NotParsed(size_t bytes) {
  return absl::InvalidArgumentError(absl::StrCat(
      "the Forward request (", bytes, " bytes) does not parse as a qlinear.v1.ForwardRequest"));
}

}  // namespace

Engine::Clock::time_point CallDeadline(const grpc::ServerContextBase& context,
                                       const Engine& engine) {
  const auto wire = context.deadline();
  if (wire == std::chrono::system_clock::time_point::max()) return Engine::Clock::time_point::max();
  const auto remaining = wire - std::chrono::system_clock::now();
  // Centuries away would overflow the sum: as good as none.
  if (remaining > std::chrono::hours(24 * 365)) return Engine::Clock::time_point::max();
  return engine.Now() + std::chrono::duration_cast<Engine::Clock::duration>(remaining);
}

std::string ShapeText(const google::protobuf::RepeatedField<int64_t>& shape) {
  constexpr int kShown = 8;
  if (shape.size() <= kShown) return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
  return absl::StrCat("[", absl::StrJoin(shape.begin(), shape.begin() + kShown, ", "), ", ..., (",
                      shape.size(), " dimensions)]");
}

uint64_t AnswerOverheadBytes(const v1::ForwardRequest& request) {
  // Varints are at most 10 bytes; tags and lengths of the nested messages
  // and fields fit in 64; each shape dimension takes at most 10; the
  // precision's tag and value 2.
  return 64 + 10 * static_cast<uint64_t>(request.input().shape_size()) +
         request.request_id().size() + 8 * 10 + 2;
}

absl::Status ParseForward(absl::string_view bytes, const ForwardLimits& limits,
                          ParsedForward* out) {
  if (bytes.size() > static_cast<size_t>(INT32_MAX) ||
      !out->message.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return NotParsed(bytes.size());
  }
  out->parsed = true;
  return Validate(limits, out);
}

absl::Status ParseForward(grpc::ByteBuffer* bytes, const ForwardLimits& limits,
                          ParsedForward* out) {
  const size_t size = bytes->Length();
  bool parsed;
  {
    grpc::ProtoBufferReader reader(bytes);
    parsed = reader.status().ok() && out->message.ParseFromZeroCopyStream(&reader);
  }
  bytes->Clear();
  if (!parsed) return NotParsed(size);
  out->parsed = true;
  return Validate(limits, out);
}

void BuildForwardResponse(const ParsedForward& parsed, const Engine::ForwardResult& r,
                          v1::ForwardResponse* response) {
  v1::Tensor* out = response->mutable_output();
  out->set_dtype(ToProto(parsed.request.y_dtype));
  const auto& shape = parsed.message.input().shape();
  for (int i = 0; i + 1 < shape.size(); ++i) out->add_shape(shape[i]);
  out->add_shape(r.n);
  out->set_data(reinterpret_cast<const char*>(r.y.data()), r.y.size());
  response->set_layer_version(r.version);
  response->set_request_id(parsed.message.request_id());
  response->set_precision(ToProto(r.precision));
  v1::ServerTiming* t = response->mutable_timing();
  t->set_queue_us(r.queue_us);
  t->set_compute_us(r.compute_us);
  t->set_batch_rows(r.batch_rows);
  t->set_batch_requests(r.batch_requests);
}

}  // namespace qlinear
