// Forward bytes to an engine request (server/wire_forward.h).
#include "server/wire_forward.h"
#include "proto/wire.h"

#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace qlinear {
namespace {

using ::testing::HasSubstr;

v1::ForwardRequest Request(int64_t rows, int64_t k) {
  v1::ForwardRequest r;
  r.set_layer("demo");
  r.mutable_input()->set_dtype(v1::F32);
  r.mutable_input()->add_shape(rows);
  r.mutable_input()->add_shape(k);
  r.mutable_input()->set_data(std::string(static_cast<size_t>(rows * k) * 4, '\0'));
  return r;
}

absl::Status Parse(const v1::ForwardRequest& r, ParsedForward* out, ForwardLimits limits = {}) {
  return ParseForward(r.SerializeAsString(), limits, out);
}

TEST(WireForwardTest, AValidRequestBorrowsItsInputBytes) {
  ParsedForward p;
  ForwardLimits limits;
  limits.max_answer_bytes = 1 << 20;
  ASSERT_TRUE(Parse(Request(3, 64), &p, limits).ok());
  EXPECT_TRUE(p.parsed);
  EXPECT_EQ(p.request.layer, "demo");
  EXPECT_EQ(p.request.rows, 3);
  EXPECT_EQ(p.request.k, 64);
  EXPECT_EQ(p.request.x, p.message.input().data().data());  // no copy
  EXPECT_EQ(p.request.max_answer_bytes, 1u << 20);
  EXPECT_GT(p.request.answer_overhead_bytes, 0u);

  // The same from gRPC's slices.
  const std::string bytes = Request(2, 64).SerializeAsString();
  grpc::Slice slice(bytes.data(), bytes.size());
  grpc::ByteBuffer buffer(&slice, 1);
  ParsedForward q;
  ASSERT_TRUE(ParseForward(&buffer, limits, &q).ok());
  EXPECT_EQ(q.request.rows, 2);
  EXPECT_EQ(q.request.x, q.message.input().data().data());
}

// Issue 14, defect 3: bytes that do not parse get INVALID_ARGUMENT with a
// message (HEAD: UNIMPLEMENTED, empty message).
TEST(WireForwardTest, BytesThatDoNotParseAreInvalidArgument) {
  ParsedForward p;
  absl::Status s = ParseForward(std::string("\xff\xff\xff", 3), {}, &p);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("(3 bytes) does not parse as a qlinear.v1.ForwardRequest"));
  EXPECT_FALSE(p.parsed);
}

// Issue 14, defect 5: numbers outside the proto's names, and negative
// dimensions, are named as such.
TEST(WireForwardTest, UnknownEnumsByNumberAndNegativeDimensions) {
  v1::ForwardRequest r = Request(1, 64);
  r.mutable_input()->set_dtype(static_cast<v1::DType>(77));
  ParsedForward a;
  EXPECT_EQ(Parse(r, &a).message(), "input dtype must be F32, F16 or BF16; got 77");
  EXPECT_TRUE(a.parsed);

  r = Request(1, 64);
  r.set_output_dtype(static_cast<v1::DType>(99));
  ParsedForward b;
  EXPECT_EQ(Parse(r, &b).message(), "output_dtype must be F32, F16 or BF16; got 99");

  r = Request(1, 64);
  r.set_output_dtype(v1::U8);
  ParsedForward u8;
  EXPECT_EQ(Parse(r, &u8).message(), "output_dtype must be F32, F16 or BF16; got U8");

  r = Request(1, 64);
  r.set_precision(static_cast<v1::Precision>(99));
  ParsedForward c;
  EXPECT_THAT(Parse(r, &c).message(), HasSubstr("got 99"));

  r = Request(1, 64);
  r.mutable_input()->set_shape(1, -64);
  ParsedForward d;
  absl::Status neg = Parse(r, &d);
  EXPECT_EQ(neg.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(neg.message(), "input shape [1, -64]: dimension 1 is negative");

  r = Request(1, 64);
  r.mutable_input()->set_shape(0, -2);
  ParsedForward e;
  EXPECT_EQ(Parse(r, &e).message(), "input shape [-2, 64]: dimension 0 is negative");

  r = Request(1, 64);
  r.mutable_input()->add_shape(int64_t{1} << 40);
  ParsedForward f;
  EXPECT_THAT(Parse(r, &f).message(), HasSubstr("more than 2^40 elements"));
}

// Issue 16: UNSPECIFIED and EXACT ask for exact, INT8 and BFLOAT16 for theirs;
// the response names the mode that ran, never UNSPECIFIED.
TEST(WireForwardTest, PrecisionsParseAndTheResponseSaysWhichRan) {
  const std::pair<v1::Precision, Precision> cases[] = {{v1::PRECISION_UNSPECIFIED, Precision::kExact},
                                                       {v1::EXACT, Precision::kExact},
                                                       {v1::INT8, Precision::kInt8},
                                                       {v1::BFLOAT16, Precision::kBf16}};
  for (const auto& [wire, want] : cases) {
    v1::ForwardRequest r = Request(1, 64);
    r.set_precision(wire);
    ParsedForward p;
    ASSERT_TRUE(Parse(r, &p).ok()) << wire;
    EXPECT_EQ(p.request.precision, want) << wire;
  }
  EXPECT_EQ(PrecisionFromProto(static_cast<v1::Precision>(99)).status().message(),
            "precision must be EXACT, INT8 or BFLOAT16 (or unset: EXACT); got 99");

  ParsedForward p;
  ASSERT_TRUE(Parse(Request(1, 64), &p).ok());
  for (const auto& [ran, wire] : {std::pair{Precision::kExact, v1::EXACT},
                                  std::pair{Precision::kInt8, v1::INT8},
                                  std::pair{Precision::kBf16, v1::BFLOAT16}}) {
    Engine::ForwardResult result;
    result.n = 1;
    result.y.resize(4);
    result.precision = ran;
    v1::ForwardResponse response;
    BuildForwardResponse(p, result, &response);
    EXPECT_EQ(response.precision(), wire);
    // The answer's bound still holds with the precision in it.
    EXPECT_LE(response.ByteSizeLong() - response.output().data().size(),
              AnswerOverheadBytes(p.message));
  }
}

TEST(WireForwardTest, NamesAreCheckedAndQuotedShort) {
  v1::ForwardRequest r = Request(1, 64);
  r.set_layer(std::string(100000, 'x'));
  ParsedForward p;
  absl::Status s = Parse(r, &p);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_LT(s.message().size(), 300u);
  r.set_layer("");
  ParsedForward q;
  EXPECT_EQ(Parse(r, &q).code(), absl::StatusCode::kInvalidArgument);
}

TEST(WireForwardTest, ShapeTextShowsEightDimensionsAtMost) {
  google::protobuf::RepeatedField<int64_t> shape;
  for (int i = 0; i < 1000; ++i) shape.Add(1);
  EXPECT_EQ(ShapeText(shape), "[1, 1, 1, 1, 1, 1, 1, 1, ..., (1000 dimensions)]");
}

}  // namespace
}  // namespace qlinear
