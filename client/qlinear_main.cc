// qlinear: the command-line tool. See README.md and docs/api.md.
#include <cstdio>
#include <cstring>

#include "absl/synchronization/mutex.h"
#include "client/bench_command.h"
#include "client/convert_command.h"
#include "client/offline_commands.h"
#include "client/online_commands.h"

namespace {

constexpr char kUsage[] =
    "usage: qlinear <command> [flags]\n"
    "\n"
    "offline commands (no server needed):\n"
    "  quantize   --in IN.safetensors|FOLDER --out OUT.safetensors [--bits B]\n"
    "             [--group-size G] [--mode affine|mxfp4|mxfp8|nvfp4]\n"
    "  dequantize --in Q.safetensors|FOLDER --out F.safetensors [--dtype f32|f16|bf16]\n"
    "             [--bits B] [--group-size G] [--mode M]\n"
    "  convert    --in FLOAT_FOLDER --out QUANTIZED_FOLDER [--bits B] [--group-size G]\n"
    "             [--mode M] [--dtype f32|f16|bf16]\n"
    "             [--recipe mixed_2_6|mixed_3_4|mixed_3_6|mixed_4_6]   (as mlx_lm.convert -q)\n"
    "  inspect    FILE.safetensors|FOLDER [--bits B] [--group-size G] [--mode M]\n"
    "  demo       [--n N] [--k K] [--bits B] [--group-size G] [--mode M]\n"
    "             [--dtype f32|f16|bf16] [--seed S]\n"
    "\n"
    "\n"
    "server commands (--target HOST:PORT[,HOST:PORT...] or dns:///HOST:PORT, default 127.0.0.1:50051; --timeout-s S, default 60;\n"
    "  TLS: --tls-ca CA.pem, mTLS also --tls-cert CERT.pem --tls-key KEY.pem;\n"
    "  token: --token-file FILE, else $QLINEAR_TOKEN; see docs/security.md):\n"
    "  upload     --in FILE.safetensors|FOLDER [--bits B] [--group-size G] [--mode M] [--replace]\n"
    "  forward    --layer NAME (--in X.safetensors|X.npy [--key x] | --random-rows R)\n"
    "             [--dtype f32|f16|bf16] [--out Y.safetensors|Y.npy]\n"
    "  stats      [--layer NAME] [--json]\n"
    "  list\n"
    "  unload     --layer NAME\n"
    "  health     (exit 0 only when SERVING)\n"
    "  bench      --layer NAME [--rows R] [--dtype D] (--concurrency C | --rate QPS)\n"
    "             [--duration S | --requests N] [--warmup S] [--until-stable] [--json]\n"
    "\n"
    "exit status: 0 success, 2 bad usage, 1 any other failure\n";

}  // namespace

int main(int argc, char** argv) {
  // As in qlinear-server: no lock-order cycle checks on every absl::Mutex
  // acquisition (they cost `qlinear bench` CPU it shares with the server).
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const char* command = argv[1];
  if (std::strcmp(command, "help") == 0 || std::strcmp(command, "--help") == 0 ||
      std::strcmp(command, "-h") == 0) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (std::strcmp(command, "quantize") == 0) return qlinear::RunQuantize(argc, argv);
  if (std::strcmp(command, "dequantize") == 0) return qlinear::RunDequantize(argc, argv);
  if (std::strcmp(command, "convert") == 0) return qlinear::RunConvert(argc, argv);
  if (std::strcmp(command, "inspect") == 0) return qlinear::RunInspect(argc, argv);
  if (std::strcmp(command, "demo") == 0) return qlinear::RunDemo(argc, argv);
  if (std::strcmp(command, "upload") == 0) return qlinear::RunUpload(argc, argv);
  if (std::strcmp(command, "forward") == 0) return qlinear::RunForward(argc, argv);
  if (std::strcmp(command, "stats") == 0) return qlinear::RunStats(argc, argv);
  if (std::strcmp(command, "list") == 0) return qlinear::RunList(argc, argv);
  if (std::strcmp(command, "unload") == 0) return qlinear::RunUnload(argc, argv);
  if (std::strcmp(command, "health") == 0) return qlinear::RunHealth(argc, argv);
  if (std::strcmp(command, "bench") == 0) return qlinear::RunBench(argc, argv);
  std::fprintf(stderr, "qlinear: unknown command '%s'\n%s", command, kUsage);
  return 2;
}
