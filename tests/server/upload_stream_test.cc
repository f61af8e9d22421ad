// The upload state machines fed serialized chunks, as the server's reactor
// and the fuzz target feed them (server/upload_stream.h).
#include "server/upload_stream.h"

#include <random>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/half.h"

namespace qlinear {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::unique_ptr<Engine> MakeEngine() {
  Engine::Options o;
  o.threads = 1;
  return *Engine::Create(o);
}

std::string Bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

std::vector<float> Weights(int64_t n, int64_t k) {
  std::mt19937_64 rng(7);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<float> w(static_cast<size_t>(n * k));
  for (float& f : w) f = normal(rng);
  return w;
}

std::string QHeader(const std::string& name, int64_t n, int64_t k, bool bias,
                    v1::DType dtype = v1::F32) {
  v1::QuantizeChunk c;
  v1::QuantizeHeader* h = c.mutable_header();
  h->set_name(name);
  h->set_out_features(n);
  h->set_in_features(k);
  h->set_dtype(dtype);
  h->set_has_bias(bias);
  return c.SerializeAsString();
}

std::string QWeight(const std::string& bytes) {
  v1::QuantizeChunk c;
  c.set_weight(bytes);
  return c.SerializeAsString();
}

std::string QBias(const std::string& bytes) {
  v1::QuantizeChunk c;
  c.set_bias(bytes);
  return c.SerializeAsString();
}

class UploadStreamTest : public ::testing::Test {
 protected:
  std::unique_ptr<Engine> engine_ = MakeEngine();
};

TEST_F(UploadStreamTest, ACleanStreamPublishes) {
  UploadStream s(engine_.get(), UploadStream::Rpc::kQuantize);
  const std::string w = Bytes(Weights(8, 64));
  ASSERT_TRUE(s.OnMessage(QHeader("ok", 8, 64, true)).ok());
  ASSERT_TRUE(s.OnMessage(QWeight(w.substr(0, 1000))).ok());
  ASSERT_TRUE(s.OnMessage(QWeight(w.substr(1000))).ok());
  ASSERT_TRUE(s.OnMessage(QBias(Bytes(std::vector<float>(8, 0.5f)))).ok());
  auto layer = s.Finish();
  ASSERT_TRUE(layer.ok()) << layer.status();
  EXPECT_EQ((*layer)->info().name, "ok");
  EXPECT_TRUE(engine_->catalog().Contains("ok"));
}

// Issue 14, defect 3: header, whole weight, three garbage bytes, bias —
// the garbage fails the upload, naming what came and what was expected,
// and nothing is published (HEAD: the read ended as if clean; OK).
TEST_F(UploadStreamTest, GarbageBetweenWeightAndBiasFailsTheUpload) {
  UploadStream s(engine_.get(), UploadStream::Rpc::kQuantize);
  ASSERT_TRUE(s.OnMessage(QHeader("garbage", 8, 64, true)).ok());
  ASSERT_TRUE(s.OnMessage(QWeight(Bytes(Weights(8, 64)))).ok());
  absl::Status bad = s.OnMessage(std::string("\xff\xff\xff", 3));
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.message(), HasSubstr("Quantize message 3 (3 bytes) does not parse"));
  EXPECT_THAT(bad.message(), HasSubstr("expected weight bytes, then bias bytes"));
  EXPECT_TRUE(s.malformed());
  // Dead from here on: the bias and the end are refused with the same status.
  EXPECT_EQ(s.OnMessage(QBias(Bytes(std::vector<float>(8, 0.5f)))), bad);
  EXPECT_EQ(s.Finish().status(), bad);
  EXPECT_FALSE(engine_->catalog().Contains("garbage"));
  EXPECT_EQ(engine_->catalog().bytes_held(), 0u);  // the reservation went back
  EXPECT_EQ(engine_->Snapshot().malformed_requests.at("Quantize"), 1u);
}

TEST_F(UploadStreamTest, OutOfOrderQuantizePartsFailNamingWhatCame) {
  {
    UploadStream s(engine_.get(), UploadStream::Rpc::kQuantize);
    absl::Status st = s.OnMessage(QWeight("abcd"));
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(st.message(), HasSubstr("expected the header first"));
  }
  {
    UploadStream s(engine_.get(), UploadStream::Rpc::kQuantize);
    ASSERT_TRUE(s.OnMessage(QHeader("order", 8, 64, true)).ok());
    absl::Status st = s.OnMessage(QHeader("order", 8, 64, true));
    EXPECT_THAT(st.message(), HasSubstr("message 2 is a second header"));
  }
  {
    UploadStream s(engine_.get(), UploadStream::Rpc::kQuantize);
    ASSERT_TRUE(s.OnMessage(QHeader("order", 8, 64, true)).ok());
    ASSERT_TRUE(s.OnMessage(QWeight(Bytes(Weights(4, 64)))).ok());
    absl::Status st = s.OnMessage(QBias(Bytes(std::vector<float>(8, 0.5f))));
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(st.message(), HasSubstr("got it after 4 of 8 rows"));
  }
  {
    UploadStream s(engine_.get(), UploadStream::Rpc::kQuantize);
    ASSERT_TRUE(s.OnMessage(QHeader("order", 8, 64, true)).ok());
    ASSERT_TRUE(s.OnMessage(QWeight(Bytes(Weights(8, 64)))).ok());
    ASSERT_TRUE(s.OnMessage(QBias(Bytes(std::vector<float>(4, 0.5f)))).ok());
    absl::Status st = s.OnMessage(QWeight("abcd"));
    EXPECT_THAT(st.message(), HasSubstr("weight bytes after the bias"));
  }
  {
    UploadStream s(engine_.get(), UploadStream::Rpc::kQuantize);
    ASSERT_TRUE(s.OnMessage(QHeader("order", 8, 64, false)).ok());
    absl::Status st = s.OnMessage(std::string());  // an empty message: no part
    EXPECT_THAT(st.message(), HasSubstr("is empty"));
  }
  EXPECT_FALSE(engine_->catalog().Contains("order"));
  EXPECT_EQ(engine_->catalog().bytes_held(), 0u);
  EXPECT_EQ(engine_->Snapshot().malformed_requests.count("Quantize"), 0u);
}

TEST_F(UploadStreamTest, OutOfOrderLoadQuantizedParts) {
  auto header = [](const std::string& name) {
    v1::LoadQuantizedChunk c;
    v1::LoadQuantizedHeader* h = c.mutable_header();
    h->set_name(name);
    h->set_out_features(8);
    h->set_in_features(64);
    h->set_scales_dtype(v1::F16);
    return c.SerializeAsString();
  };
  v1::LoadQuantizedChunk scales;
  scales.set_scales(std::string(16, '\0'));
  UploadStream s(engine_.get(), UploadStream::Rpc::kLoadQuantized);
  ASSERT_TRUE(s.OnMessage(header("load")).ok());
  absl::Status st = s.OnMessage(scales.SerializeAsString());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("scales bytes arrived before weight was complete"));

  UploadStream twice(engine_.get(), UploadStream::Rpc::kLoadQuantized);
  ASSERT_TRUE(twice.OnMessage(header("load")).ok());
  EXPECT_THAT(twice.OnMessage(header("load")).message(), HasSubstr("second header"));

  UploadStream garbage(engine_.get(), UploadStream::Rpc::kLoadQuantized);
  ASSERT_TRUE(garbage.OnMessage(header("load")).ok());
  EXPECT_THAT(garbage.OnMessage(std::string("\x0a\xff\xff", 3)).message(),
              HasSubstr("does not parse as a qlinear.v1.LoadQuantizedChunk"));
  EXPECT_FALSE(engine_->catalog().Contains("load"));
  EXPECT_EQ(engine_->Snapshot().malformed_requests.at("LoadQuantized"), 1u);
}

// Issue 14, defect 2, through the stream: w[0,0] = 3e38, w[0,1] = -3e38.
TEST_F(UploadStreamTest, QuantizeRefusesANonFiniteScale) {
  std::vector<float> w = Weights(8, 64);
  w[0] = 3e38f;
  w[1] = -3e38f;
  UploadStream s(engine_.get(), UploadStream::Rpc::kQuantize);
  ASSERT_TRUE(s.OnMessage(QHeader("huge", 8, 64, false)).ok());
  absl::Status st = s.OnMessage(QWeight(Bytes(w)));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("scales and biases must be finite"));
  EXPECT_THAT(st.message(), HasSubstr("row 0, group 0"));
  EXPECT_FALSE(s.Finish().ok());
  EXPECT_FALSE(engine_->catalog().Contains("huge"));
}

// Issue 14, defect 1: the 40 MB name is refused at the header, before the
// layer's bytes are reserved; the message is short.
TEST_F(UploadStreamTest, LongOrControlNamesAreRefusedAtTheHeader) {
  UploadStream s(engine_.get(), UploadStream::Rpc::kQuantize);
  absl::Status st = s.OnMessage(QHeader(std::string(40 << 20, 'n'), 8, 64, false));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_LT(st.message().size(), 300u);
  EXPECT_EQ(s.name(), "");
  EXPECT_EQ(engine_->catalog().bytes_held(), 0u);
  UploadStream evil(engine_.get(), UploadStream::Rpc::kQuantize);
  absl::Status e = evil.OnMessage(QHeader("x\n\x1b[2J", 8, 64, false));
  EXPECT_EQ(e.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(e.message(), Not(HasSubstr("\x1b")));
}

// Issue 14, defect 5: enum numbers outside the proto's names.
TEST_F(UploadStreamTest, UnknownEnumValuesAreReportedByNumber) {
  UploadStream s(engine_.get(), UploadStream::Rpc::kQuantize);
  absl::Status st = s.OnMessage(QHeader("e", 8, 64, false, static_cast<v1::DType>(77)));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("got 77"));

  v1::QuantizeChunk mode;
  mode.mutable_header()->set_name("e");
  mode.mutable_header()->set_out_features(8);
  mode.mutable_header()->set_in_features(64);
  mode.mutable_header()->set_dtype(v1::F32);
  mode.mutable_header()->mutable_spec()->set_mode(static_cast<v1::Mode>(9));
  UploadStream m(engine_.get(), UploadStream::Rpc::kQuantize);
  EXPECT_THAT(m.OnMessage(mode.SerializeAsString()).message(), HasSubstr("got 9"));

  v1::LoadQuantizedChunk load;
  load.mutable_header()->set_name("e");
  load.mutable_header()->set_out_features(8);
  load.mutable_header()->set_in_features(64);
  load.mutable_header()->set_scales_dtype(static_cast<v1::DType>(77));
  UploadStream l(engine_.get(), UploadStream::Rpc::kLoadQuantized);
  EXPECT_THAT(l.OnMessage(load.SerializeAsString()).message(), HasSubstr("got 77"));
  load.mutable_header()->set_scales_dtype(v1::F16);
  load.mutable_header()->set_has_bias(true);
  load.mutable_header()->set_bias_dtype(static_cast<v1::DType>(99));
  UploadStream b(engine_.get(), UploadStream::Rpc::kLoadQuantized);
  EXPECT_THAT(b.OnMessage(load.SerializeAsString()).message(), HasSubstr("got 99"));
}

}  // namespace
}  // namespace qlinear
