// Tls: the server's TLS settings (--tls-cert, --tls-key, --tls-client-ca,
// --tls-reload-s), checked before gRPC starts, and the gRPC credentials
// they make.
//
// gRPC's own TLS stack only logs a bad certificate and then fails every
// handshake, so CheckTlsFiles reads every file first (with OpenSSL, as
// gRPC will) and refuses the start with one line naming the flag, the file
// and what is wrong: a flag without its partner, a file that cannot be read,
// no PEM certificate / no unencrypted PEM private key in it, or a key that
// is not the certificate's.
//
// ServerCredentials watches the files (grpc::experimental::
// FileWatcherCertificateProvider): every reload_s seconds gRPC re-reads
// them, so replaced certificates take effect on new connections without a
// restart (a replacement that fails to load keeps the previous pair; gRPC
// logs it). With client_ca_file, every client must present a certificate
// signed by one of its CAs (mTLS) — gRPC health included.
//
// Thread safety: plain functions.
#ifndef QLINEAR_SERVER_TLS_H_
#define QLINEAR_SERVER_TLS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace grpc {
class ServerCredentials;
}

namespace qlinear {

struct TlsOptions {
  std::string cert_file;       // PEM certificate chain, leaf first ("": plaintext)
  std::string key_file;        // PEM private key of the leaf, unencrypted
  std::string client_ca_file;  // PEM CA certificates; "": no client certificates
  int reload_s = 60;           // how often gRPC re-reads the files
  bool enabled() const { return !cert_file.empty() || !key_file.empty(); }
};

// CheckTlsFiles is OK for plaintext (no file given) and for a usable set;
// otherwise INVALID_ARGUMENT as above.
absl::Status CheckTlsFiles(const TlsOptions& options);

// ServerCredentials: insecure credentials when TLS is off, else TLS (mTLS
// with client_ca_file) from watched files. Calls CheckTlsFiles first.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(
    const TlsOptions& options);

// Describe is "tls off (plaintext)", "tls on" or "mtls on (client
// certificates required)", for the start-up line.
std::string DescribeTls(const TlsOptions& options);

}  // namespace qlinear

#endif  // QLINEAR_SERVER_TLS_H_
