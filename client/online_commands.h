// The qlinear CLI's commands that talk to a server (--target, default
// 127.0.0.1:50051): upload, forward, stats, list, unload, health. Exit status
// as for the offline commands: 0 success, 2 bad usage, 1 failure (an RPC
// failure prints the gRPC code name and message on stderr).
#ifndef QLINEAR_CLIENT_ONLINE_COMMANDS_H_
#define QLINEAR_CLIENT_ONLINE_COMMANDS_H_

namespace qlinear {

int RunUpload(int argc, char** argv);
int RunForward(int argc, char** argv);
int RunStats(int argc, char** argv);
int RunList(int argc, char** argv);
int RunUnload(int argc, char** argv);
int RunHealth(int argc, char** argv);

}  // namespace qlinear

#endif  // QLINEAR_CLIENT_ONLINE_COMMANDS_H_
