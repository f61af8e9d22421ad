#include "client/client.h"

#include <algorithm>
#include <thread>

#include "grpcpp/client_context.h"
#include "proto/wire.h"

namespace qlinear {
namespace {

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      status.error_message());
}

// Streams `parts` in order, each cut into chunks; `set` fills one message.
// A failed Write means the server ended the call; Finish says why.
template <typename Chunk>
void StreamParts(grpc::ClientWriter<Chunk>* writer, size_t chunk_bytes,
                         const std::vector<std::pair<absl::Span<const uint8_t>,
                                                     std::function<void(Chunk&, std::string)>>>& parts,
                         const Client::Progress& progress) {
  size_t total = 0, sent = 0;
  for (const auto& p : parts) total += p.first.size();
  for (const auto& [data, set] : parts) {
    for (size_t pos = 0; pos < data.size(); pos += chunk_bytes) {
      const size_t n = std::min(chunk_bytes, data.size() - pos);
      Chunk chunk;
      set(chunk, std::string(reinterpret_cast<const char*>(data.data() + pos), n));
      if (!writer->Write(chunk)) return;
      sent += n;
      if (progress) progress(sent, total);
    }
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ChannelOptions& channel,
                                                        const Options& options) {
  auto made = MakeChannel(channel);
  if (!made.ok()) return made.status();
  std::unique_ptr<Client> c(new Client());
  c->options_ = options;
  c->channel_options_ = channel;
  c->channel_ = *std::move(made);
  c->admin_ = v1::Admin::NewStub(c->channel_);
  c->data_ = v1::Data::NewStub(c->channel_);
  c->health_ = grpc::health::v1::Health::NewStub(c->channel_);
  return c;
}

std::unique_ptr<Client> Client::Connect(const std::string& target, const Options& options) {
  ChannelOptions channel;
  channel.target = target;
  auto c = Connect(channel, options);
  // Plaintext without a token reads no file: only an empty target fails.
  return c.ok() ? *std::move(c) : nullptr;
}

void Client::Prepare(grpc::ClientContext* context) const {
  context->set_deadline(std::chrono::system_clock::now() + options_.timeout);
  SetCallMetadata(channel_options_, context);
}

absl::StatusOr<v1::LayerInfo> Client::Quantize(const v1::QuantizeHeader& header,
                                               absl::Span<const uint8_t> weight,
                                               absl::Span<const uint8_t> bias,
                                               const Progress& progress) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::UploadResponse response;
  auto writer = admin_->Quantize(&context, &response);
  v1::QuantizeChunk first;
  *first.mutable_header() = header;
  if (writer->Write(first)) {
    StreamParts<v1::QuantizeChunk>(
        writer.get(), options_.chunk_bytes,
        {{weight, [](v1::QuantizeChunk& c, std::string s) { c.set_weight(std::move(s)); }},
         {bias, [](v1::QuantizeChunk& c, std::string s) { c.set_bias(std::move(s)); }}},
        progress);
  }
  writer->WritesDone();
  absl::Status status = FromGrpc(writer->Finish());
  if (!status.ok()) return status;
  return response.layer();
}

absl::StatusOr<v1::LayerInfo> Client::LoadQuantized(const v1::LoadQuantizedHeader& header,
                                                    absl::Span<const uint8_t> weight,
                                                    absl::Span<const uint8_t> scales,
                                                    absl::Span<const uint8_t> biases,
                                                    absl::Span<const uint8_t> bias,
                                                    const Progress& progress) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::UploadResponse response;
  auto writer = admin_->LoadQuantized(&context, &response);
  v1::LoadQuantizedChunk first;
  *first.mutable_header() = header;
  if (writer->Write(first)) {
    StreamParts<v1::LoadQuantizedChunk>(
        writer.get(), options_.chunk_bytes,
        {{weight, [](v1::LoadQuantizedChunk& c, std::string s) { c.set_weight(std::move(s)); }},
         {scales, [](v1::LoadQuantizedChunk& c, std::string s) { c.set_scales(std::move(s)); }},
         {biases, [](v1::LoadQuantizedChunk& c, std::string s) { c.set_biases(std::move(s)); }},
         {bias, [](v1::LoadQuantizedChunk& c, std::string s) { c.set_bias(std::move(s)); }}},
        progress);
  }
  writer->WritesDone();
  absl::Status status = FromGrpc(writer->Finish());
  if (!status.ok()) return status;
  return response.layer();
}

absl::Status Client::Unload(const std::string& name) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::UnloadLayerRequest request;
  request.set_name(name);
  v1::UnloadLayerResponse response;
  return FromGrpc(admin_->UnloadLayer(&context, request, &response));
}

absl::StatusOr<v1::ForwardResponse> Client::Forward(const v1::ForwardRequest& request) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::ForwardResponse response;
  absl::Status status = FromGrpc(data_->Forward(&context, request, &response));
  if (!status.ok()) return status;
  return response;
}

absl::StatusOr<v1::ForwardMultiResponse> Client::ForwardMulti(
    const v1::ForwardMultiRequest& request) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::ForwardMultiResponse response;
  absl::Status status = FromGrpc(data_->ForwardMulti(&context, request, &response));
  if (!status.ok()) return status;
  return response;
}

Client::StreamResult Client::ForwardStream(const std::vector<v1::ForwardRequest>& requests) {
  grpc::ClientContext context;
  Prepare(&context);
  StreamResult result;
  auto stream = data_->ForwardStream(&context);
  // Written from one thread while this one reads, so that a server that
  // stops reading (--max-stream-inflight) cannot block the writes forever.
  std::thread writer([&] {
    for (const v1::ForwardRequest& r : requests) {
      if (!stream->Write(r)) break;
    }
    stream->WritesDone();
  });
  v1::ForwardStreamResponse answer;
  while (stream->Read(&answer)) result.answers.push_back(answer);
  writer.join();
  result.status = FromGrpc(stream->Finish());
  return result;
}

absl::StatusOr<v1::ForwardResponse> Client::Forward(v1::ForwardRequest request,
                                                    Precision precision) {
  request.set_precision(ToProto(precision));
  return Forward(request);
}

absl::StatusOr<v1::LayerInfo> Client::GetLayer(const std::string& name) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::GetLayerRequest request;
  request.set_name(name);
  v1::LayerInfo response;
  absl::Status status = FromGrpc(data_->GetLayer(&context, request, &response));
  if (!status.ok()) return status;
  return response;
}

absl::StatusOr<v1::ListLayersResponse> Client::ListLayers() {
  grpc::ClientContext context;
  Prepare(&context);
  v1::ListLayersResponse response;
  absl::Status status = FromGrpc(data_->ListLayers(&context, v1::ListLayersRequest(), &response));
  if (!status.ok()) return status;
  return response;
}

absl::StatusOr<v1::StatsResponse> Client::Stats(const std::string& layer) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::StatsRequest request;
  request.set_layer(layer);
  v1::StatsResponse response;
  absl::Status status = FromGrpc(data_->Stats(&context, request, &response));
  if (!status.ok()) return status;
  return response;
}

absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus> Client::Health(
    const std::string& service) {
  grpc::ClientContext context;
  Prepare(&context);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  absl::Status status = FromGrpc(health_->Check(&context, request, &response));
  if (!status.ok()) return status;
  return response.status();
}

}  // namespace qlinear
