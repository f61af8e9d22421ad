// TestCerts: a throw-away PKI made with the `openssl` command for TLS tests:
// a CA, a server certificate for IP:127.0.0.1 and DNS:localhost signed by
// it, a client certificate signed by it, and a second CA (with its own
// server and client certificates) that signs nothing the first one trusts.
#ifndef QLINEAR_TESTS_TLS_CERTS_H_
#define QLINEAR_TESTS_TLS_CERTS_H_

#include <cstdlib>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "tests/test_util.h"

namespace qlinear {

class TestCerts {
 public:
  TestCerts() : dir_("certs") {
    ok_ = MakeCa("ca") && MakeLeaf("server", "ca", true) && MakeLeaf("client", "ca", false) &&
          MakeCa("other-ca") && MakeLeaf("other-server", "other-ca", true) &&
          MakeLeaf("other-client", "other-ca", false);
  }
  bool ok() const { return ok_; }
  // Pem is DIR/NAME.pem (a certificate), Key DIR/NAME.key.
  std::string Pem(const std::string& name) const { return dir_.File(name + ".pem"); }
  std::string Key(const std::string& name) const { return dir_.File(name + ".key"); }
  const ScopedTempDir& dir() const { return dir_; }

  // MakeLeaf (public for rotation tests) writes NAME.pem / NAME.key signed
  // by CA; a server certificate names IP:127.0.0.1 and DNS:localhost.
  bool MakeLeaf(const std::string& name, const std::string& ca, bool server) {
    const std::string ext = dir_.File(name + ".ext");
    const std::string sans = server ? "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                    : "extendedKeyUsage=clientAuth\n";
    std::ofstream(ext) << sans;
    return Run(absl::StrCat("openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ", Key(name), " -out ",
                            dir_.File(name + ".csr"), " -subj /CN=", name)) &&
           Run(absl::StrCat("openssl x509 -req -in ", dir_.File(name + ".csr"), " -CA ", Pem(ca),
                            " -CAkey ", Key(ca), " -CAcreateserial -days 2 -out ", Pem(name),
                            " -extfile ", ext));
  }

 private:
  bool MakeCa(const std::string& name) {
    return Run(absl::StrCat("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -keyout ", Key(name),
                            " -out ", Pem(name), " -subj '/CN=", name, " (qlinear test)'"));
  }
  static bool Run(const std::string& command) {
    const int rc = std::system((command + " >/dev/null 2>&1").c_str());
    EXPECT_EQ(rc, 0) << command;
    return rc == 0;
  }

  ScopedTempDir dir_;
  bool ok_ = false;
};

}  // namespace qlinear

#endif  // QLINEAR_TESTS_TLS_CERTS_H_
