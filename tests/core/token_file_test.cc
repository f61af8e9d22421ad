#include "core/token_file.h"

#include <fstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace qlinear {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

TEST(TokenFileTest, NamedAndUnnamedTokensCommentsAndBlankLines) {
  auto tokens = ParseTokens(
      "# tokens of the data plane\n"
      "\n"
      "app-frontend:3q2+7wzVv4Jx0bC8Yd1uLk\r\n"
      "   Zm9yIHRoZSBiYXRjaCBqb2I=  \n"
      "\t# indented comment\n"
      "ci@build.1:abcdefghijklmnop_~-./",
      "data.tokens");
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  ASSERT_EQ(tokens->size(), 3u);
  EXPECT_EQ((*tokens)[0].name, "app-frontend");
  EXPECT_EQ((*tokens)[0].token, "3q2+7wzVv4Jx0bC8Yd1uLk");
  EXPECT_EQ((*tokens)[0].line, 3);
  EXPECT_EQ((*tokens)[1].name, "");
  EXPECT_EQ((*tokens)[1].token, "Zm9yIHRoZSBiYXRjaCBqb2I=");
  EXPECT_EQ((*tokens)[1].line, 4);
  EXPECT_EQ((*tokens)[2].name, "ci@build.1");
  EXPECT_EQ((*tokens)[2].token, "abcdefghijklmnop_~-./");
  EXPECT_EQ((*tokens)[2].line, 6);
}

// Each bad line names the file and the line, and never a byte of the line.
TEST(TokenFileTest, BadLinesNameFileAndLineButNotTheSecret) {
  struct Case {
    std::string text;
    int line;
    std::string why;
  };
  const std::string secret = "Sup3rSecretValue";  // 16 characters
  for (const Case& c : std::vector<Case>{
           {"# ok\nshort\n", 2, "the token has 5 characters"},
           {"name:" + secret + "!", 1, "character outside the set at column 22"},
           {":" + secret, 1, "the name has 0 characters"},
           {std::string(65, 'n') + ":" + secret, 1, "the name has 65 characters"},
           {"bad name:" + secret, 1, "the name has a character outside the set at column 4"},
           {"x:" + std::string(513, 'a'), 1, "the token has 513 characters"},
           {secret + "\n" + "other:" + secret, 2, "the token of line 1 again"},
       }) {
    auto tokens = ParseTokens(c.text, "/etc/qlinear/data.tokens");
    ASSERT_FALSE(tokens.ok()) << c.text;
    EXPECT_EQ(tokens.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(tokens.status().message(),
                AllOf(HasSubstr("'/etc/qlinear/data.tokens' line " + std::to_string(c.line)),
                      HasSubstr(c.why), Not(HasSubstr(secret)), Not(HasSubstr("short"))))
        << c.text;
  }
}

TEST(TokenFileTest, AFileWithoutTokensIsAnError) {
  auto tokens = ParseTokens("# nothing yet\n\n", "admin.tokens");
  ASSERT_FALSE(tokens.ok());
  EXPECT_THAT(tokens.status().message(), HasSubstr("'admin.tokens' holds no token (3 lines"));
}

TEST(TokenFileTest, ReadTokenFileNamesAnUnreadableFile) {
  ScopedTempDir dir("token_file");
  auto missing = ReadTokenFile(dir.File("missing.tokens"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(),
              AllOf(HasSubstr(dir.File("missing.tokens")), HasSubstr("No such file")));
  auto directory = ReadTokenFile(dir.path());
  ASSERT_FALSE(directory.ok());
  EXPECT_THAT(directory.status().message(), HasSubstr("is a directory"));
  std::ofstream(dir.File("one.tokens")) << "ops:0123456789abcdef\n";
  auto one = ReadTokenFile(dir.File("one.tokens"));
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ((*one)[0].name, "ops");
}

}  // namespace
}  // namespace qlinear
