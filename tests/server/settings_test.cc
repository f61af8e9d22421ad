// The one table of settings: flags, environment, --help and docs/api.md all
// come from it and agree.
#include "server/settings.h"

#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <tuple>
#include <map>
#include <set>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "tests/test_util.h"

namespace qlinear {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

struct Env {
  std::map<std::string, std::string> vars;
  const char* operator()(const char* name) const {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  }
};

absl::StatusOr<Settings> Parse(std::vector<std::string> args, const Env& env = {}) {
  args.insert(args.begin(), "qlinear-server");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  return Settings::Parse(static_cast<int>(argv.size()), argv.data(), std::cref(env));
}

TEST(SettingsTest, DefaultsFlagsAndTheEnvironment) {
  auto s = Parse({});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->String("listen"), "127.0.0.1:50051");
  EXPECT_EQ(s->Int("max-batch-rows"), 128);
  EXPECT_EQ(s->Int("max-memory-mb"), DefaultMemoryMb());
  EXPECT_FALSE(s->IsSet("bits"));
  EXPECT_TRUE(s->List("model").empty());
  EXPECT_EQ(s->Source("threads"), "default");
  EXPECT_EQ(s->String("precisions"), "exact,int8,bf16");
  s = Parse({}, Env{{{"QLINEAR_PRECISIONS", "exact,bf16"}}});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->String("precisions"), "exact,bf16");
  EXPECT_EQ(s->Source("precisions"), "QLINEAR_PRECISIONS");

  Env env{{{"QLINEAR_MAX_BATCH_ROWS", "7"}, {"QLINEAR_THREADS", "3"},
           {"QLINEAR_MODEL", "a,b/c,"}, {"QLINEAR_STATE_DIR", "/s"}}};
  s = Parse({"--threads", "2", "--max-queue-rows=9"}, env);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->Int("threads"), 2);  // the flag wins over QLINEAR_THREADS
  EXPECT_EQ(s->Source("threads"), "--threads");
  EXPECT_EQ(s->Int("max-batch-rows"), 7);
  EXPECT_EQ(s->Source("max-batch-rows"), "QLINEAR_MAX_BATCH_ROWS");
  EXPECT_EQ(s->Int("max-queue-rows"), 9);
  EXPECT_EQ(s->List("model"), (std::vector<std::string>{"a", "b/c"}));
  EXPECT_EQ(s->String("state-dir"), "/s");

  s = Parse({"--model", "x", "--model=y"}, env);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->List("model"), (std::vector<std::string>{"x", "y"}));
}

TEST(SettingsTest, BadInputNamesTheFlagTheValueAndWhatIsAllowed) {
  struct Case {
    std::vector<std::string> args;
    Env env;
    std::vector<std::string> want;
  };
  const std::vector<Case> cases = {
      {{"--listen", "0.0.0.0:abc"}, {}, {"--listen", "'0.0.0.0:abc'", "HOST:PORT"}},
      {{"--listen", "0.0.0.0:70000"}, {}, {"--listen", "65535"}},
      {{"--max-batch-rows", "0"}, {}, {"--max-batch-rows", "'0'", "[1, 1048576]"}},
      {{"--threads", "two"}, {}, {"--threads", "'two'", "integer"}},
      {{"--mode", "int3"}, {}, {"--mode", "'int3'", "affine, mxfp4, mxfp8, nvfp4"}},
      {{"--nope"}, {}, {"unknown flag --nope"}},
      {{"--threads"}, {}, {"--threads needs a value"}},
      {{"--threads", "1", "--threads", "2"}, {}, {"--threads was given twice"}},
      {{"stray"}, {}, {"unexpected argument 'stray'"}},
      {{"--precisions", "exact,fast"}, {}, {"--precisions", "'fast'", "exact, int8, bf16"}},
      {{"--precisions", "int8,int8"}, {}, {"--precisions", "int8 twice"}},
      {{"--precisions="}, {}, {"--precisions", "exact, int8, bf16"}},
      {{}, Env{{{"QLINEAR_PRECISIONS", "EXACT"}}}, {"QLINEAR_PRECISIONS", "'EXACT'"}},
      {{}, Env{{{"QLINEAR_MAX_QUEUE_ROWS", "-5"}}}, {"QLINEAR_MAX_QUEUE_ROWS", "'-5'"}},
      // The kernels' strategy, once read from the environment only: a
      // misspelt value was ignored.
      {{}, Env{{{"QLINEAR_KERNEL", "paenl"}}}, {"QLINEAR_KERNEL", "'paenl'", "auto, register, panel"}},
      {{"--kernel", "gemm"}, {}, {"--kernel", "'gemm'", "auto, register, panel"}},
  };
  for (const Case& c : cases) {
    auto s = Parse(c.args, c.env);
    ASSERT_FALSE(s.ok()) << c.args.size();
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    for (const std::string& w : c.want) EXPECT_THAT(s.status().message(), HasSubstr(w));
  }
}

TEST(SettingsTest, EveryEnvironmentNameHasOneSetting) {
  std::set<std::string> names, envs;
  for (const SettingSpec& spec : ServerSettingSpecs()) {
    EXPECT_TRUE(names.insert(spec.name).second) << spec.name;
    EXPECT_TRUE(envs.insert(EnvName(spec)).second) << EnvName(spec);
  }
  EXPECT_EQ(EnvName(ServerSettingSpecs()[2]), "QLINEAR_MAX_BATCH_ROWS");
  EXPECT_TRUE(envs.count("QLINEAR_SIMD"));  // the kernels' cap, one meaning
  EXPECT_TRUE(envs.count("QLINEAR_KERNEL"));  // the kernels' strategy, likewise
}

TEST(SettingsTest, HelpAndDocsComeFromTheTable) {
  const std::string help = HelpText();
  for (const SettingSpec& spec : ServerSettingSpecs()) {
    EXPECT_THAT(help, AllOf(HasSubstr(absl::StrCat("--", spec.name)), HasSubstr(EnvName(spec))));
  }
  const std::string doc = ReadFileBytes(QLINEAR_SOURCE_DIR "/docs/api.md");
  ASSERT_FALSE(doc.empty()) << "docs/api.md";
  const std::string open = "<!-- settings-table -->\n", close = "<!-- /settings-table -->";
  const size_t from = doc.find(open), to = doc.find(close);
  ASSERT_NE(from, std::string::npos) << "docs/api.md lacks " << open;
  ASSERT_NE(to, std::string::npos);
  EXPECT_EQ(doc.substr(from + open.size(), to - from - open.size()), FlagsMarkdown())
      << "docs/api.md's settings table differs from the table in server/settings.cc; paste "
         "FlagsMarkdown() (qlinear-server --help-markdown) between the markers";
}

// The real binary: bad usage is exit 2 and one line; an address that
// cannot be bound is exit 1 saying why.
TEST(SettingsTest, TheServerExitsTwoForBadUsageAndOneForAnUnusableAddress) {
  const std::string log = ::testing::TempDir() + "settings_test.log";
  auto run = [&](const std::string& args) {
    const int status =
        std::system(absl::StrCat(QLINEAR_SERVER_BINARY, " ", args, " >", log, " 2>&1").c_str());
    return std::make_pair(WIFEXITED(status) ? WEXITSTATUS(status) : -1, ReadFileBytes(log));
  };
  auto [code, out] = run("--listen 0.0.0.0:abc");
  EXPECT_EQ(code, 2);
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  EXPECT_THAT(out, AllOf(HasSubstr("--listen"), HasSubstr("'0.0.0.0:abc'"), HasSubstr("HOST:PORT")));
  std::tie(code, out) = run("--precisions exact,fp32");
  EXPECT_EQ(code, 2);
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  EXPECT_THAT(out, AllOf(HasSubstr("--precisions"), HasSubstr("'fp32'")));
  std::tie(code, out) = run("--bogus 1");
  EXPECT_EQ(code, 2);
  EXPECT_THAT(out, HasSubstr("unknown flag --bogus"));
  // 192.0.2.1 (TEST-NET-1) is no address of this machine: bind() refuses it.
  std::tie(code, out) = run("--listen 192.0.2.1:50051 --metrics-listen= --state-dir " +
                            ::testing::TempDir() + "settings_test_state");
  EXPECT_EQ(code, 1);
  EXPECT_THAT(out, AllOf(HasSubstr("cannot listen on '192.0.2.1:50051'"),
                         HasSubstr("Cannot assign requested address")));
}

}  // namespace
}  // namespace qlinear
