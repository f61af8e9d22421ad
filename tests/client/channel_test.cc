// The one channel factory (client/channel.h) and the CLI's connection
// flags (client/channel_flags.h). Calls over real channels, TLS and tokens
// are in tests/server/tls_test.cc.
#include "client/channel.h"

#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "client/channel_flags.h"
#include "client/client.h"
#include "server/server.h"
#include "tests/test_util.h"
#include "tests/tls_certs.h"

namespace qlinear {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kToken[] = "tokenTOKENtoken0123456";

absl::StatusOr<ChannelOptions> FromArgs(std::vector<std::string> args,
                                        std::map<std::string, std::string> env = {}) {
  args.insert(args.begin(), {"qlinear", "list"});
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  auto flags = Flags::Parse(static_cast<int>(argv.size()), argv.data(), 2, ChannelFlagNames(), {});
  if (!flags.ok()) return flags.status();
  return ChannelOptionsFromFlags(*flags, [&env](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

TEST(ChannelTest, DefaultsArePlaintextWithoutToken) {
  auto o = FromArgs({});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->target, "127.0.0.1:50051");
  EXPECT_FALSE(o->tls());
  EXPECT_EQ(o->token, "");
  EXPECT_TRUE(MakeChannel(*o).ok());
}

TEST(ChannelTest, FlagsFillTheOptions) {
  ScopedTempDir dir("channel");
  std::ofstream(dir.File("t")) << "# mine\napp:" << kToken << "\n";
  auto o = FromArgs({"--target", "10.1.2.3:7000", "--tls-ca", "ca.pem", "--tls-cert", "c.pem",
                     "--tls-key", "c.key", "--token-file", dir.File("t")});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->target, "10.1.2.3:7000");
  EXPECT_EQ(o->tls_ca_file, "ca.pem");
  EXPECT_EQ(o->tls_cert_file, "c.pem");
  EXPECT_EQ(o->tls_key_file, "c.key");
  EXPECT_EQ(o->token, kToken);  // NAME: is the server's; the client sends TOKEN
  EXPECT_TRUE(o->tls());
}

TEST(ChannelTest, TokenFromTheEnvironmentUnlessATokenFileIsGiven) {
  ScopedTempDir dir("channel_env");
  const std::string other = "otherOTHERother0123456";
  std::ofstream(dir.File("t")) << kToken << "\n";
  auto env = FromArgs({}, {{"QLINEAR_TOKEN", other}});
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->token, other);
  auto file = FromArgs({"--token-file", dir.File("t")}, {{"QLINEAR_TOKEN", other}});
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->token, kToken);
  auto empty = FromArgs({}, {{"QLINEAR_TOKEN", ""}});
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->token, "");
}

TEST(ChannelTest, BadCombinationsAndFilesAreOneLineErrors) {
  ScopedTempDir dir("channel_bad");
  std::ofstream(dir.File("two")) << "a:" << kToken << "\nb:" << kToken << "x\n";
  std::ofstream(dir.File("short")) << "abc\n";
  std::ofstream(dir.File("notpem")) << "hello\n";
  struct Case {
    std::vector<std::string> args;
    std::map<std::string, std::string> env;
    std::string want;
  };
  for (const Case& c : std::vector<Case>{
           {{"--tls-cert", "c.pem"}, {}, "--tls-cert needs --tls-key"},
           {{"--tls-key", "c.key"}, {}, "--tls-key needs --tls-cert"},
           {{"--tls-ca"}, {}, "--tls-ca needs a value"},
           {{"--token-file", dir.File("missing")}, {}, "--token-file: token file '"},
           {{"--token-file", dir.File("two")}, {}, "holds 2 tokens (lines 1 and 2, ...); a client sends one"},
           {{"--token-file", dir.File("short")}, {}, "line 1: the token has 3 characters"},
           {{}, {{"QLINEAR_TOKEN", "has space in it 0123"}}, "$QLINEAR_TOKEN"},
           {{"--target", ""}, {}, "--target must be HOST:PORT"},
       }) {
    auto o = FromArgs(c.args, c.env);
    ASSERT_FALSE(o.ok()) << c.want;
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(o.status().message(), AllOf(HasSubstr(c.want), Not(HasSubstr("\n")), Not(HasSubstr(kToken))));
  }
  // Files are read by MakeChannel.
  ChannelOptions o;
  o.tls_ca_file = dir.File("missing.pem");
  auto missing = MakeChannel(o);
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("--tls-ca '" + dir.File("missing.pem") + "': cannot read"));
  o.tls_ca_file = dir.File("notpem");
  EXPECT_THAT(MakeChannel(o).status().message(), HasSubstr("holds no PEM certificate"));
  o.tls_ca_file.clear();
  o.token = "bad token";
  EXPECT_THAT(MakeChannel(o).status().message(),
              AllOf(HasSubstr("the token must be 16 to 512 characters"), Not(HasSubstr("bad token"))));
  o.token.clear();
  o.max_message_mb = 0;
  EXPECT_THAT(MakeChannel(o).status().message(), HasSubstr("[1, 2047] MiB (or -1: none); got 0"));
  o.max_message_mb = -1;  // no limit
  EXPECT_TRUE(MakeChannel(o).ok());
}

// Several replicas: a list of IP literals becomes one ipv4:/ipv6: target;
// a dns:/// name balances as it is; anything else is refused in one line
// naming the forms accepted.
TEST(ChannelTest, TargetsOfSeveralReplicas) {
  auto one = ParseTarget("10.0.0.1:5");
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->grpc_target, "10.0.0.1:5");
  EXPECT_FALSE(one->balanced);
  EXPECT_EQ(one->replicas, std::vector<std::string>{"10.0.0.1:5"});
  auto host = ParseTarget("localhost:5");  // one name: as before, not balanced
  ASSERT_TRUE(host.ok());
  EXPECT_FALSE(host->balanced);
  auto list = ParseTarget("10.0.0.1:5,10.0.0.2:6,10.0.0.3:7");
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(list->grpc_target, "ipv4:10.0.0.1:5,10.0.0.2:6,10.0.0.3:7");
  EXPECT_TRUE(list->balanced);
  EXPECT_EQ(list->replicas, (std::vector<std::string>{"10.0.0.1:5", "10.0.0.2:6", "10.0.0.3:7"}));
  auto v6 = ParseTarget("[::1]:5,[fe80::2]:6");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(v6->grpc_target, "ipv6:[::1]:5,[fe80::2]:6");
  auto dns = ParseTarget("dns:///qlinear-headless.default.svc:50051");
  ASSERT_TRUE(dns.ok());
  EXPECT_EQ(dns->grpc_target, "dns:///qlinear-headless.default.svc:50051");
  EXPECT_TRUE(dns->balanced);
  EXPECT_EQ(dns->replicas.size(), 1u);
  for (const auto& [target, want] : std::vector<std::pair<std::string, std::string>>{
           {"a:1,b:2", "got 'a:1' in 'a:1,b:2'"},
           {"10.0.0.1:5,", "got '' in '10.0.0.1:5,' (an empty element)"},
           {"10.0.0.1:5,10.0.0.2", "got '10.0.0.2'"},
           {"10.0.0.1:5,10.0.0.2:0", "got '10.0.0.2:0'"},
           {"10.0.0.1:5,10.0.0.2:65536", "got '10.0.0.2:65536'"},
           {"10.0.0.1:5,[::1]:6", "IPv4 and IPv6 mixed"},
           {"10.0.0.1:5,::1:6", "got '::1:6'"},
       }) {
    auto bad = ParseTarget(target);
    ASSERT_FALSE(bad.ok()) << target;
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(bad.status().message(),
                AllOf(HasSubstr("IPv4 or [IPv6] literals a:1,b:2 (one family), or dns:///HOST:PORT"),
                      HasSubstr(want)))
        << target;
    ChannelOptions o;
    o.target = target;
    EXPECT_EQ(MakeChannel(o).status().message(), bad.status().message());
  }
  // The flag reaches the options as given, and the channel is made.
  auto o = FromArgs({"--target", "127.0.0.1:1,127.0.0.1:2"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->target, "127.0.0.1:1,127.0.0.1:2");
  EXPECT_TRUE(MakeChannel(*o).ok());
}

// The service config of a balancing channel is what gRPC accepts: a
// channel made with it connects (a bad config would fail every call with
// an error naming the service config).
TEST(ChannelTest, BalancedChannelServesCalls) {
  ServerOptions so;
  so.listen = "127.0.0.1:0";
  so.engine.threads = 1;
  auto a = QlinearServer::Start(so);
  auto b = QlinearServer::Start(so);
  ASSERT_TRUE(a.ok() && b.ok());
  ChannelOptions o;
  o.target = (*a)->address() + "," + (*b)->address();
  auto client = Client::Connect(o, Client::Options());
  ASSERT_TRUE(client.ok()) << client.status();
  auto health = (*client)->Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_THAT(std::string(kBalancedServiceConfig),
              AllOf(HasSubstr("round_robin"), HasSubstr("\"method\":\"Forward\""),
                    HasSubstr("\"method\":\"ModelInfer\""), HasSubstr("UNAVAILABLE")));
}

// The CLI answers a bad combination as bad usage: exit 2, the fault in one
// line, then the usage line.
TEST(ChannelTest, CliAnswersBadConnectionFlagsWithExit2) {
  ScopedTempDir dir("channel_cli");
  for (const std::string command : {"list", "stats", "health", "unload --layer x", "bench --layer x --concurrency 1"}) {
    const std::string out = dir.File("out");
    const int rc = std::system((std::string(QLINEAR_BINARY) + " " + command +
                                " --tls-cert c.pem > " + out + " 2>&1").c_str());
    ASSERT_TRUE(WIFEXITED(rc));
    EXPECT_EQ(WEXITSTATUS(rc), 2) << command;
    EXPECT_THAT(ReadFileBytes(out), HasSubstr("--tls-cert needs --tls-key\nusage: qlinear")) << command;
  }
}

// Every server command and `qlinear bench` over TLS with a token, against
// an in-process server that requires both.
TEST(ChannelTest, CliCommandsAndBenchUseTlsAndTheToken) {
  TestCerts certs;
  ASSERT_TRUE(certs.ok());
  ScopedTempDir dir("channel_tls");
  const std::string admin = "adminADMINadmin0123456";
  std::ofstream(dir.File("admin.tokens")) << "ops:" << admin << "\n";
  std::ofstream(dir.File("data.tokens")) << "app:" << kToken << "\n";
  std::ofstream(dir.File("ops.token")) << "ops:" << admin << "\n";
  ServerOptions so;
  so.listen = "127.0.0.1:0";
  so.engine.threads = 1;
  so.tls.cert_file = certs.Pem("server");
  so.tls.key_file = certs.Key("server");
  so.auth.data_token_file = dir.File("data.tokens");
  so.auth.admin_token_file = dir.File("admin.tokens");
  auto server = QlinearServer::Start(so);
  ASSERT_TRUE(server.ok()) << server.status();
  // A layer to call, uploaded through the library with the admin token.
  ChannelOptions co;
  co.target = (*server)->address();
  co.tls_ca_file = certs.Pem("ca");
  co.token = admin;
  auto client = Client::Connect(co, Client::Options());
  ASSERT_TRUE(client.ok()) << client.status();
  v1::QuantizeHeader h;
  h.set_name("l");
  h.set_out_features(8);
  h.set_in_features(64);
  h.set_dtype(v1::F32);
  std::vector<float> w(8 * 64, 0.5f);
  ASSERT_TRUE((*client)->Quantize(h, {reinterpret_cast<const uint8_t*>(w.data()), w.size() * 4}, {}).ok());

  const std::string tls = " --target " + (*server)->address() + " --tls-ca " + certs.Pem("ca");
  auto run = [&](const std::string& args, const std::string& env = "") {
    const std::string out = dir.File("out");
    const int rc = std::system((env + " " + QLINEAR_BINARY + " " + args + " > " + out + " 2>&1").c_str());
    return std::pair<int, std::string>(WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, ReadFileBytes(out));
  };
  auto [no_token, no_token_out] = run("list" + tls);
  EXPECT_EQ(no_token, 1);
  EXPECT_THAT(no_token_out, HasSubstr("UNAUTHENTICATED"));
  auto [env_rc, env_out] = run("list" + tls, std::string("QLINEAR_TOKEN=") + kToken);
  EXPECT_EQ(env_rc, 0) << env_out;
  EXPECT_THAT(env_out, HasSubstr("l: [8, 64]"));
  auto [denied, denied_out] = run("unload --layer l" + tls, std::string("QLINEAR_TOKEN=") + kToken);
  EXPECT_EQ(denied, 1);
  EXPECT_THAT(denied_out, HasSubstr("PERMISSION_DENIED"));
  auto [plain, plain_out] = run("health --target " + (*server)->address());
  EXPECT_EQ(plain, 1) << plain_out;  // plaintext to a TLS port
  auto [health, health_out] = run("health" + tls);
  EXPECT_EQ(health, 0) << health_out;
  auto [bench, bench_out] = run("bench --layer l --concurrency 2 --requests 20 --warmup 0 --json" + tls,
                                std::string("QLINEAR_TOKEN=") + kToken);
  EXPECT_EQ(bench, 0) << bench_out;
  EXPECT_THAT(bench_out, AllOf(HasSubstr("\"errors\": {}"), HasSubstr("\"requests\": 20")));
  auto [unload, unload_out] = run("unload --layer l --token-file " + dir.File("ops.token") + tls);
  EXPECT_EQ(unload, 0) << unload_out;
  EXPECT_THAT(no_token_out + env_out + denied_out + bench_out + unload_out,
              AllOf(Not(HasSubstr(kToken)), Not(HasSubstr(admin))));
}

}  // namespace
}  // namespace qlinear
