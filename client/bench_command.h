// qlinear bench: a load generator for a qlinear server. See docs/api.md.
#ifndef QLINEAR_CLIENT_BENCH_COMMAND_H_
#define QLINEAR_CLIENT_BENCH_COMMAND_H_

namespace qlinear {

// RunBench returns 0 when the run completed (errors are reported, not
// fatal), 1 when it could not run, 2 on bad usage.
int RunBench(int argc, char** argv);

}  // namespace qlinear

#endif  // QLINEAR_CLIENT_BENCH_COMMAND_H_
