#include "server/upload_stream.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "core/names.h"
#include "grpcpp/support/proto_buffer_reader.h"
#include "proto/wire.h"

namespace qlinear {
namespace {

absl::Span<const uint8_t> Bytes(const std::string& s) {
  return absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

const char* kLoadParts[] = {"weight", "scales", "biases", "bias"};

}  // namespace

absl::string_view UploadStream::RpcName(Rpc rpc) {
  return rpc == Rpc::kQuantize ? "Quantize" : "LoadQuantized";
}

absl::Status UploadStream::Fail(absl::Status status) {
  quantize_.reset();  // releases the memory reservation
  load_.reset();
  failed_ = std::move(status);
  return failed_;
}

void UploadStream::Abandon(absl::Status why) {
  if (failed_.ok()) (void)Fail(std::move(why));
}

std::string UploadStream::Expected() const {
  if (quantize_ == nullptr && load_ == nullptr) return "the header";
  if (rpc_ == Rpc::kQuantize) {
    return quantize_bias_ ? "more bias bytes or the end of the stream"
                          : "weight bytes, then bias bytes when has_bias";
  }
  if (load_part_ < 0) return "weight bytes (the order is weight, scales, biases, bias)";
  return absl::StrCat(kLoadParts[load_part_],
                      " bytes or a later part (the order is weight, scales, biases, bias)");
}

absl::Status UploadStream::NotParsed(size_t bytes) {
  engine_->RecordMalformed(RpcName(rpc_));
  malformed_ = true;
  return Fail(absl::InvalidArgumentError(absl::StrCat(
      RpcName(rpc_), " message ", messages_, " (", bytes, " bytes) does not parse as a ",
      rpc_ == Rpc::kQuantize ? "qlinear.v1.QuantizeChunk" : "qlinear.v1.LoadQuantizedChunk",
      "; expected ", Expected())));
}

absl::Status UploadStream::OnMessage(absl::string_view bytes) {
  if (!failed_.ok()) return failed_;
  if (finished_) return absl::FailedPreconditionError("the upload stream already finished");
  ++messages_;
  google::protobuf::Message& chunk =
      rpc_ == Rpc::kQuantize ? static_cast<google::protobuf::Message&>(quantize_chunk_)
                             : static_cast<google::protobuf::Message&>(load_chunk_);
  if (bytes.size() > static_cast<size_t>(INT32_MAX) ||
      !chunk.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return NotParsed(bytes.size());
  }
  return Apply();
}

absl::Status UploadStream::OnMessage(grpc::ByteBuffer* bytes) {
  if (!failed_.ok()) return failed_;
  if (finished_) return absl::FailedPreconditionError("the upload stream already finished");
  ++messages_;
  const size_t size = bytes->Length();
  google::protobuf::Message& chunk =
      rpc_ == Rpc::kQuantize ? static_cast<google::protobuf::Message&>(quantize_chunk_)
                             : static_cast<google::protobuf::Message&>(load_chunk_);
  bool parsed;
  {
    grpc::ProtoBufferReader reader(bytes);
    parsed = reader.status().ok() && chunk.ParseFromZeroCopyStream(&reader);
  }
  bytes->Clear();
  if (!parsed) return NotParsed(size);
  return Apply();
}

absl::Status UploadStream::Apply() {
  const std::string prefix = absl::StrCat(RpcName(rpc_), " message ", messages_, " ");
  if (rpc_ == Rpc::kQuantize) {
    const v1::QuantizeChunk& c = quantize_chunk_;
    if (quantize_ == nullptr) {
      if (!c.has_header()) {
        return Fail(absl::InvalidArgumentError(absl::StrCat(
            prefix, "is ", c.part_case() == v1::QuantizeChunk::PART_NOT_SET ? "empty" : "a data part",
            "; expected the header first")));
      }
      return StartQuantize(c.header());
    }
    absl::Status s;
    switch (c.part_case()) {
      case v1::QuantizeChunk::kWeight:
        if (quantize_bias_) {
          return Fail(absl::InvalidArgumentError(
              absl::StrCat(prefix, "is weight bytes after the bias; expected ", Expected())));
        }
        s = quantize_->AddWeight(Bytes(c.weight()));
        break;
      case v1::QuantizeChunk::kBias:
        quantize_bias_ = true;
        s = quantize_->AddBias(Bytes(c.bias()));
        break;
      case v1::QuantizeChunk::kHeader:
        return Fail(absl::InvalidArgumentError(
            absl::StrCat(prefix, "is a second header; expected ", Expected())));
      default:
        return Fail(absl::InvalidArgumentError(
            absl::StrCat(prefix, "is empty (no header, weight or bias); expected ", Expected())));
    }
    return s.ok() ? s : Fail(std::move(s));
  }
  const v1::LoadQuantizedChunk& c = load_chunk_;
  if (load_ == nullptr) {
    if (!c.has_header()) {
      return Fail(absl::InvalidArgumentError(absl::StrCat(
          prefix, "is ", c.part_case() == v1::LoadQuantizedChunk::PART_NOT_SET ? "empty" : "a data part",
          "; expected the header first")));
    }
    return StartLoad(c.header());
  }
  LoadUpload::Part part;
  const std::string* data = nullptr;
  switch (c.part_case()) {
    case v1::LoadQuantizedChunk::kWeight:
      part = LoadUpload::Part::kWeight;
      data = &c.weight();
      break;
    case v1::LoadQuantizedChunk::kScales:
      part = LoadUpload::Part::kScales;
      data = &c.scales();
      break;
    case v1::LoadQuantizedChunk::kBiases:
      part = LoadUpload::Part::kBiases;
      data = &c.biases();
      break;
    case v1::LoadQuantizedChunk::kBias:
      part = LoadUpload::Part::kBias;
      data = &c.bias();
      break;
    case v1::LoadQuantizedChunk::kHeader:
      return Fail(absl::InvalidArgumentError(
          absl::StrCat(prefix, "is a second header; expected ", Expected())));
    default:
      return Fail(absl::InvalidArgumentError(
          absl::StrCat(prefix, "is empty (no header or part); expected ", Expected())));
  }
  absl::Status s = load_->Add(part, Bytes(*data));
  if (!s.ok()) return Fail(absl::Status(s.code(), absl::StrCat(prefix, "(", kLoadParts[static_cast<int>(part)], "): ", s.message())));
  load_part_ = static_cast<int>(part);
  return absl::OkStatus();
}

absl::Status UploadStream::StartQuantize(const v1::QuantizeHeader& h) {
  if (ValidateLayerName(h.name()).ok()) name_ = h.name();
  QuantizeUploadSpec spec;
  spec.name = h.name();
  spec.n = h.out_features();
  spec.k = h.in_features();
  auto dtype = FloatDTypeFromProto(h.dtype(), "Quantize header dtype");
  if (!dtype.ok()) return Fail(dtype.status());
  spec.dtype = *dtype;
  auto params = FromProto(h.spec());
  if (!params.ok()) return Fail(params.status());
  spec.params = *params;
  spec.has_bias = h.has_bias();
  spec.replace = h.replace();
  auto up = QuantizeUpload::Start(engine_, spec);
  if (!up.ok()) return Fail(up.status());
  quantize_ = *std::move(up);
  return absl::OkStatus();
}

absl::Status UploadStream::StartLoad(const v1::LoadQuantizedHeader& h) {
  if (ValidateLayerName(h.name()).ok()) name_ = h.name();
  LoadUploadSpec spec;
  spec.name = h.name();
  spec.n = h.out_features();
  spec.k = h.in_features();
  auto params = FromProto(h.spec());
  if (!params.ok()) return Fail(params.status());
  spec.params = *params;
  auto scales = FromProto(h.scales_dtype());
  if (!scales) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "scales_dtype must be F32, F16, BF16 (affine) or U8 (fp modes); got ",
        WireEnumName(h.scales_dtype()))));
  }
  spec.scales_dtype = *scales;
  spec.has_bias = h.has_bias();
  if (h.has_bias()) {
    auto bias = FloatDTypeFromProto(h.bias_dtype(), "bias_dtype");
    if (!bias.ok()) return Fail(bias.status());
    spec.bias_dtype = *bias;
  }
  spec.replace = h.replace();
  auto up = LoadUpload::Start(engine_, spec);
  if (!up.ok()) return Fail(up.status());
  load_ = *std::move(up);
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const Layer>> UploadStream::Finish() {
  if (!failed_.ok()) return failed_;
  if (finished_) return absl::FailedPreconditionError("the upload stream already finished");
  finished_ = true;
  if (quantize_ == nullptr && load_ == nullptr) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(RpcName(rpc_), " stream had no header")));
  }
  auto layer = quantize_ != nullptr ? quantize_->Finish() : load_->Finish();
  quantize_.reset();
  load_.reset();
  if (!layer.ok()) return Fail(layer.status());
  return layer;
}

}  // namespace qlinear
