// Forward on the wire: a request's bytes to an Engine::ForwardRequest, and
// an engine result back to a response message. No gRPC call, no socket: the
// server's Forward reactor and a fuzz target (bytes -> ParseForward ->
// Engine::Submit) run the very same code.
//
//   ParsedForward parsed;
//   absl::Status s = ParseForward(bytes, limits, &parsed);
//   if (!s.ok()) ...  // parsed.parsed tells a malformed request from a bad one
//   engine->Submit(parsed.request, done);  // parsed must outlive `done`
//
// Zero copy: parsed.request.x points into parsed.message's input bytes (the
// one copy is protobuf's, from gRPC's slices), so a ParsedForward is neither
// copied nor moved once parsed: allocate it where it lives until the answer
// has been built.
//
// Thread safety: pure functions over their arguments.
#ifndef QLINEAR_SERVER_WIRE_FORWARD_H_
#define QLINEAR_SERVER_WIRE_FORWARD_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/engine/engine.h"
#include "core/precision.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/byte_buffer.h"
#include "qlinear/v1/qlinear.pb.h"

namespace qlinear {

struct ForwardLimits {
  // The largest response the server may send (--max-message-mb in bytes);
  // 0: no limit. Becomes Engine::ForwardRequest::max_answer_bytes.
  uint64_t max_answer_bytes = 0;
};

struct ParsedForward {
  ParsedForward() = default;
  ParsedForward(const ParsedForward&) = delete;
  ParsedForward& operator=(const ParsedForward&) = delete;

  v1::ForwardRequest message;
  // Valid when ParseForward returned OK; x borrows message's input bytes.
  Engine::ForwardRequest request;
  // true once the bytes parsed as a ForwardRequest (then a failure was the
  // request's content, and message.layer() may be used for stats).
  bool parsed = false;
};

// ParseForward parses `bytes` into out->message and validates it into
// out->request (deadline and cancellation are the caller's to set).
// INVALID_ARGUMENT, with a message, for: bytes that do not parse
// (out->parsed false; the caller counts it with Engine::RecordMalformed);
// a precision other than UNSPECIFIED, EXACT, INT8 or BFLOAT16 (by number,
// "got 99"; whether the server enables it is Engine::Submit's to say); a
// layer name outside core/names.h's rule;
// an input or output dtype other than F32/F16/BF16 (unknown numbers are
// reported by number, "got 77"); a shape with no dimension, a negative
// dimension ("dimension 1 is negative") or more than 2^40 elements; data
// whose size is not the shape's. `out` must be fresh.
absl::Status ParseForward(absl::string_view bytes, const ForwardLimits& limits,
                          ParsedForward* out);
// The same from gRPC's slices, without joining them first; consumes `bytes`.
absl::Status ParseForward(grpc::ByteBuffer* bytes, const ForwardLimits& limits,
                          ParsedForward* out);


// AnswerOverheadBytes bounds the serialized response's bytes besides the
// output data (shape, dtype, version, echoed request id, timing, tags).
uint64_t AnswerOverheadBytes(const v1::ForwardRequest& request);

// BuildForwardResponse fills `out` from an OK engine result (precision:
// the mode that ran).
void BuildForwardResponse(const ParsedForward& parsed, const Engine::ForwardResult& result,
                          v1::ForwardResponse* out);

// CallDeadline is the call's gRPC deadline (a system_clock point) as a
// point on `engine`'s clock (Engine::Now), for ForwardRequest::deadline;
// max() when the call has none or it is more than a year away. Every
// data-plane method reads it here.
Engine::Clock::time_point CallDeadline(const grpc::ServerContextBase& context,
                                       const Engine& engine);

// ShapeText prints a client-given shape for a message: "[1, -64]", the
// first 8 dimensions at most ("[1, 2, ..., (1000 dimensions)]").
std::string ShapeText(const google::protobuf::RepeatedField<int64_t>& shape);

}  // namespace qlinear

#endif  // QLINEAR_SERVER_WIRE_FORWARD_H_
