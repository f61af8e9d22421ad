// Layer-name rules and how client strings are quoted (core/names.h).
#include "core/names.h"

#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace qlinear {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(NamesTest, MlxModulePathsAndPlainNamesAreValid) {
  for (const char* name : {"demo", "model.layers.0.self_attn.q_proj", "lm_head",
                           "a/b:c-d_e.f", "L0"}) {
    EXPECT_TRUE(ValidateLayerName(name).ok()) << name;
  }
  EXPECT_TRUE(ValidateLayerName(std::string(256, 'x')).ok());
}

TEST(NamesTest, RefusesEmptyLongAndControlBytesNamingThem) {
  absl::Status empty = ValidateLayerName("");
  EXPECT_EQ(empty.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(empty.message(), HasSubstr("empty"));

  absl::Status long_name = ValidateLayerName(std::string(257, 'x'));
  EXPECT_EQ(long_name.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(long_name.message(), HasSubstr("257 bytes"));

  absl::Status evil = ValidateLayerName("ab\n\x1b[31mred");
  EXPECT_EQ(evil.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(evil.message(), HasSubstr("byte 0x0a at offset 2"));
  EXPECT_THAT(evil.message(), Not(HasSubstr("\n")));
  EXPECT_THAT(evil.message(), Not(HasSubstr("\x1b")));
  EXPECT_EQ(ValidateLayerName("a b").code(), absl::StatusCode::kInvalidArgument);
}

// The 40 MB name: the message stays short and says how long it was.
TEST(NamesTest, FortyMegabyteNameMakesAShortMessage) {
  const std::string name(40 << 20, 'n');
  absl::Status s = ValidateLayerName(name);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_LT(s.message().size(), 300u);
  EXPECT_THAT(s.message(), HasSubstr("41943040 bytes"));
}

TEST(NamesTest, QuoteForMessageCutsAt64BytesAndEscapes) {
  EXPECT_EQ(QuoteForMessage("demo"), "'demo'");
  EXPECT_EQ(QuoteForMessage("a\nb"), "'a\\nb'");
  const std::string q = QuoteForMessage(std::string(1000, 'z'));
  EXPECT_EQ(q, "'" + std::string(64, 'z') + "'... (1000 bytes)");
}

}  // namespace
}  // namespace qlinear
