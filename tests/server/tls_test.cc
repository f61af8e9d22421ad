// TLS, mTLS, --admin-listen and tokens on a real in-process server, called
// through the one channel factory (client/channel.h). Certificates are made
// with `openssl` in a temporary folder (tests/tls_certs.h).
#include "server/tls.h"

#include <stdio.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "client/client.h"
#include "server/server.h"
#include "tests/test_util.h"
#include "tests/tls_certs.h"

namespace qlinear {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using Code = absl::StatusCode;

constexpr char kData[] = "dataDATAdata0123456789";
constexpr char kAdmin[] = "adminADMINadmin0123456";
constexpr char kWrong[] = "wrongWRONGwrong0123456";

class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { certs_ = new TestCerts(); }
  static void TearDownTestSuite() {
    delete certs_;
    certs_ = nullptr;
  }
  void SetUp() override { ASSERT_TRUE(certs_->ok()); }

  std::unique_ptr<QlinearServer> Start(ServerOptions options) {
    options.listen = "127.0.0.1:0";
    options.engine.threads = 1;
    auto server = QlinearServer::Start(options);
    EXPECT_TRUE(server.ok()) << server.status();
    return server.ok() ? *std::move(server) : nullptr;
  }
  TlsOptions ServerTls(bool mtls = false) const {
    TlsOptions t;
    t.cert_file = certs_->Pem("server");
    t.key_file = certs_->Key("server");
    if (mtls) t.client_ca_file = certs_->Pem("ca");
    return t;
  }
  // Connect is a client of `target` with the given CA (none: plaintext),
  // client certificate NAME ("" none) and token; every client has its own
  // connection, so that no handshake is reused across cases.
  std::unique_ptr<Client> Connect(const std::string& target, const std::string& ca,
                                  const std::string& cert = "", const std::string& token = "") {
    ChannelOptions o;
    o.target = target;
    if (!ca.empty()) o.tls_ca_file = certs_->Pem(ca);
    if (!cert.empty()) {
      o.tls_cert_file = certs_->Pem(cert);
      o.tls_key_file = certs_->Key(cert);
    }
    o.token = token;
    o.connection_id = next_connection_++;
    Client::Options co;
    co.timeout = std::chrono::seconds(5);
    auto c = Client::Connect(o, co);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }
  static absl::Status Upload(Client& client, const std::string& name) {
    v1::QuantizeHeader h;
    h.set_name(name);
    h.set_out_features(8);
    h.set_in_features(64);
    h.set_dtype(v1::F32);
    std::vector<float> w(8 * 64, 0.25f);
    return client.Quantize(h, {reinterpret_cast<const uint8_t*>(w.data()), w.size() * 4}, {})
        .status();
  }

  static TestCerts* certs_;
  int next_connection_ = 0;
};

TestCerts* TlsTest::certs_ = nullptr;

TEST_F(TlsTest, RightCaWorksPlaintextAndWrongCaFail) {
  ServerOptions o;
  o.tls = ServerTls();
  auto server = Start(o);
  ASSERT_NE(server, nullptr);
  EXPECT_TRUE(Connect(server->address(), "ca")->ListLayers().ok());
  EXPECT_TRUE(Connect(server->address(), "ca")->Health().ok());
  auto plaintext = Connect(server->address(), "")->ListLayers();
  EXPECT_EQ(plaintext.status().code(), Code::kUnavailable) << plaintext.status();
  auto wrong_ca = Connect(server->address(), "other-ca")->ListLayers();
  EXPECT_EQ(wrong_ca.status().code(), Code::kUnavailable) << wrong_ca.status();
  // The name checked is the target's host, or tls_server_name:
  // "localhost" is in the certificate too, "elsewhere.example" is not.
  // (No DNS target here: c-ares leaks 10 bytes per process under LSan.)
  for (const auto& [name, ok] : {std::pair<std::string, bool>{"localhost", true},
                                 {"elsewhere.example", false}}) {
    ChannelOptions o;
    o.target = server->address();
    o.tls_ca_file = certs_->Pem("ca");
    o.tls_server_name = name;
    EXPECT_EQ((*Client::Connect(o, Client::Options()))->ListLayers().ok(), ok) << name;
  }
}

TEST_F(TlsTest, ClientCaRequiresAClientCertificateItSigned) {
  ServerOptions o;
  o.tls = ServerTls(/*mtls=*/true);
  auto server = Start(o);
  ASSERT_NE(server, nullptr);
  auto without = Connect(server->address(), "ca")->ListLayers();
  EXPECT_EQ(without.status().code(), Code::kUnavailable) << without.status();
  auto foreign = Connect(server->address(), "ca", "other-client")->ListLayers();
  EXPECT_EQ(foreign.status().code(), Code::kUnavailable) << foreign.status();
  EXPECT_TRUE(Connect(server->address(), "ca", "client")->ListLayers().ok());
  // Health needs the certificate too (probes use the ops port's /readyz).
  EXPECT_FALSE(Connect(server->address(), "ca")->Health().ok());
  EXPECT_TRUE(Connect(server->address(), "ca", "client")->Health().ok());
}

// Each plane x {no token, wrong token, data token, admin token}, over TLS.
TEST_F(TlsTest, TokensPerPlane) {
  ScopedTempDir dir("tls_tokens");
  std::ofstream(dir.File("data.tokens")) << "app:" << kData << "\n";
  std::ofstream(dir.File("admin.tokens")) << "ops:" << kAdmin << "\n";
  ServerOptions o;
  o.tls = ServerTls();
  o.auth.data_token_file = dir.File("data.tokens");
  o.auth.admin_token_file = dir.File("admin.tokens");
  auto server = Start(o);
  ASSERT_NE(server, nullptr);
  ASSERT_TRUE(Upload(*Connect(server->address(), "ca", "", kAdmin), "l").ok());
  struct Case {
    std::string token;
    Code data, admin;
  };
  for (const Case& c : std::vector<Case>{{"", Code::kUnauthenticated, Code::kUnauthenticated},
                                         {kWrong, Code::kUnauthenticated, Code::kUnauthenticated},
                                         {kData, Code::kOk, Code::kPermissionDenied},
                                         {kAdmin, Code::kOk, Code::kNotFound}}) {
    auto client = Connect(server->address(), "ca", "", c.token);
    EXPECT_EQ(client->ListLayers().status().code(), c.data) << c.token;
    EXPECT_EQ(client->GetLayer("l").status().code(), c.data) << c.token;
    v1::ForwardRequest f;
    f.set_layer("l");
    f.mutable_input()->set_dtype(v1::F32);
    f.mutable_input()->add_shape(1);
    f.mutable_input()->add_shape(64);
    f.mutable_input()->set_data(std::string(256, '\0'));
    EXPECT_EQ(client->Forward(f).status().code(), c.data) << c.token;
    // NOT_FOUND: past the check, the layer does not exist.
    EXPECT_EQ(client->Unload("no-such-layer").code(), c.admin) << c.token;
    EXPECT_EQ(Upload(*client, "m").code(), c.admin == Code::kNotFound ? Code::kOk : c.admin)
        << c.token;
    // Health stays open for probes.
    EXPECT_TRUE(client->Health().ok()) << c.token;
  }
  // Each refusal above is counted by plane and code: no token and the wrong
  // one, 3 Data calls and 2 Admin calls each; the data token, 2 Admin calls.
  auto stats = Connect(server->address(), "ca", "", kAdmin)->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  const v1::ServerStats& st = stats->server();
  EXPECT_EQ(st.data_refusals_by_code().at("UNAUTHENTICATED"), 6u);
  EXPECT_EQ(st.data_refusals_by_code().count("PERMISSION_DENIED"), 0u);
  EXPECT_EQ(st.admin_refusals_by_code().at("UNAUTHENTICATED"), 4u);
  EXPECT_EQ(st.admin_refusals_by_code().at("PERMISSION_DENIED"), 2u);
}

TEST_F(TlsTest, AdminListenServesAdminAndTheMainListenerNone) {
  ServerOptions o;
  o.tls = ServerTls();
  o.admin_listen = "127.0.0.1:0";
  auto server = Start(o);
  ASSERT_NE(server, nullptr);
  ASSERT_NE(server->admin_port(), 0);
  ASSERT_NE(server->admin_port(), server->port());
  EXPECT_EQ(server->admin_address(), "127.0.0.1:" + std::to_string(server->admin_port()));
  auto main = Connect(server->address(), "ca");
  auto admin = Connect(server->admin_address(), "ca");
  absl::Status refused = Upload(*main, "l");
  EXPECT_EQ(refused.code(), Code::kUnimplemented);
  EXPECT_THAT(refused.message(), HasSubstr("the Admin plane is on its own listener (--admin-listen"));
  EXPECT_EQ(main->Unload("l").code(), Code::kUnimplemented);
  ASSERT_TRUE(Upload(*admin, "l").ok());
  EXPECT_TRUE(main->GetLayer("l").ok());
  EXPECT_TRUE(admin->Unload("l").ok());
  EXPECT_EQ(admin->ListLayers().status().code(), Code::kUnimplemented);  // Data is on the main one
  EXPECT_TRUE(main->Health().ok());
  EXPECT_TRUE(admin->Health().ok());
  // Each listener's health names what it serves.
  EXPECT_TRUE(main->Health("qlinear.v1.Data").ok());
  EXPECT_EQ(main->Health("qlinear.v1.Admin").status().code(), Code::kNotFound);
  EXPECT_TRUE(admin->Health("qlinear.v1.Admin").ok());
  EXPECT_EQ(admin->Health("qlinear.v1.Data").status().code(), Code::kNotFound);
  // Shutdown stops both listeners.
  EXPECT_TRUE(server->Shutdown(std::chrono::steady_clock::now() + std::chrono::seconds(5)));
  EXPECT_FALSE(Connect(server->admin_address(), "ca")->Health().ok());
  EXPECT_FALSE(Connect(server->address(), "ca")->Health().ok());
}

// Certificates re-read on the watch interval: swap the server's pair for one
// signed by another CA and new connections present it, without a restart.
TEST_F(TlsTest, RotatedCertificatesApplyWithoutRestart) {
  ScopedTempDir dir("tls_rotate");
  namespace fs = std::filesystem;
  fs::copy_file(certs_->Pem("server"), dir.File("server.pem"));
  fs::copy_file(certs_->Key("server"), dir.File("server.key"));
  ServerOptions o;
  o.tls.cert_file = dir.File("server.pem");
  o.tls.key_file = dir.File("server.key");
  o.tls.reload_s = 1;
  auto server = Start(o);
  ASSERT_NE(server, nullptr);
  ASSERT_TRUE(Connect(server->address(), "ca")->ListLayers().ok());
  // Each file replaced in one rename.
  fs::copy_file(certs_->Key("other-server"), dir.File("new.key"));
  fs::copy_file(certs_->Pem("other-server"), dir.File("new.pem"));
  fs::rename(dir.File("new.key"), dir.File("server.key"));
  fs::rename(dir.File("new.pem"), dir.File("server.pem"));
  // gRPC's watcher runs on its own clock: wait (at most 10 s) for the new
  // certificate to show on a new connection.
  bool rotated = false;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!rotated && std::chrono::steady_clock::now() < until) {
    rotated = Connect(server->address(), "other-ca")->ListLayers().ok();
    if (!rotated) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(rotated);
  EXPECT_FALSE(Connect(server->address(), "ca")->ListLayers().ok());
}

TEST_F(TlsTest, StartRefusesBadTlsFilesNamingFlagAndFile) {
  ScopedTempDir dir("tls_bad");
  std::ofstream(dir.File("garbage.pem")) << "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n"
                                            "-----END CERTIFICATE-----\n";
  std::ofstream(dir.File("text.pem")) << "hello\n";
  const std::string cert = certs_->Pem("server"), key = certs_->Key("server");
  struct Case {
    TlsOptions tls;
    std::string want;
  };
  for (const Case& c : std::vector<Case>{
           {{cert, "", "", 60}, "--tls-cert needs --tls-key"},
           {{"", key, "", 60}, "--tls-key needs --tls-cert"},
           {{"", "", certs_->Pem("ca"), 60}, "--tls-client-ca needs --tls-cert and --tls-key"},
           {{dir.File("missing.pem"), key, "", 60},
            "--tls-cert '" + dir.File("missing.pem") + "': cannot read: No such file"},
           {{dir.File("text.pem"), key, "", 60},
            "--tls-cert '" + dir.File("text.pem") + "' holds no PEM certificate"},
           {{dir.File("garbage.pem"), key, "", 60},
            "--tls-cert '" + dir.File("garbage.pem") + "' holds no PEM certificate"},
           {{cert, cert, "", 60}, "--tls-key '" + cert + "' holds no unencrypted PEM private key"},
           {{cert, certs_->Key("other-server"), "", 60},
            "--tls-key '" + certs_->Key("other-server") + "' is not the key of the first certificate"},
           {{cert, key, dir.File("text.pem"), 60},
            "--tls-client-ca '" + dir.File("text.pem") + "' holds no PEM certificate"},
           {{cert, key, dir.path(), 60}, "--tls-client-ca '" + dir.path() + "' is a directory"},
       }) {
    absl::Status checked = CheckTlsFiles(c.tls);
    EXPECT_EQ(checked.code(), Code::kInvalidArgument) << c.want;
    EXPECT_THAT(checked.message(), HasSubstr(c.want));
    ServerOptions o;
    o.listen = "127.0.0.1:0";
    o.tls = c.tls;
    auto server = QlinearServer::Start(o);
    ASSERT_FALSE(server.ok()) << c.want;
    EXPECT_THAT(server.status().message(), HasSubstr(c.want));
  }
  EXPECT_TRUE(CheckTlsFiles(ServerTls(true)).ok());
  EXPECT_TRUE(CheckTlsFiles(TlsOptions()).ok());
  EXPECT_EQ(DescribeTls(TlsOptions()), "tls off (plaintext)");
  EXPECT_EQ(DescribeTls(ServerTls()), "tls on");
  EXPECT_EQ(DescribeTls(ServerTls(true)), "mtls on (client certificates required)");
}

}  // namespace
}  // namespace qlinear
