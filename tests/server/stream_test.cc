// ForwardStream and ForwardMulti at the wire (server/service.h): answers
// equal unary Forward's bits, are matched by request_id, fail one by one;
// flow control, per-request timeouts, drain; ForwardMulti's checks come
// before any compute.
#include <chrono>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "client/client.h"
#include "core/engine/clock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/completion_queue.h"
#include "grpcpp/generic/generic_stub.h"
#include "server/server.h"
#include "server/service.h"

namespace qlinear {
namespace {

using ::testing::HasSubstr;

std::vector<float> Floats(int64_t count, uint64_t seed, float sigma = 0.05f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, sigma);
  std::vector<float> w(static_cast<size_t>(count));
  for (float& f : w) f = normal(rng);
  return w;
}

std::string Str(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

v1::ForwardRequest Request(const std::string& layer, int64_t rows, int64_t k, const std::string& id,
                           uint64_t seed = 9) {
  v1::ForwardRequest r;
  r.set_layer(layer);
  r.set_request_id(id);
  r.mutable_input()->set_dtype(v1::F32);
  r.mutable_input()->add_shape(rows);
  r.mutable_input()->add_shape(k);
  r.mutable_input()->set_data(Str(Floats(rows * k, seed, 1.0f)));
  return r;
}

class StreamTest : public ::testing::Test {
 protected:
  // Options: the tests' server (2 threads, a free port), for a test to
  // adjust before Start(options).
  static ServerOptions Options(int max_stream_inflight = 256) {
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.engine.threads = 2;
    options.max_stream_inflight = max_stream_inflight;
    return options;
  }
  void Start(int max_stream_inflight = 256) { Start(Options(max_stream_inflight)); }
  void Start(const ServerOptions& options) {
    auto server = QlinearServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    client_ = Client::Connect(server_->address());
    stub_ = v1::Data::NewStub(*MakeChannel([&] {
      ChannelOptions o;
      o.target = server_->address();
      o.max_message_mb = -1;
      return o;
    }()));
  }

  void Load(const std::string& name, int64_t n, int64_t k, uint64_t seed = 1,
            v1::Mode mode = v1::AFFINE) {
    v1::QuantizeHeader h;
    h.set_name(name);
    if (mode != v1::AFFINE) h.mutable_spec()->set_mode(mode);
    h.set_out_features(n);
    h.set_in_features(k);
    h.set_dtype(v1::F32);
    const std::vector<float> w = Floats(n * k, seed);
    auto loaded = client_->Quantize(
        h, {reinterpret_cast<const uint8_t*>(w.data()), w.size() * 4}, {});
    ASSERT_TRUE(loaded.ok()) << loaded.status();
  }

  // A request on "big" (1024 x 1024) that takes a while to compute: what
  // sits in flight while a test looks at what the server did meanwhile.
  v1::ForwardRequest Slow(const std::string& id) { return Request("big", 2048, 1024, id, 3); }

  uint64_t Code(const google::protobuf::Map<std::string, uint64_t>& m, const std::string& code) {
    auto it = m.find(code);
    return it == m.end() ? 0 : it->second;
  }

  FakeClock clock_;  // for a test that gives it to the engine; outlives server_
  std::unique_ptr<QlinearServer> server_;
  std::unique_ptr<Client> client_;
  std::unique_ptr<v1::Data::Stub> stub_;
};

TEST_F(StreamTest, AnswersEqualUnaryForwardBitsMatchedById) {
  Start();
  Load("a", 24, 64);
  Load("b", 8, 128, 2);
  std::vector<v1::ForwardRequest> requests;
  for (int i = 0; i < 12; ++i) {
    requests.push_back(i % 2 == 0 ? Request("a", 1 + i, 64, "r" + std::to_string(i), i)
                                  : Request("b", 1 + i, 128, "r" + std::to_string(i), i));
  }
  requests[3].set_output_dtype(v1::BF16);
  Client::StreamResult result = client_->ForwardStream(requests);
  ASSERT_TRUE(result.status.ok()) << result.status;
  ASSERT_EQ(result.answers.size(), requests.size());
  std::set<std::string> seen;
  for (const v1::ForwardStreamResponse& answer : result.answers) {
    ASSERT_EQ(answer.status().code(), 0) << answer.status().message();
    const int i = std::stoi(answer.request_id().substr(1));
    EXPECT_TRUE(seen.insert(answer.request_id()).second);
    auto unary = client_->Forward(requests[i]);
    ASSERT_TRUE(unary.ok()) << unary.status();
    EXPECT_EQ(answer.response().output().data(), unary->output().data()) << answer.request_id();
    EXPECT_EQ(answer.response().output().dtype(), unary->output().dtype());
    EXPECT_THAT(answer.response().output().shape(),
                ::testing::ElementsAreArray(unary->output().shape()));
    EXPECT_EQ(answer.response().request_id(), answer.request_id());
    EXPECT_EQ(answer.response().layer_version(), unary->layer_version());
    EXPECT_EQ(answer.response().precision(), v1::EXACT);
  }
}

// A request refused at once is answered before a slow one read earlier.
TEST_F(StreamTest, AnswersComeInCompletionOrder) {
  Start();
  Load("big", 1024, 1024);
  Client::StreamResult result =
      client_->ForwardStream({Slow("slow"), Request("nope", 1, 1024, "fast")});
  ASSERT_TRUE(result.status.ok()) << result.status;
  ASSERT_EQ(result.answers.size(), 2u);
  EXPECT_EQ(result.answers[0].request_id(), "fast");
  EXPECT_EQ(result.answers[0].status().code(), static_cast<int>(grpc::StatusCode::NOT_FOUND));
  EXPECT_EQ(result.answers[1].request_id(), "slow");
  EXPECT_EQ(result.answers[1].status().code(), 0);
}

TEST_F(StreamTest, ABadRequestFailsOnlyItsAnswer) {
  Start();
  Load("big", 1024, 1024);
  Load("a", 24, 64);
  v1::ForwardRequest bad_shape = Request("a", 2, 64, "shape");
  bad_shape.mutable_input()->set_shape(1, 63);
  v1::ForwardRequest no_id = Request("a", 1, 64, "");
  v1::ForwardRequest negative = Request("a", 1, 64, "negative");
  negative.set_timeout_ms(-5);
  Client::StreamResult result = client_->ForwardStream(
      {Slow("dup"), Slow("dup"), no_id, Request("nope", 1, 64, "unknown"), bad_shape, negative,
       Request("a", 3, 64, "good")});
  ASSERT_TRUE(result.status.ok()) << result.status;
  ASSERT_EQ(result.answers.size(), 7u);
  std::map<std::string, std::vector<v1::ForwardStreamResponse>> by_id;
  for (const auto& answer : result.answers) by_id[answer.request_id()].push_back(answer);
  const int kInvalid = static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT);
  ASSERT_EQ(by_id["dup"].size(), 2u);
  // The second "dup" was read while the first was in flight.
  EXPECT_EQ(by_id["dup"][0].status().code(), kInvalid);
  EXPECT_THAT(by_id["dup"][0].status().message(), HasSubstr("already in flight"));
  EXPECT_EQ(by_id["dup"][1].status().code(), 0);
  ASSERT_EQ(by_id[""].size(), 1u);
  EXPECT_EQ(by_id[""][0].status().code(), kInvalid);
  EXPECT_THAT(by_id[""][0].status().message(), HasSubstr("request_id is required"));
  EXPECT_EQ(by_id["unknown"][0].status().code(), static_cast<int>(grpc::StatusCode::NOT_FOUND));
  EXPECT_EQ(by_id["shape"][0].status().code(), kInvalid);
  EXPECT_EQ(by_id["negative"][0].status().code(), kInvalid);
  EXPECT_THAT(by_id["negative"][0].status().message(), HasSubstr("timeout_ms must be >= 0"));
  EXPECT_FALSE(by_id["shape"][0].has_response());
  EXPECT_EQ(by_id["good"][0].status().code(), 0);
  EXPECT_TRUE(by_id["good"][0].has_response());
  // Refusals are counted as Forward's are.
  auto stats = client_->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(Code(stats->server().not_loaded_requests_by_code(), "NOT_FOUND"), 1u);
}

TEST_F(StreamTest, GarbageBytesFailOneAnswerAndAreCounted) {
  Start();
  Load("a", 24, 64);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  // A typed stub cannot send garbage: a ForwardRequest whose tensor dtype
  // field holds a length-delimited value does not parse.
  grpc::GenericStub stub(*MakeChannel([&] {
    ChannelOptions o;
    o.target = server_->address();
    return o;
  }()));
  grpc::CompletionQueue cq;
  auto call = stub.PrepareCall(&context, "/qlinear.v1.Data/ForwardStream", &cq);
  void* tag;
  bool ok;
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
  for (const std::string& bytes :
       {std::string("\xff\xff\xff", 3), Request("a", 1, 64, "after").SerializeAsString()}) {
    grpc::Slice slice(bytes.data(), bytes.size());
    grpc::ByteBuffer b(&slice, 1);
    call->Write(b, reinterpret_cast<void*>(2));
    ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
  }
  call->WritesDone(reinterpret_cast<void*>(3));
  ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
  std::vector<v1::ForwardStreamResponse> answers;
  while (true) {
    grpc::ByteBuffer b;
    call->Read(&b, reinterpret_cast<void*>(4));
    ASSERT_TRUE(cq.Next(&tag, &ok));
    if (!ok) break;
    std::vector<grpc::Slice> slices;
    ASSERT_TRUE(b.Dump(&slices).ok());
    std::string joined;
    for (const auto& s : slices) joined.append(reinterpret_cast<const char*>(s.begin()), s.size());
    ASSERT_TRUE(answers.emplace_back().ParseFromString(joined));
  }
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  EXPECT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(answers.size(), 2u);
  EXPECT_EQ(answers[0].request_id(), "");
  EXPECT_EQ(answers[0].status().code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_THAT(answers[0].status().message(), HasSubstr("does not parse"));
  EXPECT_EQ(answers[1].request_id(), "after");
  EXPECT_EQ(answers[1].status().code(), 0);
  auto stats = client_->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->server().malformed_requests_by_rpc().at("ForwardStream"), 1u);
}

// A request queued behind a slow one, with a 1 ms timeout of its own,
// expires while the stream (and the slow one) go on.
TEST_F(StreamTest, EachRequestMayCarryItsOwnTimeout) {
  Start();
  Load("big", 1024, 1024);
  v1::ForwardRequest quick = Request("big", 1, 1024, "quick");
  quick.set_timeout_ms(1);
  Client::StreamResult result = client_->ForwardStream({Slow("slow"), quick});
  ASSERT_TRUE(result.status.ok()) << result.status;
  ASSERT_EQ(result.answers.size(), 2u);
  for (const auto& answer : result.answers) {
    if (answer.request_id() == "quick") {
      EXPECT_EQ(answer.status().code(), static_cast<int>(grpc::StatusCode::DEADLINE_EXCEEDED));
    } else {
      EXPECT_EQ(answer.status().code(), 0);
    }
  }
}

// Deadlines are read on the engine's clock: a request's gRPC deadline and
// a stream request's timeout_ms become points on it. With a FakeClock the
// batch delay passes only when the test says, a deadline far away in real
// time is not yet due then, and one that the fake time passes is.
TEST_F(StreamTest, DeadlinesAreReadOnTheEnginesClock) {
  ServerOptions options = Options();
  options.engine.max_batch_delay_us = 1000000;  // 1 s of fake time
  options.engine.clock = &clock_;
  Start(options);
  Load("l", 16, 64);

  // Unary Forward, 60 s of gRPC deadline: the batch runs once the fake
  // second has passed, well inside it.
  uint64_t waits = clock_.waits();
  Clock::TimePoint due = clock_.Now() + std::chrono::seconds(1);
  absl::StatusOr<v1::ForwardResponse> unary;
  std::thread call([&] { unary = client_->Forward(Request("l", 1, 64, "u")); });
  bool waiting = clock_.BlockUntilWaiting(due, waits);
  clock_.AdvanceBy(std::chrono::seconds(1));  // also when not waiting: the call must end
  call.join();
  ASSERT_TRUE(waiting);
  ASSERT_TRUE(unary.ok()) << unary.status();

  // Two stream requests in one batch, with timeout_ms 500 and 5000: the
  // batch runs at the fake second, after the first is due and before the
  // second is.
  waits = clock_.waits();
  due = clock_.Now() + std::chrono::seconds(1);
  v1::ForwardRequest soon = Request("l", 1, 64, "soon");
  soon.set_timeout_ms(500);
  v1::ForwardRequest later = Request("l", 1, 64, "later");
  later.set_timeout_ms(5000);
  Client::StreamResult streamed;
  std::thread stream([&] { streamed = client_->ForwardStream({soon, later}); });
  // Both queued before the time moves (a poll of a condition, not a sleep
  // for timing).
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (server_->engine().queued_rows() < 2 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  waiting = server_->engine().queued_rows() == 2 && clock_.BlockUntilWaiting(due, waits);
  clock_.AdvanceBy(std::chrono::seconds(1));
  stream.join();
  ASSERT_TRUE(waiting);
  ASSERT_TRUE(streamed.status.ok()) << streamed.status;
  ASSERT_EQ(streamed.answers.size(), 2u);
  for (const v1::ForwardStreamResponse& answer : streamed.answers) {
    const int expected = answer.request_id() == "soon"
                             ? static_cast<int>(grpc::StatusCode::DEADLINE_EXCEEDED)
                             : 0;
    EXPECT_EQ(answer.status().code(), expected)
        << answer.request_id() << ": " << answer.status().message();
  }
}

// With --max-stream-inflight 2 and two slow requests in flight, the third
// (refused at once when read) is read only once an answer has been
// written: its answer comes after the quicker slow one's, not first.
TEST_F(StreamTest, FlowControlStopsReadingAtTheLimit) {
  Start(/*max_stream_inflight=*/2);
  Load("big", 1024, 1024);
  // s2 is four times s1's work, so that s1 is answered well before it
  // (batches of one layer may compute at once: the engine's compute slots).
  Client::StreamResult result = client_->ForwardStream(
      {Request("big", 1024, 1024, "s1", 3), Request("big", 4096, 1024, "s2", 4),
       Request("nope", 1, 1024, "third")});
  ASSERT_TRUE(result.status.ok()) << result.status;
  ASSERT_EQ(result.answers.size(), 3u);
  // Without flow control "third" (refused at once) would be answered first.
  EXPECT_EQ(result.answers[0].request_id(), "s1");
  EXPECT_EQ(result.answers[1].request_id(), "third");
  EXPECT_EQ(result.answers[2].request_id(), "s2");
  // Refused, never failed the stream.
  EXPECT_EQ(result.answers[1].status().code(), static_cast<int>(grpc::StatusCode::NOT_FOUND));
}

// Drain: the request in flight is answered, then the stream ends
// UNAVAILABLE; a stream opened after the drain began ends at once.
TEST_F(StreamTest, DrainAnswersInFlightThenEndsUnavailable) {
  Start();
  Load("big", 1024, 1024);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto stream = stub_->ForwardStream(&context);
  ASSERT_TRUE(stream->Write(Slow("inflight")));
  // Until the server has accepted it (a poll of a condition, not a sleep
  // for timing).
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (server_->engine().unanswered() == 0 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_EQ(server_->engine().unanswered(), 1);
  std::thread drain([&] {
    server_->Shutdown(std::chrono::steady_clock::now() + std::chrono::seconds(30));
  });
  v1::ForwardStreamResponse answer;
  ASSERT_TRUE(stream->Read(&answer));
  EXPECT_EQ(answer.request_id(), "inflight");
  EXPECT_EQ(answer.status().code(), 0);
  EXPECT_TRUE(answer.has_response());
  EXPECT_FALSE(stream->Read(&answer));
  grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(status.error_message(), HasSubstr("draining"));
  drain.join();
}

// An idle stream (nothing in flight) is ended by the drain itself, from
// the draining thread, outside the service's stream registry lock (its
// OnDone takes that lock, and gRPC may run it inline).
TEST_F(StreamTest, DrainEndsAnIdleStreamUnavailable) {
  Start();
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto stream = stub_->ForwardStream(&context);
  // One answered request: the stream is registered and now idle.
  ASSERT_TRUE(stream->Write(Request("nope", 1, 8, "first")));
  v1::ForwardStreamResponse answer;
  ASSERT_TRUE(stream->Read(&answer));
  EXPECT_EQ(answer.status().code(), static_cast<int>(grpc::StatusCode::NOT_FOUND));
  EXPECT_TRUE(server_->Shutdown(std::chrono::steady_clock::now() + std::chrono::seconds(30)));
  EXPECT_FALSE(stream->Read(&answer));
  grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(status.error_message(), HasSubstr("draining; 1 answers were sent"));
}

TEST_F(StreamTest, ForwardMultiEqualsPerLayerForward) {
  Start();
  Load("q", 32, 64, 1);
  Load("k", 16, 64, 2);
  Load("v", 48, 64, 3);
  v1::ForwardMultiRequest multi;
  for (const char* name : {"q", "k", "v"}) multi.add_layers(name);
  const v1::ForwardRequest one = Request("q", 5, 64, "m1");
  *multi.mutable_input() = one.input();
  multi.set_request_id("m1");
  multi.set_output_dtype(v1::F16);
  auto answer = client_->ForwardMulti(multi);
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->request_id(), "m1");
  ASSERT_EQ(answer->outputs_size(), 3);
  for (int i = 0; i < 3; ++i) {
    v1::ForwardRequest r = one;
    r.set_layer(multi.layers(i));
    r.set_output_dtype(v1::F16);
    auto unary = client_->Forward(r);
    ASSERT_TRUE(unary.ok()) << unary.status();
    const v1::LayerOutput& out = answer->outputs(i);
    EXPECT_EQ(out.layer(), multi.layers(i));
    EXPECT_EQ(out.output().data(), unary->output().data()) << out.layer();
    EXPECT_THAT(out.output().shape(), ::testing::ElementsAreArray(unary->output().shape()));
    EXPECT_EQ(out.output().dtype(), v1::F16);
    EXPECT_EQ(out.layer_version(), unary->layer_version());
    EXPECT_EQ(out.precision(), v1::EXACT);
    EXPECT_GE(out.timing().batch_rows(), 5);
  }
}

TEST_F(StreamTest, ForwardMultiFailsBeforeAnyCompute) {
  Start();
  Load("q", 32, 64, 1);
  Load("k", 16, 64, 2);
  Load("wide", 16, 128, 3);
  auto batches = [&] {
    auto stats = client_->Stats();
    EXPECT_TRUE(stats.ok());
    uint64_t n = 0;
    for (const auto& l : stats->layers()) n += l.batches();
    return n;
  };
  const uint64_t before = batches();
  const v1::ForwardRequest one = Request("q", 2, 64, "x");
  struct Case {
    std::vector<std::string> layers;
    absl::StatusCode code;
    std::string says;
  };
  for (const Case& c : std::vector<Case>{
           {{"q", "k", "nope"}, absl::StatusCode::kNotFound, "nope"},
           {{"q", "wide", "k"}, absl::StatusCode::kInvalidArgument, "must share in_features"},
           {{"q", "q"}, absl::StatusCode::kInvalidArgument, "named twice"},
           {{}, absl::StatusCode::kInvalidArgument, "at least one layer"}}) {
    v1::ForwardMultiRequest multi;
    for (const std::string& name : c.layers) multi.add_layers(name);
    *multi.mutable_input() = one.input();
    auto answer = client_->ForwardMulti(multi);
    EXPECT_EQ(answer.status().code(), c.code) << answer.status();
    EXPECT_THAT(answer.status().message(), HasSubstr(c.says));
  }
  // The input's K against the layers'.
  v1::ForwardMultiRequest multi;
  multi.add_layers("wide");
  *multi.mutable_input() = one.input();
  EXPECT_EQ(client_->ForwardMulti(multi).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(batches(), before);
  auto stats = client_->Stats("q");
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(Code(stats->layers(0).requests_by_code(), "OK"), 0u);
}

// What Submit would refuse on one layer only (INT8 on mxfp8 runs BF16,
// which this server does not enable) fails the call before the layers
// named before it compute.
TEST_F(StreamTest, ForwardMultiRefusesAPrecisionOneLayerCannotRunBeforeAnyCompute) {
  ServerOptions options = Options();
  options.engine.precisions = *PrecisionSet::Parse("exact,int8");
  Start(options);
  Load("q", 32, 64, 1);
  Load("k", 16, 64, 2);
  Load("fp8", 16, 64, 3, v1::MXFP8);
  v1::ForwardMultiRequest multi;
  for (const char* name : {"q", "k", "fp8"}) multi.add_layers(name);
  *multi.mutable_input() = Request("q", 2, 64, "x").input();
  multi.set_precision(v1::INT8);
  auto answer = client_->ForwardMulti(multi);
  EXPECT_EQ(answer.status().code(), absl::StatusCode::kInvalidArgument) << answer.status();
  EXPECT_THAT(answer.status().message(), HasSubstr("runs as bf16"));
  EXPECT_THAT(answer.status().message(), HasSubstr("'fp8'"));
  auto stats = client_->Stats();
  ASSERT_TRUE(stats.ok());
  for (const auto& l : stats->layers()) {
    EXPECT_EQ(l.batches(), 0u) << l.name();
    EXPECT_EQ(Code(l.requests_by_code(), "OK"), 0u) << l.name();
    EXPECT_EQ(Code(l.requests_by_code(), "INVALID_ARGUMENT"), 1u) << l.name();
  }
  // The same layers at a precision each can run: one answer per layer.
  multi.set_precision(v1::EXACT);
  answer = client_->ForwardMulti(multi);
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->outputs_size(), 3);
}

}  // namespace
}  // namespace qlinear
