#include "server/tls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "core/read_file.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"

namespace qlinear {
namespace {


struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Deleter {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyDeleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using Bio = std::unique_ptr<BIO, BioDeleter>;
using Cert = std::unique_ptr<X509, X509Deleter>;
using Key = std::unique_ptr<EVP_PKEY, KeyDeleter>;

// A passphrase callback that gives none: an encrypted key fails to load
// instead of prompting on the terminal.
int NoPassphrase(char*, int, int, void*) { return 0; }

// Certificates parses every PEM certificate of `pem`; the first (the leaf
// for a chain) in *first. INVALID_ARGUMENT when there is none, or when a
// block fails to parse.
absl::Status Certificates(const std::string& flag, const std::string& path, const std::string& pem,
                          Cert* first) {
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  int count = 0;
  ERR_clear_error();
  while (true) {
    Cert cert(PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr));
    if (cert == nullptr) break;
    if (count++ == 0 && first != nullptr) *first = std::move(cert);
  }
  // The loop ends at the end of the data (PEM_R_NO_START_LINE) or at a
  // block that does not parse.
  const unsigned long err = ERR_peek_last_error();
  ERR_clear_error();
  const bool clean_end =
      ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE;
  if (count == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, " '", path, "' holds no PEM certificate (a block '-----BEGIN CERTIFICATE-----')"));
  }
  if (!clean_end && err != 0) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " '", path, "': certificate ", count + 1,
                                                   " does not parse as PEM"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckTlsFiles(const TlsOptions& o) {
  if (o.cert_file.empty() && o.key_file.empty()) {
    if (!o.client_ca_file.empty()) {
      return absl::InvalidArgumentError(
          "--tls-client-ca needs --tls-cert and --tls-key (client certificates are checked only "
          "over TLS)");
    }
    return absl::OkStatus();
  }
  if (o.cert_file.empty()) return absl::InvalidArgumentError("--tls-key needs --tls-cert");
  if (o.key_file.empty()) return absl::InvalidArgumentError("--tls-cert needs --tls-key");
  auto cert_pem = ReadFileText("--tls-cert", o.cert_file);
  if (!cert_pem.ok()) return absl::InvalidArgumentError(cert_pem.status().message());
  Cert leaf;
  if (absl::Status s = Certificates("--tls-cert", o.cert_file, *cert_pem, &leaf); !s.ok()) return s;
  auto key_pem = ReadFileText("--tls-key", o.key_file);
  if (!key_pem.ok()) return absl::InvalidArgumentError(key_pem.status().message());
  Bio bio(BIO_new_mem_buf(key_pem->data(), static_cast<int>(key_pem->size())));
  Key key(PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr));
  ERR_clear_error();
  if (key == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tls-key '", o.key_file,
        "' holds no unencrypted PEM private key (a block '-----BEGIN PRIVATE KEY-----' or "
        "'-----BEGIN RSA/EC PRIVATE KEY-----')"));
  }
  if (X509_check_private_key(leaf.get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat("--tls-key '", o.key_file,
                                                   "' is not the key of the first certificate of "
                                                   "--tls-cert '", o.cert_file, "'"));
  }
  if (!o.client_ca_file.empty()) {
    auto ca_pem = ReadFileText("--tls-client-ca", o.client_ca_file);
    if (!ca_pem.ok()) return absl::InvalidArgumentError(ca_pem.status().message());
    if (absl::Status s = Certificates("--tls-client-ca", o.client_ca_file, *ca_pem, nullptr);
        !s.ok()) {
      return s;
    }
  }
  if (o.reload_s < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-reload-s must be at least 1; got ", o.reload_s));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(const TlsOptions& o) {
  if (absl::Status s = CheckTlsFiles(o); !s.ok()) return s;
  if (!o.enabled()) return grpc::InsecureServerCredentials();
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      o.key_file, o.cert_file, o.client_ca_file, static_cast<unsigned int>(o.reload_s));
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (!o.client_ca_file.empty()) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

std::string DescribeTls(const TlsOptions& o) {
  if (!o.enabled()) return "tls off (plaintext)";
  if (!o.client_ca_file.empty()) return "mtls on (client certificates required)";
  return "tls on";
}

}  // namespace qlinear
