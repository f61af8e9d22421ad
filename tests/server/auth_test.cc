// Authorizer (server/auth.h): tokens per plane, in process, and SIGHUP's
// reload in a real qlinear-server with calls flowing.
#include "server/auth.h"

#include <signal.h>
#include <stdio.h>

#include <atomic>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "client/client.h"
#include "tests/server_process.h"
#include "tests/test_util.h"

namespace qlinear {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kData[] = "dataDATAdata0123456789";
constexpr char kAdmin[] = "adminADMINadmin0123456";
constexpr char kWrong[] = "wrongWRONGwrong0123456";

// WriteFile replaces `path` in one rename, as an operator's tooling should
// (a reader never sees half a file).
void WriteFile(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  std::ofstream(tmp, std::ios::binary | std::ios::trunc) << text;
  ASSERT_EQ(std::rename(tmp.c_str(), path.c_str()), 0) << path;
}

std::string Bearer(const std::string& token) { return "Bearer " + token; }

absl::StatusCode Code(const Authorizer& auth, std::vector<absl::string_view> header, Plane plane) {
  return auth.CheckHeader(header, plane).status().code();
}

class AuthorizerTest : public ::testing::Test {
 protected:
  std::unique_ptr<Authorizer> Make(bool data, bool admin) {
    WriteFile(dir_.File("data.tokens"), std::string("# data\napp:") + kData + "\n");
    WriteFile(dir_.File("admin.tokens"), std::string("ops:") + kAdmin + "\n");
    Authorizer::Options o;
    if (data) o.data_token_file = dir_.File("data.tokens");
    if (admin) o.admin_token_file = dir_.File("admin.tokens");
    auto auth = Authorizer::Create(o);
    EXPECT_TRUE(auth.ok()) << auth.status();
    return auth.ok() ? *std::move(auth) : nullptr;
  }
  ScopedTempDir dir_{"auth"};
};

// Each plane x {no token, wrong token, data token, admin token}.
TEST_F(AuthorizerTest, EachPlaneAndEachKindOfToken) {
  auto auth = Make(true, true);
  ASSERT_NE(auth, nullptr);
  using C = absl::StatusCode;
  const std::string data = Bearer(kData), admin = Bearer(kAdmin), wrong = Bearer(kWrong);
  EXPECT_EQ(Code(*auth, {}, Plane::kData), C::kUnauthenticated);
  EXPECT_EQ(Code(*auth, {wrong}, Plane::kData), C::kUnauthenticated);
  EXPECT_EQ(Code(*auth, {data}, Plane::kData), C::kOk);
  EXPECT_EQ(Code(*auth, {admin}, Plane::kData), C::kOk);
  EXPECT_EQ(Code(*auth, {}, Plane::kAdmin), C::kUnauthenticated);
  EXPECT_EQ(Code(*auth, {wrong}, Plane::kAdmin), C::kUnauthenticated);
  EXPECT_EQ(Code(*auth, {data}, Plane::kAdmin), C::kPermissionDenied);
  EXPECT_EQ(Code(*auth, {admin}, Plane::kAdmin), C::kOk);
  // The caller's name, never the token, in what Check returns.
  EXPECT_EQ(*auth->CheckHeader({data}, Plane::kData), "app");
  EXPECT_EQ(*auth->CheckHeader({admin}, Plane::kData), "ops");
  auto denied = auth->CheckHeader({data}, Plane::kAdmin);
  EXPECT_THAT(denied.status().message(),
              AllOf(HasSubstr("token 'app' is a Data-plane token"), Not(HasSubstr(kData))));
  auto none = auth->CheckHeader({}, Plane::kAdmin);
  EXPECT_THAT(none.status().message(),
              HasSubstr("the Admin plane needs a token: the call carries none"));
  auto unknown = auth->CheckHeader({wrong}, Plane::kData);
  EXPECT_THAT(unknown.status().message(), AllOf(HasSubstr("not one of its tokens"), Not(HasSubstr(kWrong))));
  EXPECT_EQ(auth->Describe(), "data plane 1 token (+ admin), admin plane 1 token");
}

TEST_F(AuthorizerTest, MalformedAuthorizationValues) {
  auto auth = Make(true, true);
  ASSERT_NE(auth, nullptr);
  using C = absl::StatusCode;
  EXPECT_EQ(Code(*auth, {kData}, Plane::kData), C::kUnauthenticated);  // no scheme
  EXPECT_EQ(Code(*auth, {std::string("Basic ") + kData}, Plane::kData), C::kUnauthenticated);
  EXPECT_EQ(Code(*auth, {std::string("bearer   ") + kData}, Plane::kData), C::kOk);  // RFC 7235: any case
  EXPECT_EQ(Code(*auth, {"Bearer "}, Plane::kData), C::kUnauthenticated);
  EXPECT_EQ(Code(*auth, {Bearer(std::string(kData) + "x")}, Plane::kData), C::kUnauthenticated);
  EXPECT_EQ(Code(*auth, {Bearer(std::string(kData).substr(1))}, Plane::kData), C::kUnauthenticated);
  const std::string data = Bearer(kData);
  auto twice = auth->CheckHeader({data, data}, Plane::kData);
  EXPECT_EQ(twice.status().code(), C::kUnauthenticated);
  EXPECT_THAT(twice.status().message(), HasSubstr("2 authorization values"));
}

TEST_F(AuthorizerTest, WhichPlanesAreOpen) {
  using C = absl::StatusCode;
  Authorizer open;  // as a null Authorizer*: everything passes
  EXPECT_EQ(Code(open, {}, Plane::kAdmin), C::kOk);
  EXPECT_EQ(Make(false, false)->Describe(), "data and admin planes open (no token files)");
  EXPECT_EQ(Code(*Make(false, false), {Bearer(kWrong)}, Plane::kAdmin), C::kOk);

  auto admin_only = Make(false, true);
  EXPECT_TRUE(admin_only->open(Plane::kData));
  EXPECT_FALSE(admin_only->open(Plane::kAdmin));
  EXPECT_EQ(Code(*admin_only, {}, Plane::kData), C::kOk);
  EXPECT_EQ(*admin_only->CheckHeader({Bearer(kAdmin)}, Plane::kData), "ops");  // named when known
  EXPECT_EQ(Code(*admin_only, {}, Plane::kAdmin), C::kUnauthenticated);
  EXPECT_EQ(Code(*admin_only, {Bearer(kAdmin)}, Plane::kAdmin), C::kOk);
  EXPECT_EQ(admin_only->Describe(), "data plane open, admin plane 1 token");

  // Data tokens alone close the Admin plane rather than leave it open.
  auto data_only = Make(true, false);
  EXPECT_FALSE(data_only->open(Plane::kAdmin));
  EXPECT_EQ(Code(*data_only, {}, Plane::kAdmin), C::kUnauthenticated);
  auto denied = data_only->CheckHeader({Bearer(kData)}, Plane::kAdmin);
  EXPECT_EQ(denied.status().code(), C::kPermissionDenied);
  EXPECT_THAT(denied.status().message(), HasSubstr("the Admin plane is closed"));
  EXPECT_EQ(data_only->Describe(), "data plane 1 token (+ admin), admin plane closed (no --admin-token-file)");
}

TEST_F(AuthorizerTest, CreateNamesTheFlagAndTheFile) {
  Authorizer::Options o;
  o.admin_token_file = dir_.File("nope.tokens");
  auto missing = Authorizer::Create(o);
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(),
              AllOf(HasSubstr("--admin-token-file: token file '"), HasSubstr("nope.tokens")));
  WriteFile(dir_.File("bad.tokens"), "ok:0123456789abcdef\nno good\n");
  o.admin_token_file.clear();
  o.data_token_file = dir_.File("bad.tokens");
  auto bad = Authorizer::Create(o);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("--data-token-file: token file '" +
                                                dir_.File("bad.tokens") + "' line 2"));
}

// Reload takes new tokens, drops removed ones, and keeps a file's previous
// tokens when the new text fails (saying which file).
TEST_F(AuthorizerTest, ReloadAddsDropsAndKeepsOnError) {
  auto auth = Make(true, true);
  ASSERT_NE(auth, nullptr);
  using C = absl::StatusCode;
  const std::string added = "addedADDEDadded0123456";
  WriteFile(dir_.File("data.tokens"), "new:" + added + "\n");
  EXPECT_EQ(Code(*auth, {Bearer(added)}, Plane::kData), C::kUnauthenticated);  // not yet
  ASSERT_TRUE(auth->Reload().ok());
  EXPECT_EQ(Code(*auth, {Bearer(added)}, Plane::kData), C::kOk);
  EXPECT_EQ(Code(*auth, {Bearer(kData)}, Plane::kData), C::kUnauthenticated);  // dropped
  EXPECT_EQ(auth->names(Plane::kData), std::vector<std::string>{"new"});

  WriteFile(dir_.File("data.tokens"), "# being rewritten\n");
  WriteFile(dir_.File("admin.tokens"), "ops2:" + added.substr(1) + "Z\n");
  absl::Status failed = auth->Reload();
  EXPECT_EQ(failed.code(), C::kInvalidArgument);
  EXPECT_THAT(failed.message(), AllOf(HasSubstr(dir_.File("data.tokens")), HasSubstr("holds no token"),
                                      HasSubstr("its previous tokens stay")));
  EXPECT_EQ(Code(*auth, {Bearer(added)}, Plane::kData), C::kOk);  // kept
  EXPECT_EQ(auth->names(Plane::kAdmin), std::vector<std::string>{"ops2"});  // the good file still read
  EXPECT_EQ(Code(*auth, {Bearer(kAdmin)}, Plane::kAdmin), C::kUnauthenticated);
}

// A token in both files is refused at start, naming the entries, never the
// token; a reload that would put one in both keeps every previous token.
TEST_F(AuthorizerTest, ATokenInBothFilesIsRefused) {
  WriteFile(dir_.File("data.tokens"), std::string("app:") + kData + "\n");
  WriteFile(dir_.File("admin.tokens"), std::string("ops:") + kData + "\n");
  Authorizer::Options o;
  o.data_token_file = dir_.File("data.tokens");
  o.admin_token_file = dir_.File("admin.tokens");
  auto both = Authorizer::Create(o);
  ASSERT_FALSE(both.ok());
  EXPECT_EQ(both.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(both.status().message(),
              AllOf(HasSubstr("hold the same token ('app' and 'ops')"), Not(HasSubstr(kData))));

  auto auth = Make(true, true);
  ASSERT_NE(auth, nullptr);
  WriteFile(dir_.File("admin.tokens"), std::string("root:") + kData + "\n");
  const absl::Status reload = auth->Reload();
  EXPECT_EQ(reload.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(reload.message(), AllOf(HasSubstr("('app' and 'root')"),
                                      HasSubstr("the previous tokens of both files stay")));
  EXPECT_EQ(auth->names(Plane::kAdmin), std::vector<std::string>{"ops"});
  EXPECT_EQ(Code(*auth, {Bearer(kAdmin)}, Plane::kAdmin), absl::StatusCode::kOk);
  EXPECT_EQ(Code(*auth, {Bearer(kData)}, Plane::kAdmin), absl::StatusCode::kPermissionDenied);
}

// Check and Reload from many threads at once (TSan's ground; here: no call
// ever sees a state that is neither the old nor the new one).
TEST_F(AuthorizerTest, ChecksDuringReloadsSeeOldOrNew) {
  auto auth = Make(true, true);
  ASSERT_NE(auth, nullptr);
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::vector<std::thread> checkers;
  for (int t = 0; t < 3; ++t) {
    checkers.emplace_back([&] {
      const std::string admin = Bearer(kAdmin);
      while (!stop) {
        if (!auth->CheckHeader({admin}, Plane::kAdmin).ok()) ++failures;
      }
    });
  }
  for (int i = 0; i < 200; ++i) ASSERT_TRUE(auth->Reload().ok());
  stop = true;
  for (auto& t : checkers) t.join();
  EXPECT_EQ(failures, 0);
}

// The real server: SIGHUP picks up a new token and drops a removed one,
// while Forwards with a token that stays keep flowing without one failure.
TEST(AuthProcessTest, SighupReloadsTokensWithoutDroppingARequest) {
  ScopedTempDir dir("auth_sighup");
  const std::string kept = "keptKEPTkept0123456789", removed = "goneGONEgone0123456789",
                    added = "newNEWnewNEW0123456789";
  WriteFile(dir.File("data.tokens"), "kept:" + kept + "\nremoved:" + removed + "\n");
  WriteFile(dir.File("admin.tokens"), std::string("ops:") + kAdmin + "\n");
  ServerProcess::Options po;
  po.log = dir.File("server.log");
  ServerProcess server(QLINEAR_SERVER_BINARY,
                       {"--state-dir", dir.File("state"), "--threads", "1",
                        "--data-token-file", dir.File("data.tokens"), "--admin-token-file",
                        dir.File("admin.tokens")},
                       po);
  ASSERT_TRUE(server.WaitServing()) << server.Log();  // health stays open
  EXPECT_THAT(server.Log(), AllOf(HasSubstr("tls off (plaintext), data plane 2 tokens (+ admin), "
                                            "admin plane 1 token"),
                                  HasSubstr("WARNING: tokens cross the network in clear")));
  auto client_with = [&](const std::string& token) {
    ChannelOptions o;
    o.target = server.target();
    o.token = token;
    auto c = Client::Connect(o, Client::Options());
    EXPECT_TRUE(c.ok()) << c.status();
    return *std::move(c);
  };
  auto admin = client_with(kAdmin);
  v1::QuantizeHeader h;
  h.set_name("l");
  h.set_out_features(8);
  h.set_in_features(64);
  h.set_dtype(v1::F32);
  std::vector<float> w(8 * 64, 0.5f);
  ASSERT_TRUE(admin->Quantize(h, {reinterpret_cast<const uint8_t*>(w.data()), w.size() * 4}, {}).ok());
  v1::ForwardRequest request;
  request.set_layer("l");
  request.mutable_input()->set_dtype(v1::F32);
  request.mutable_input()->add_shape(1);
  request.mutable_input()->add_shape(64);
  request.mutable_input()->set_data(std::string(64 * 4, '\0'));

  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, failed{0};
  std::string first_failure;
  std::thread flow([&] {
    auto c = client_with(kept);
    while (!stop) {
      auto r = c->Forward(request);
      if (r.ok()) {
        ++ok;
      } else if (failed++ == 0) {
        first_failure = r.status().ToString();
      }
    }
  });
  auto removed_client = client_with(removed);
  auto added_client = client_with(added);
  while (ok < 20 && failed == 0) std::this_thread::yield();
  ASSERT_TRUE(removed_client->Forward(request).ok());
  EXPECT_EQ(added_client->Forward(request).status().code(), absl::StatusCode::kUnauthenticated);

  WriteFile(dir.File("data.tokens"), "kept:" + kept + "\nadded:" + added + "\n");
  server.Signal(SIGHUP);
  // SIGHUP is handled by the server's signal thread: wait for its effect.
  bool picked_up = false;
  for (int i = 0; i < 1000 && !picked_up; ++i) {
    picked_up = added_client->Forward(request).ok();
    if (!picked_up) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(picked_up) << server.Log();
  EXPECT_EQ(removed_client->Forward(request).status().code(), absl::StatusCode::kUnauthenticated);

  // A broken rewrite keeps the previous tokens and logs the file's name.
  WriteFile(dir.File("data.tokens"), "half-written\n");
  server.Signal(SIGHUP);
  bool logged = false;
  for (int i = 0; i < 1000 && !logged; ++i) {
    logged = absl::StrContains(server.Log(), "tokens_reload_failed");
    if (!logged) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(logged) << server.Log();
  EXPECT_TRUE(added_client->Forward(request).ok());
  const int before_stop = ok;
  while (ok < before_stop + 20 && failed == 0) std::this_thread::yield();
  stop = true;
  flow.join();
  EXPECT_EQ(failed, 0) << first_failure;
  EXPECT_GT(ok, 40);
  const std::string log = server.Log();
  EXPECT_THAT(log, AllOf(HasSubstr(dir.File("data.tokens") + "' line 1"), HasSubstr("data_names=kept,added")));
  for (const std::string& secret : {kept, removed, added, std::string(kAdmin)}) {
    EXPECT_THAT(log, Not(HasSubstr(secret)));
  }
  EXPECT_EQ(server.Stop(SIGTERM), 0);
}

TEST(AuthProcessTest, WithoutTokenFilesTheStartupLineSaysThePlanesAreOpen) {
  ScopedTempDir dir("auth_open");
  ServerProcess::Options po;
  po.log = dir.File("server.log");
  ServerProcess server(QLINEAR_SERVER_BINARY, {"--state-dir", dir.File("state"), "--threads", "1"}, po);
  ASSERT_TRUE(server.WaitServing()) << server.Log();
  EXPECT_THAT(server.Log(), AllOf(HasSubstr("; tls off (plaintext), data and admin planes open (no token files)"),
                                  Not(HasSubstr("WARNING"))));
  EXPECT_EQ(server.Stop(SIGTERM), 0);
}

}  // namespace
}  // namespace qlinear
