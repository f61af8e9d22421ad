// UploadStream: the state machine of one Quantize or LoadQuantized stream,
// fed one serialized chunk at a time — no gRPC call, no socket — so that the
// server's reactor and a fuzz target drive the very same code.
//
//   UploadStream stream(engine, UploadStream::Rpc::kQuantize);
//   for (each message the client sent) {
//     absl::Status s = stream.OnMessage(bytes);
//     if (!s.ok()) return s;          // the upload failed; nothing published
//   }
//   auto layer = stream.Finish();     // the client closed its side cleanly
//
// Order (both RPCs): the first message is the header; then the parts in
// the order the proto states (Quantize: weight, then bias; LoadQuantized:
// weight, scales, biases, bias), each complete before the next starts.
// Anything else — bytes that do not parse as the RPC's chunk message, a
// message with no part set, a second header, a part out of order or longer
// than the header implies — fails the stream with INVALID_ARGUMENT naming
// the message's index (1-based), what came and what was expected.
//
// Status codes: OnMessage and Finish return INVALID_ARGUMENT as above and
// for bad header fields (name rules in core/names.h, dtypes, shapes,
// parameters, non-finite values), ALREADY_EXISTS, RESOURCE_EXHAUSTED (the
// memory budget) and UNAVAILABLE (draining) from the engine's uploads
// (core/engine/upload.h). After the first failure the stream is dead: it
// has released its memory reservation, publishes nothing, and every later
// call returns that same status. Finish publishes at most once.
//
// Malformed messages (bytes that do not parse) are counted in the engine
// (Engine::RecordMalformed under RpcName()), never logged.
//
// Thread safety: one stream is driven by one thread at a time. The engine
// is borrowed and must outlive the stream.
#ifndef QLINEAR_SERVER_UPLOAD_STREAM_H_
#define QLINEAR_SERVER_UPLOAD_STREAM_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/engine/engine.h"
#include "core/engine/upload.h"
#include "grpcpp/support/byte_buffer.h"
#include "qlinear/v1/qlinear.pb.h"

namespace qlinear {

class UploadStream {
 public:
  enum class Rpc { kQuantize, kLoadQuantized };

  UploadStream(Engine* engine, Rpc rpc) : engine_(engine), rpc_(rpc) {}

  // OnMessage parses one serialized chunk (QuantizeChunk or
  // LoadQuantizedChunk, by rpc) and applies it.
  absl::Status OnMessage(absl::string_view bytes);
  // The same, parsing straight from gRPC's slices (no joined copy); the
  // buffer is consumed.
  absl::Status OnMessage(grpc::ByteBuffer* bytes);
  // Finish: the stream ended cleanly; checks every part arrived and
  // publishes the layer.
  absl::StatusOr<std::shared_ptr<const Layer>> Finish();
  // Abandon fails the stream (a cancelled call): nothing is published.
  void Abandon(absl::Status why);

  // name() is the header's layer name once a header with a valid name came
  // ("" before, or when the name broke the rules).
  const std::string& name() const { return name_; }
  // malformed() is true when the stream failed on bytes that did not parse.
  bool malformed() const { return malformed_; }
  // RpcName: "Quantize" or "LoadQuantized".
  static absl::string_view RpcName(Rpc rpc);

 private:
  // Apply takes one parsed message (the chunk member of this rpc).
  absl::Status Apply();
  absl::Status StartQuantize(const v1::QuantizeHeader& h);
  absl::Status StartLoad(const v1::LoadQuantizedHeader& h);
  // Expected says what the next message should be, for error messages.
  std::string Expected() const;
  absl::Status Fail(absl::Status status);
  absl::Status NotParsed(size_t bytes);

  Engine* engine_;
  Rpc rpc_;
  int64_t messages_ = 0;  // messages received, the current one included
  absl::Status failed_;   // the first failure (OK while alive)
  bool finished_ = false;
  bool malformed_ = false;
  std::string name_;
  v1::QuantizeChunk quantize_chunk_;
  v1::LoadQuantizedChunk load_chunk_;
  std::unique_ptr<QuantizeUpload> quantize_;
  std::unique_ptr<LoadUpload> load_;
  // What has arrived, for ordering and messages.
  int load_part_ = -1;           // LoadUpload::Part last sent (-1: none)
  bool quantize_bias_ = false;   // a bias part arrived
};

}  // namespace qlinear

#endif  // QLINEAR_SERVER_UPLOAD_STREAM_H_
