// The qlinear CLI's offline subcommands: they need no server.
//
//   quantize    float safetensors -> MLX-quantized safetensors
//   dequantize  MLX-quantized safetensors -> float safetensors
//   inspect     list tensors and the quantized layers found
//   demo        quantize a built-in seeded layer and print its error report
//
// Each Run* function takes the whole argv (argv[1] is the subcommand) and
// returns the process exit status: 0 success, 2 bad usage, 1 any other
// failure, with a one-line error on stderr.
#ifndef QLINEAR_CLIENT_OFFLINE_COMMANDS_H_
#define QLINEAR_CLIENT_OFFLINE_COMMANDS_H_

namespace qlinear {

int RunQuantize(int argc, char** argv);
int RunDequantize(int argc, char** argv);
int RunInspect(int argc, char** argv);
int RunDemo(int argc, char** argv);

}  // namespace qlinear

#endif  // QLINEAR_CLIENT_OFFLINE_COMMANDS_H_
