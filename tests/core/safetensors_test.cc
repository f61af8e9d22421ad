#include "core/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "core/dtype.h"
#include "tests/test_util.h"

namespace qlinear {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;


// MakeFile builds a safetensors file by hand: 8-byte little-endian header
// length, the header text, then the data section.
std::string MakeFile(absl::string_view header, absl::string_view data) {
  std::string out(8, '\0');
  const uint64_t len = header.size();
  for (int i = 0; i < 8; ++i)
    out[i] = static_cast<char>((len >> (8 * i)) & 0xFF);
  out.append(header.data(), header.size());
  out.append(data.data(), data.size());
  return out;
}

// MakeFileWithLength is MakeFile with an arbitrary (possibly lying) length.
std::string MakeFileWithLength(uint64_t len, absl::string_view rest) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i)
    out[i] = static_cast<char>((len >> (8 * i)) & 0xFF);
  out.append(rest.data(), rest.size());
  return out;
}


void WriteBytes(const std::string& path, absl::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

bool Exists(const std::string& path) {
  std::error_code ignored;
  return std::filesystem::exists(path, ignored);
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::string AsString(absl::Span<const uint8_t> bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

template <typename T>
absl::Span<const uint8_t> BytesOf(const std::vector<T>& v) {
  return absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()),
                                   v.size() * sizeof(T));
}

// ParseError checks that parsing `bytes` fails with INVALID_ARGUMENT and
// returns the message for further checks.
std::string ParseError(absl::string_view bytes) {
  auto file = SafetensorsFile::Parse(bytes);
  EXPECT_FALSE(file.ok()) << "parsed a malformed file";
  if (file.ok()) return "";
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument)
      << file.status();
  return std::string(file.status().message());
}

// A valid one-tensor entry: F32 [n] at [begin, begin + 4n).
std::string F32Entry(const std::string& name, int n, int begin) {
  return absl::StrCat("\"", name, "\":{\"dtype\":\"F32\",\"shape\":[", n,
                      "],\"data_offsets\":[", begin, ",", begin + 4 * n, "]}");
}

// ---------------------------------------------------------------------------
// Round trip.

struct Fixture {
  std::vector<float> f32 = {1.5f, -2.25f, 3.0f, 0.0f, -0.0f, 1e30f};
  std::vector<uint16_t> f16 = {0x3C00, 0xC000, 0x7BFF, 0x0001};
  std::vector<uint32_t> u32 = {0xDEADBEEF, 0, 0xFFFFFFFF};
  std::vector<uint8_t> u8 = {1, 2, 3, 4,
                             5};  // odd size: later tensors unaligned
  std::vector<int64_t> i64 = {-1, INT64_MAX};
  std::vector<float> empty;

  std::vector<TensorToWrite> Tensors() const {
    // Deliberately not in name order; the empty tensor shares its offset.
    return {
        {"layer.weight", DType::kF32, {2, 3}, BytesOf(f32)},
        {"a.half", DType::kF16, {4}, BytesOf(f16)},
        {"packed", DType::kU32, {3, 1}, BytesOf(u32)},
        {"nothing", DType::kF32, {0, 4}, BytesOf(empty)},  // between others
        {"bytes", DType::kU8, {5}, BytesOf(u8)},
        {"ids", DType::kI64, {1, 2}, BytesOf(i64)},
    };
  }
};

TEST(SafetensorsTest, RoundTrip) {
  ScopedTempDir dir("safetensors_test");
  const std::string path = dir.File("model.safetensors");
  Fixture fx;
  const std::vector<TensorToWrite> tensors = fx.Tensors();
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"quantization", "{\"bits\": 4}"}, {"empty", ""}};
  ASSERT_TRUE(WriteSafetensors(path, tensors, metadata).ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const auto& infos = (*file)->tensors();
  std::vector<std::string> names;
  for (const TensorInfo& t : infos) names.push_back(t.name);
  EXPECT_THAT(names, ElementsAre("a.half", "bytes", "ids", "layer.weight",
                                 "nothing", "packed"));
  for (const TensorToWrite& want : tensors) {
    SCOPED_TRACE(want.name);
    const TensorInfo* got = (*file)->Find(want.name);
    ASSERT_NE(got, nullptr);
    EXPECT_EQ(got->name, want.name);
    EXPECT_EQ(got->dtype, want.dtype);
    EXPECT_EQ(got->shape, want.shape);
    EXPECT_EQ(got->size, want.data.size());
    EXPECT_EQ(AsString((*file)->Data(*got)), AsString(want.data));
  }
  EXPECT_EQ((*file)->Find("missing"), nullptr);
  EXPECT_EQ((*file)->metadata(), metadata);

  const TensorInfo* weight = (*file)->Find("layer.weight");
  ASSERT_NE(weight, nullptr);
  EXPECT_EQ(weight->elements(), 6);
  EXPECT_EQ(weight->ShapeString(), "[2, 3]");
  EXPECT_EQ((*file)->Find("nothing")->elements(), 0);
  EXPECT_TRUE((*file)->Data(*(*file)->Find("nothing")).empty());

  // The data section starts 8-byte aligned and holds the tensors in the order
  // they were given.
  const std::string raw = ReadFileBytes(path);
  ASSERT_GE(raw.size(), 8u);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) {
    header_len = (header_len << 8) | static_cast<uint8_t>(raw[i]);
  }
  EXPECT_EQ((8 + header_len) % 8, 0u);
  std::string data;
  for (const TensorToWrite& t : tensors) data += AsString(t.data);
  ASSERT_EQ(raw.size(), 8 + header_len + data.size());
  EXPECT_EQ(raw.substr(8 + header_len), data);

  // Parse of the same bytes agrees with Open.
  auto parsed = SafetensorsFile::Parse(raw);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ((*parsed)->tensors().size(), infos.size());
  EXPECT_EQ(AsString((*parsed)->Data(*(*parsed)->Find("ids"))),
            AsString(BytesOf(fx.i64)));
  EXPECT_EQ((*parsed)->metadata(), metadata);
}

TEST(SafetensorsTest, NoMetadataAndNoTensors) {
  ScopedTempDir dir("safetensors_test");
  const std::string path = dir.File("empty.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {}, {}).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->tensors().empty());
  EXPECT_TRUE((*file)->metadata().empty());
}

TEST(SafetensorsTest, ParsesHandBuiltFile) {
  // Hand-built with a header that is not padded: Parse accepts any length.
  const std::string header =
      absl::StrCat("{", F32Entry("b", 1, 4), ",", F32Entry("a", 1, 0), "}");
  const float values[2] = {7.0f, -1.0f};
  auto file = SafetensorsFile::Parse(MakeFile(
      header, absl::string_view(reinterpret_cast<const char*>(values), 8)));
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->tensors().size(), 2u);
  float b = 0;
  const auto data = (*file)->Data(*(*file)->Find("b"));
  ASSERT_EQ(data.size(), 4u);
  std::memcpy(&b, data.data(), 4);
  EXPECT_EQ(b, -1.0f);
}

// ---------------------------------------------------------------------------
// Malformed files: each is INVALID_ARGUMENT naming the fault.

TEST(SafetensorsMalformedTest, ShorterThanEightBytes) {
  EXPECT_THAT(ParseError(""), HasSubstr("8-byte header length"));
  EXPECT_THAT(ParseError("abc"), AllOf(HasSubstr("file is 3 bytes"),
                                       HasSubstr("8-byte header length")));
  EXPECT_THAT(ParseError(std::string(7, '\0')), HasSubstr("file is 7 bytes"));
}

TEST(SafetensorsMalformedTest, HeaderLongerThanFile) {
  EXPECT_THAT(ParseError(MakeFileWithLength(100, "{}")),
              AllOf(HasSubstr("header length 100"),
                    HasSubstr("past the end of the file")));
  // A length that would overflow any naive "8 + length" arithmetic.
  EXPECT_THAT(ParseError(MakeFileWithLength(UINT64_MAX, "{}")),
              HasSubstr("past the end of the file"));
  EXPECT_THAT(ParseError(MakeFileWithLength(UINT64_MAX - 7, "{}")),
              HasSubstr("past the end of the file"));
  // Just one byte too many.
  EXPECT_THAT(ParseError(MakeFileWithLength(3, "{}")),
              HasSubstr("header length 3"));
}

TEST(SafetensorsMalformedTest, HeaderNotJson) {
  EXPECT_THAT(ParseError(MakeFile("{\"a\": ", "")),
              HasSubstr("not valid JSON"));
  EXPECT_THAT(ParseError(MakeFile("", "")), HasSubstr("not valid JSON"));
  EXPECT_THAT(ParseError(MakeFile("{} trailing", "")),
              HasSubstr("not valid JSON"));
  EXPECT_THAT(ParseError(MakeFile("{\"\xff\xfe\": 1}", "")),
              HasSubstr("not valid JSON"));
}

TEST(SafetensorsMalformedTest, HeaderNotObject) {
  EXPECT_THAT(ParseError(MakeFile("[1, 2]", "")),
              AllOf(HasSubstr("JSON object"), HasSubstr("array")));
  EXPECT_THAT(ParseError(MakeFile("42", "")), HasSubstr("JSON object"));
  EXPECT_THAT(ParseError(MakeFile("\"x\"", "")), HasSubstr("JSON object"));
  EXPECT_THAT(ParseError(MakeFile("null", "")), HasSubstr("JSON object"));
}

TEST(SafetensorsMalformedTest, EntryNotObject) {
  EXPECT_THAT(ParseError(MakeFile("{\"w\": [1, 2]}", "")),
              AllOf(HasSubstr("'w'"), HasSubstr("expected an object")));
}

TEST(SafetensorsMalformedTest, UnknownDtype) {
  EXPECT_THAT(
      ParseError(MakeFile("{\"my.tensor\":{\"dtype\":\"F12\",\"shape\":[1],"
                          "\"data_offsets\":[0,4]}}",
                          std::string(4, '\0'))),
      AllOf(HasSubstr("'my.tensor'"), HasSubstr("unknown dtype"),
            HasSubstr("F12")));
  // dtype names are case-sensitive and must be strings.
  EXPECT_THAT(ParseError(MakeFile("{\"t\":{\"dtype\":\"f32\",\"shape\":[1],"
                                  "\"data_offsets\":[0,4]}}",
                                  std::string(4, '\0'))),
              AllOf(HasSubstr("'t'"), HasSubstr("unknown dtype 'f32'")));
  EXPECT_THAT(ParseError(MakeFile("{\"t\":{\"dtype\":3,\"shape\":[1],"
                                  "\"data_offsets\":[0,4]}}",
                                  std::string(4, '\0'))),
              AllOf(HasSubstr("'t'"), HasSubstr("dtype")));
}

TEST(SafetensorsMalformedTest, BadShape) {
  const std::string data(8, '\0');
  EXPECT_THAT(
      ParseError(MakeFile("{\"neg\":{\"dtype\":\"F32\",\"shape\":[-1,-2],"
                          "\"data_offsets\":[0,8]}}",
                          data)),
      AllOf(HasSubstr("'neg'"), HasSubstr("shape"),
            HasSubstr("non-negative integers"), HasSubstr("-1")));
  EXPECT_THAT(
      ParseError(MakeFile("{\"frac\":{\"dtype\":\"F32\",\"shape\":[2.5],"
                          "\"data_offsets\":[0,8]}}",
                          data)),
      AllOf(HasSubstr("'frac'"), HasSubstr("non-negative integers"),
            HasSubstr("2.5")));
  EXPECT_THAT(
      ParseError(MakeFile("{\"str\":{\"dtype\":\"F32\",\"shape\":[\"2\"],"
                          "\"data_offsets\":[0,8]}}",
                          data)),
      AllOf(HasSubstr("'str'"), HasSubstr("non-negative integers")));
  EXPECT_THAT(
      ParseError(MakeFile("{\"obj\":{\"dtype\":\"F32\",\"shape\":{\"a\":2},"
                          "\"data_offsets\":[0,8]}}",
                          data)),
      AllOf(HasSubstr("'obj'"), HasSubstr("shape")));
  // A shape whose element count overflows 64 bits.
  EXPECT_THAT(
      ParseError(MakeFile("{\"huge\":{\"dtype\":\"F32\",\"shape\":[4294967296,"
                          "4294967296,4294967296],\"data_offsets\":[0,8]}}",
                          data)),
      AllOf(HasSubstr("'huge'"), HasSubstr("too large")));
}

TEST(SafetensorsMalformedTest, OffsetsPastDataSection) {
  EXPECT_THAT(
      ParseError(MakeFile(absl::StrCat("{", F32Entry("w", 2, 0), "}"),
                          std::string(4, '\0'))),
      AllOf(HasSubstr("'w'"), HasSubstr("past the data section of 4 bytes")));
  // Offsets beyond int64 and far beyond the file.
  EXPECT_THAT(ParseError(MakeFile("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],"
                                  "\"data_offsets\":[18446744073709551614,"
                                  "18446744073709551615]}}",
                                  "")),
              AllOf(HasSubstr("'w'"), HasSubstr("data_offsets")));
  EXPECT_THAT(ParseError(MakeFile("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],"
                                  "\"data_offsets\":[9223372036854775807,"
                                  "9223372036854775808]}}",
                                  "")),
              AllOf(HasSubstr("'w'"), HasSubstr("data_offsets")));
}

TEST(SafetensorsMalformedTest, BadDataOffsetsForm) {
  const std::string data(4, '\0');
  for (const char* offsets : {"[0]", "[0,4,8]", "4", "[-4,0]", "[0,\"4\"]"}) {
    SCOPED_TRACE(offsets);
    EXPECT_THAT(
        ParseError(MakeFile(absl::StrCat("{\"w\":{\"dtype\":\"F32\",\"shape\":"
                                         "[1],\"data_offsets\":",
                                         offsets, "}}"),
                            data)),
        AllOf(HasSubstr("'w'"), HasSubstr("data_offsets")));
  }
}

TEST(SafetensorsMalformedTest, OverlappingSpans) {
  const std::string header = absl::StrCat("{", F32Entry("first", 2, 0), ",",
                                          F32Entry("second", 2, 4), "}");
  EXPECT_THAT(ParseError(MakeFile(header, std::string(12, '\0'))),
              AllOf(HasSubstr("'second'"), HasSubstr("overlaps"),
                    HasSubstr("'first'")));
  // Two tensors on the very same span.
  const std::string same =
      absl::StrCat("{", F32Entry("x", 1, 0), ",", F32Entry("y", 1, 0), "}");
  EXPECT_THAT(ParseError(MakeFile(same, std::string(4, '\0'))),
              HasSubstr("overlaps"));
}

TEST(SafetensorsMalformedTest, HoleBetweenSpans) {
  const std::string header =
      absl::StrCat("{", F32Entry("a", 1, 0), ",", F32Entry("b", 1, 8), "}");
  EXPECT_THAT(ParseError(MakeFile(header, std::string(12, '\0'))),
              AllOf(HasSubstr("'b'"), HasSubstr("hole"),
                    HasSubstr("starts at byte 8")));
  // A hole at the start.
  EXPECT_THAT(
      ParseError(MakeFile(absl::StrCat("{", F32Entry("late", 1, 4), "}"),
                          std::string(8, '\0'))),
      AllOf(HasSubstr("'late'"), HasSubstr("hole")));
}

TEST(SafetensorsMalformedTest, TrailingBytesAfterLastTensor) {
  EXPECT_THAT(ParseError(MakeFile(absl::StrCat("{", F32Entry("a", 1, 0), "}"),
                                  std::string(6, '\0'))),
              AllOf(HasSubstr("cover 4 bytes"), HasSubstr("has 6")));
  EXPECT_THAT(ParseError(MakeFile("{}", "x")), HasSubstr("cover 0 bytes"));
}

TEST(SafetensorsMalformedTest, SizeDoesNotMatchShape) {
  EXPECT_THAT(
      ParseError(MakeFile("{\"mismatch\":{\"dtype\":\"F32\",\"shape\":[3],"
                          "\"data_offsets\":[0,8]}}",
                          std::string(8, '\0'))),
      AllOf(HasSubstr("'mismatch'"), HasSubstr("needs 12 bytes"),
            HasSubstr("span 8")));
  EXPECT_THAT(ParseError(MakeFile("{\"h\":{\"dtype\":\"F16\",\"shape\":[2,2],"
                                  "\"data_offsets\":[0,16]}}",
                                  std::string(16, '\0'))),
              AllOf(HasSubstr("'h'"), HasSubstr("needs 8 bytes")));
}

TEST(SafetensorsMalformedTest, DuplicateKey) {
  const std::string dup =
      absl::StrCat("{", F32Entry("w", 1, 0), ",", F32Entry("w", 1, 0), "}");
  EXPECT_THAT(ParseError(MakeFile(dup, std::string(4, '\0'))),
              AllOf(HasSubstr("'w'"), HasSubstr("twice")));
  // A duplicate field inside an entry.
  EXPECT_THAT(ParseError(MakeFile("{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F32\","
                                  "\"shape\":[1],\"data_offsets\":[0,4]}}",
                                  std::string(4, '\0'))),
              AllOf(HasSubstr("'dtype'"), HasSubstr("twice")));
  // A duplicate inside __metadata__.
  EXPECT_THAT(
      ParseError(MakeFile("{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", "")),
      AllOf(HasSubstr("'k'"), HasSubstr("twice")));
}

TEST(SafetensorsMalformedTest, SameFieldNamesInSiblingEntriesAreFine) {
  // Guards the duplicate-key detector against false positives.
  const std::string header =
      absl::StrCat("{\"__metadata__\":{\"dtype\":\"x\"},", F32Entry("a", 1, 0),
                   ",", F32Entry("b", 1, 4), "}");
  auto file = SafetensorsFile::Parse(MakeFile(header, std::string(8, '\0')));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->tensors().size(), 2u);
  EXPECT_EQ((*file)->metadata().at("dtype"), "x");
}

TEST(SafetensorsMalformedTest, MetadataNotStrings) {
  EXPECT_THAT(ParseError(MakeFile("{\"__metadata__\":{\"format\":1}}", "")),
              AllOf(HasSubstr("__metadata__"), HasSubstr("'format'"),
                    HasSubstr("must be a string")));
  EXPECT_THAT(
      ParseError(MakeFile(
          "{\"__metadata__\":{\"ok\":\"x\",\"nested\":{\"a\":\"b\"}}}", "")),
      AllOf(HasSubstr("'nested'"), HasSubstr("must be a string")));
  EXPECT_THAT(ParseError(MakeFile("{\"__metadata__\":[\"a\"]}", "")),
              AllOf(HasSubstr("__metadata__"), HasSubstr("object")));
}

TEST(SafetensorsMalformedTest, UnknownField) {
  EXPECT_THAT(ParseError(MakeFile("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],"
                                  "\"data_offsets\":[0,4],\"offsets\":[0,4]}}",
                                  std::string(4, '\0'))),
              AllOf(HasSubstr("'w'"), HasSubstr("unknown field 'offsets'")));
}

TEST(SafetensorsMalformedTest, MissingField) {
  EXPECT_THAT(
      ParseError(MakeFile("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}",
                          std::string(4, '\0'))),
      AllOf(HasSubstr("'w'"), HasSubstr("shape")));
  EXPECT_THAT(ParseError(MakeFile("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}",
                                  std::string(4, '\0'))),
              AllOf(HasSubstr("'w'"), HasSubstr("data_offsets")));
  EXPECT_THAT(
      ParseError(MakeFile("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}",
                          std::string(4, '\0'))),
      AllOf(HasSubstr("'w'"), HasSubstr("dtype")));
}

TEST(SafetensorsMalformedTest, OffsetsEndBeforeBegin) {
  EXPECT_THAT(ParseError(MakeFile("{\"back\":{\"dtype\":\"U8\",\"shape\":[4],"
                                  "\"data_offsets\":[8,4]}}",
                                  std::string(8, '\0'))),
              AllOf(HasSubstr("'back'"), HasSubstr("[8, 4]"),
                    HasSubstr("end before they begin")));
}

TEST(SafetensorsMalformedTest, OpenRejectsMalformedFileOnDisk) {
  ScopedTempDir dir("safetensors_test");
  const std::string path = dir.File("bad.safetensors");
  WriteBytes(path, MakeFile(absl::StrCat("{", F32Entry("w", 3, 0), "}"),
                            std::string(4, '\0')));
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(file.status().message()),
              AllOf(HasSubstr("'w'"), HasSubstr("past the data section"),
                    HasSubstr(path)));

  // An empty file (nothing to map) and a truncated header.
  const std::string empty = dir.File("empty.safetensors");
  WriteBytes(empty, "");
  auto empty_file = SafetensorsFile::Open(empty);
  ASSERT_FALSE(empty_file.ok());
  EXPECT_EQ(empty_file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(empty_file.status().message()),
              HasSubstr("file is 0 bytes"));

  const std::string truncated = dir.File("truncated.safetensors");
  WriteBytes(truncated, MakeFileWithLength(1000, "{\"w\":"));
  auto truncated_file = SafetensorsFile::Open(truncated);
  ASSERT_FALSE(truncated_file.ok());
  EXPECT_EQ(truncated_file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(truncated_file.status().message()),
              HasSubstr("header length 1000"));
}

TEST(SafetensorsTest, OpenMissingFileIsNotFound) {
  ScopedTempDir dir("safetensors_test");
  const std::string path = dir.File("does-not-exist.safetensors");
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(file.status().message()), HasSubstr(path));
}

TEST(SafetensorsTest, OpenDirectoryIsInvalidArgument) {
  ScopedTempDir dir("safetensors_test");
  auto file = SafetensorsFile::Open(dir.path());
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(file.status().message()),
              HasSubstr("not a regular file"));
}

// ---------------------------------------------------------------------------
// WriteSafetensors.

void ExpectWriteRejected(const std::vector<TensorToWrite>& tensors,
                         absl::string_view fault) {
  ScopedTempDir dir("safetensors_test");
  const std::string path = dir.File("out.safetensors");
  absl::Status status = WriteSafetensors(path, tensors, {});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(std::string(fault)));
  EXPECT_FALSE(Exists(path));
  EXPECT_TRUE(ListDir(dir.path()).empty()) << "left a temporary file behind";
}

TEST(WriteSafetensorsTest, RejectsDuplicateNames) {
  const std::vector<float> v = {1, 2};
  ExpectWriteRejected({{"w", DType::kF32, {2}, BytesOf(v)},
                       {"w", DType::kF32, {2}, BytesOf(v)}},
                      "'w' given twice");
}

TEST(WriteSafetensorsTest, RejectsSizeMismatch) {
  const std::vector<float> v = {1, 2, 3};
  ExpectWriteRejected({{"w", DType::kF32, {2}, BytesOf(v)}}, "'w'");
  ExpectWriteRejected({{"w", DType::kF16, {3}, BytesOf(v)}}, "needs 6 bytes");
  ExpectWriteRejected({{"w", DType::kF32, {-1, -3}, BytesOf(v)}}, "'w'");
}

TEST(WriteSafetensorsTest, RejectsReservedAndEmptyNames) {
  const std::vector<float> v = {1};
  ExpectWriteRejected({{"__metadata__", DType::kF32, {1}, BytesOf(v)}},
                      "__metadata__");
  ExpectWriteRejected({{"", DType::kF32, {1}, BytesOf(v)}},
                      "invalid tensor name");
}

TEST(WriteSafetensorsTest, ReplacesExistingFile) {
  ScopedTempDir dir("safetensors_test");
  const std::string path = dir.File("model.safetensors");
  const std::vector<float> a = {1, 2};
  const std::vector<uint8_t> b = {9, 8, 7};
  ASSERT_TRUE(WriteSafetensors(path, {{"a", DType::kF32, {2}, BytesOf(a)}},
                               {{"v", "1"}})
                  .ok());
  ASSERT_TRUE(
      WriteSafetensors(path, {{"b", DType::kU8, {3}, BytesOf(b)}}, {{"v", "2"}})
          .ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->tensors().size(), 1u);
  EXPECT_EQ((*file)->tensors()[0].name, "b");
  EXPECT_EQ(AsString((*file)->Data((*file)->tensors()[0])),
            AsString(BytesOf(b)));
  EXPECT_EQ((*file)->metadata().at("v"), "2");
  EXPECT_THAT(ListDir(dir.path()), ElementsAre("model.safetensors"));
}

TEST(WriteSafetensorsTest, AfterChunkSeesProgress) {
  ScopedTempDir dir("safetensors_test");
  const std::string path = dir.File("model.safetensors");
  const std::vector<uint8_t> big((5 << 20) / 2, 0x5A);  // 2.5 MiB
  std::vector<size_t> progress;
  WriteOptions options;
  options.after_chunk = [&](size_t written) { progress.push_back(written); };
  ASSERT_TRUE(
      WriteSafetensors(
          path,
          {{"x", DType::kU8, {static_cast<int64_t>(big.size())}, BytesOf(big)}},
          {}, options)
          .ok());
  EXPECT_THAT(progress, ElementsAre(1u << 20, 2u << 20, big.size()));
}

TEST(WriteSafetensorsTest, InterruptedWriteKeepsPreviousFile) {
  ScopedTempDir dir("safetensors_test");
  const std::string path = dir.File("model.safetensors");
  const std::vector<float> a = {1.0f, 2.0f, 3.0f, 4.0f};
  const std::vector<uint16_t> a2 = {7, 8};
  ASSERT_TRUE(WriteSafetensors(path,
                               {{"a", DType::kF32, {2, 2}, BytesOf(a)},
                                {"a2", DType::kU16, {2}, BytesOf(a2)}},
                               {{"version", "A"}})
                  .ok());
  const std::string before = ReadFileBytes(path);
  ASSERT_FALSE(before.empty());

  // 8 MiB of different tensors; the child dies after 3 MiB of them.
  const std::vector<uint32_t> big((8 << 20) / 4, 0xA5A5A5A5u);
  const std::vector<uint8_t> other(1000, 0x11);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0) << "fork failed";
  if (pid == 0) {
    WriteOptions options;
    options.after_chunk = [](size_t written) {
      if (written >= (3u << 20)) raise(SIGKILL);
    };
    (void)WriteSafetensors(
        path,
        {{"big", DType::kU32, {static_cast<int64_t>(big.size())}, BytesOf(big)},
         {"other", DType::kU8, {1000}, BytesOf(other)}},
        {{"version", "B"}}, options);
    _exit(0);  // Only reached if the write was not interrupted.
  }
  int wstatus = 0;
  ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(wstatus)) << "child exited normally: the write was "
                                       "not interrupted";
  EXPECT_EQ(WTERMSIG(wstatus), SIGKILL);

  EXPECT_EQ(ReadFileBytes(path), before);
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<std::string> names;
  for (const TensorInfo& t : (*file)->tensors()) names.push_back(t.name);
  EXPECT_THAT(names, ElementsAre("a", "a2"));
  EXPECT_EQ(AsString((*file)->Data(*(*file)->Find("a"))), AsString(BytesOf(a)));
  EXPECT_EQ(AsString((*file)->Data(*(*file)->Find("a2"))),
            AsString(BytesOf(a2)));
  EXPECT_EQ((*file)->metadata().at("version"), "A");
  EXPECT_EQ((*file)->Find("big"), nullptr);

  // The half-written temporary file sits beside the target, never on it.
  const std::vector<std::string> entries = ListDir(dir.path());
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0], "model.safetensors");
  EXPECT_THAT(entries[1], HasSubstr("model.safetensors.tmp."));
}

TEST(WriteSafetensorsTest, FailedWriteCreatesNothing) {
  ScopedTempDir dir("safetensors_test");
  const std::vector<float> v = {1, 2};
  const std::string missing_dir = dir.File("no/such/dir/model.safetensors");
  absl::Status status =
      WriteSafetensors(missing_dir, {{"w", DType::kF32, {2}, BytesOf(v)}}, {});
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_THAT(std::string(status.message()),
              HasSubstr(dir.File("no/such/dir")));
  EXPECT_FALSE(Exists(missing_dir));
  EXPECT_TRUE(ListDir(dir.path()).empty());

  // The rename fails when the target is a non-empty folder: the error comes
  // back, the folder is untouched and the temporary file is removed.
  const std::string target = dir.File("taken");
  std::filesystem::create_directory(target);
  WriteBytes(target + "/keep", "x");
  status = WriteSafetensors(target, {{"w", DType::kF32, {2}, BytesOf(v)}}, {});
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(std::string(status.message()), HasSubstr(target));
  EXPECT_TRUE(std::filesystem::is_directory(target));
  EXPECT_THAT(ListDir(target), ElementsAre("keep"));
  EXPECT_THAT(ListDir(dir.path()), ElementsAre("taken"));
}

}  // namespace
}  // namespace qlinear
