// The services at the wire: raw bytes through grpc::GenericStub, and what
// Stats counts afterwards (server/service.h).
#include "server/service.h"

#include <chrono>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "client/client.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/server_builder.h"
#include "server/server.h"

namespace qlinear {
namespace {

using ::testing::HasSubstr;

std::vector<float> Weights(int64_t n, int64_t k, uint64_t seed = 1) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<float> w(static_cast<size_t>(n * k));
  for (float& f : w) f = normal(rng);
  return w;
}

absl::Span<const uint8_t> Span(const std::vector<float>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * 4};
}

std::string Str(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

v1::QuantizeHeader Header(const std::string& name, int64_t n, int64_t k, bool bias = false) {
  v1::QuantizeHeader h;
  h.set_name(name);
  h.set_out_features(n);
  h.set_in_features(k);
  h.set_dtype(v1::F32);
  h.set_has_bias(bias);
  return h;
}

v1::ForwardRequest ForwardF32(const std::string& layer, int64_t rows, int64_t k) {
  v1::ForwardRequest r;
  r.set_layer(layer);
  r.mutable_input()->set_dtype(v1::F32);
  r.mutable_input()->add_shape(rows);
  r.mutable_input()->add_shape(k);
  r.mutable_input()->set_data(Str(Weights(rows, k, 9)));
  return r;
}

grpc::ByteBuffer Buffer(const std::string& bytes) {
  grpc::Slice slice(bytes.data(), bytes.size());
  return grpc::ByteBuffer(&slice, 1);
}

// RawUnary sends `bytes` as the whole request of `method`.
grpc::Status RawUnary(grpc::Channel* channel, const std::string& method, const std::string& bytes) {
  grpc::GenericStub stub(channel->shared_from_this());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::ByteBuffer request = Buffer(bytes), response;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  stub.UnaryCall(&context, method, grpc::StubOptions(), &request, &response, [&](grpc::Status s) {
    std::lock_guard<std::mutex> lock(mu);
    status = std::move(s);
    done = true;
    cv.notify_one();
  });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  return status;
}

// RawStream writes each of `messages` as one message of a client stream.
grpc::Status RawStream(grpc::Channel* channel, const std::string& method,
                       const std::vector<std::string>& messages) {
  grpc::GenericStub stub(channel->shared_from_this());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::CompletionQueue cq;
  auto call = stub.PrepareCall(&context, method, &cq);
  void* tag;
  bool ok;
  call->StartCall(reinterpret_cast<void*>(1));
  cq.Next(&tag, &ok);
  for (const std::string& m : messages) {
    grpc::ByteBuffer b = Buffer(m);
    call->Write(b, reinterpret_cast<void*>(2));
    cq.Next(&tag, &ok);
    if (!ok) break;  // the server ended the call
  }
  call->WritesDone(reinterpret_cast<void*>(3));
  cq.Next(&tag, &ok);
  grpc::ByteBuffer response;
  call->Read(&response, reinterpret_cast<void*>(4));
  cq.Next(&tag, &ok);
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  cq.Next(&tag, &ok);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return status;
}

class ServiceTest : public ::testing::Test {
 protected:
  void Start(int max_message_mb = 64) {
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.engine.threads = 2;
    options.max_message_mb = max_message_mb;
    auto server = QlinearServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ChannelOptions unlimited;  // the server's limits are what is tested
    unlimited.target = server_->address();
    unlimited.max_message_mb = -1;
    channel_ = *MakeChannel(unlimited);
    client_ = Client::Connect(server_->address());
  }

  std::unique_ptr<QlinearServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<Client> client_;
};

// Issue 14, defect 3: garbage Forward bytes (HEAD: UNIMPLEMENTED with an
// empty message and one stderr line each) get INVALID_ARGUMENT with a
// message and are counted in Stats.
TEST_F(ServiceTest, ForwardBytesThatDoNotParseAreInvalidArgumentAndCounted) {
  Start();
  for (int i = 0; i < 3; ++i) {
    grpc::Status s = RawUnary(channel_.get(), "/qlinear.v1.Data/Forward", std::string("\xff\xff\xff", 3));
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("does not parse as a qlinear.v1.ForwardRequest"));
  }
  auto stats = client_->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->server().malformed_requests_by_rpc().at("Forward"), 3u);
}

// Issue 14, defect 3: header, whole weight, three garbage bytes, bias
// (HEAD: OK and the layer published).
TEST_F(ServiceTest, GarbageInsideAQuantizeStreamFailsItAndPublishesNothing) {
  Start();
  v1::QuantizeChunk header, weight, bias;
  *header.mutable_header() = Header("garbage", 8, 64, true);
  weight.set_weight(Str(Weights(8, 64)));
  bias.set_bias(Str(std::vector<float>(8, 0.5f)));
  grpc::Status s = RawStream(channel_.get(), "/qlinear.v1.Admin/Quantize",
                             {header.SerializeAsString(), weight.SerializeAsString(),
                              std::string("\xff\xff\xff", 3), bias.SerializeAsString()});
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("Quantize message 3 (3 bytes) does not parse"));
  EXPECT_EQ(client_->GetLayer("garbage").status().code(), absl::StatusCode::kNotFound);
  auto stats = client_->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->server().malformed_requests_by_rpc().at("Quantize"), 1u);
  EXPECT_EQ(stats->server().uploads_by_code().at("INVALID_ARGUMENT"), 1u);
  // Without a bias, garbage after the whole weight (HEAD: the stream looked
  // finished, OK, published).
  v1::QuantizeChunk no_bias;
  *no_bias.mutable_header() = Header("garbage2", 8, 64, false);
  grpc::Status s2 = RawStream(channel_.get(), "/qlinear.v1.Admin/Quantize",
                              {no_bias.SerializeAsString(), weight.SerializeAsString(),
                               std::string("\xff\xff\xff", 3)});
  EXPECT_EQ(s2.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(client_->GetLayer("garbage2").status().code(), absl::StatusCode::kNotFound);
  // The same stream without the garbage publishes.
  EXPECT_TRUE(RawStream(channel_.get(), "/qlinear.v1.Admin/Quantize",
                        {header.SerializeAsString(), weight.SerializeAsString(),
                         bias.SerializeAsString()})
                  .ok());
  EXPECT_TRUE(client_->GetLayer("garbage").ok());
}

// Issue 14, defect 4: the answer would be 2 MiB against a 1 MiB limit —
// refused before it is queued, naming both sizes and the setting; Stats
// never count it OK (HEAD: computed, then "Sent message larger than max",
// counted OK).
TEST_F(ServiceTest, OversizeAnswerIsRefusedBeforeQueueing) {
  Start(/*max_message_mb=*/1);
  ASSERT_TRUE(client_->Quantize(Header("wide", 512, 64), Span(Weights(512, 64)), {}).ok());
  auto answer = client_->Forward(ForwardF32("wide", 1024, 64));
  EXPECT_EQ(answer.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(answer.status().message(), HasSubstr("the answer would be"));
  EXPECT_THAT(answer.status().message(), HasSubstr("[1024, 512] of F32"));
  EXPECT_THAT(answer.status().message(), HasSubstr("1048576 bytes (--max-message-mb)"));
  auto stats = client_->Stats("wide");
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->layers(0).requests_by_code().count("OK"), 0u);
  EXPECT_EQ(stats->layers(0).requests_by_code().at("RESOURCE_EXHAUSTED"), 1u);
  EXPECT_TRUE(client_->Forward(ForwardF32("wide", 64, 64)).ok());
}

// Issue 14, defect 4: an answer gRPC fails to send is not counted OK. A
// server built here without the pre-check (limit 0) but with a 1 MiB send
// limit makes the send fail.
TEST(ServiceSendTest, AnAnswerThatFailsToSendIsNotCountedOk) {
  Engine::Options eo;
  eo.threads = 2;
  auto engine = Engine::Create(eo);
  ASSERT_TRUE(engine.ok());
  AdminService admin(engine->get(), nullptr);
  DataService data(engine->get(), "test", nullptr, /*max_response_bytes=*/0);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.SetMaxSendMessageSize(1 << 20);
  builder.RegisterService(&admin);
  builder.RegisterService(&data);
  auto server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  auto client = Client::Connect("127.0.0.1:" + std::to_string(port));
  ASSERT_TRUE(client->Quantize(Header("wide", 512, 64), Span(Weights(512, 64)), {}).ok());
  auto answer = client->Forward(ForwardF32("wide", 1024, 64));
  EXPECT_EQ(answer.status().code(), absl::StatusCode::kResourceExhausted);
  // OnDone records it once the call is over; poll (bounded) for that.
  uint64_t ok = 1, cancelled = 0;
  for (int i = 0; i < 200 && (ok != 0 || cancelled != 1); ++i) {
    auto snap = (*engine)->Snapshot("wide");
    ASSERT_TRUE(snap.ok());
    ok = snap->layers[0].requests[0];
    cancelled = snap->layers[0].requests[static_cast<int>(absl::StatusCode::kCancelled)];
    if (ok != 0 || cancelled != 1) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(ok, 0u);
  EXPECT_EQ(cancelled, 1u);
  server->Shutdown();
}

// Issue 14, defect 1: 40 MB names are refused at the header and hold no
// memory; Lookups with a 10 KB name get a short INVALID_ARGUMENT (HEAD:
// the name came back whole, over the metadata limit); ListLayers and Stats
// keep working.
TEST_F(ServiceTest, LongNamesAreRefusedShortlyEverywhere) {
  Start();
  const uint64_t before = client_->Stats()->server().bytes_held();
  for (int i = 0; i < 4; ++i) {
    auto up = client_->Quantize(Header(std::string(40 << 20, static_cast<char>('a' + i)), 8, 64),
                                Span(Weights(8, 64)), {});
    EXPECT_EQ(up.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_LT(up.status().message().size(), 300u);
  }
  EXPECT_EQ(client_->Stats()->server().bytes_held(), before);
  const std::string ten_kb(10 << 10, 'n');
  for (absl::Status s : {client_->GetLayer(ten_kb).status(), client_->Unload(ten_kb),
                         client_->Stats(ten_kb).status(),
                         client_->Forward(ForwardF32(ten_kb, 1, 64)).status()}) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_LT(s.message().size(), 300u);
    EXPECT_THAT(s.message(), HasSubstr("(10240 bytes)"));
  }
  EXPECT_TRUE(client_->ListLayers().ok());
  // The name's bytes count in what the layer holds.
  auto a = client_->Quantize(Header("a", 8, 64), Span(Weights(8, 64)), {});
  auto b = client_->Quantize(Header(std::string(256, 'b'), 8, 64), Span(Weights(8, 64)), {});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(b->bytes_held() - a->bytes_held(), 255u);
}

// Issue 14, defect 2, at the wire: w[0,0] = 3e38, w[0,1] = -3e38 (HEAD: OK,
// then every Forward NaN).
TEST_F(ServiceTest, QuantizeRefusesANonFiniteScale) {
  Start();
  std::vector<float> w = Weights(8, 64);
  w[0] = 3e38f;
  w[1] = -3e38f;
  auto up = client_->Quantize(Header("huge", 8, 64), Span(w), {});
  EXPECT_EQ(up.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(up.status().message(), HasSubstr("row 0, group 0"));
  EXPECT_EQ(client_->GetLayer("huge").status().code(), absl::StatusCode::kNotFound);
}

// Issue 14, defect 5 at the wire: dtype 77, shape [1, -64].
TEST_F(ServiceTest, UnknownEnumsAndNegativeDimensions) {
  Start();
  v1::ForwardRequest r = ForwardF32("demo", 1, 64);
  r.mutable_input()->set_dtype(static_cast<v1::DType>(77));
  EXPECT_EQ(client_->Forward(r).status().message(), "input dtype must be F32, F16 or BF16; got 77");
  r = ForwardF32("demo", 1, 64);
  r.mutable_input()->set_shape(1, -64);
  EXPECT_EQ(client_->Forward(r).status().message(), "input shape [1, -64]: dimension 1 is negative");
  v1::QuantizeHeader h = Header("e", 8, 64);
  h.set_dtype(static_cast<v1::DType>(77));
  EXPECT_THAT(client_->Quantize(h, Span(Weights(8, 64)), {}).status().message(), HasSubstr("got 77"));
}

}  // namespace
}  // namespace qlinear
