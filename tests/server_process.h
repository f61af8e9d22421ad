// ServerProcess: qlinear-server run as a child process on a free loopback
// port, for tests that need the real binary.
#ifndef QLINEAR_TESTS_SERVER_PROCESS_H_
#define QLINEAR_TESTS_SERVER_PROCESS_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "client/client.h"

namespace qlinear {

// A port that was free a moment ago (bind to 0, read it, close).
inline int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = 0;
  if (fd >= 0 && bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  if (fd >= 0) close(fd);
  return port;
}

// ServerProcess runs `binary --listen 127.0.0.1:<free port> <args>` in a
// child process and kills it if the test ends early, so that no server
// outlives its test.
class ServerProcess {
 public:
  ServerProcess(const char* binary, const std::vector<std::string>& args)
      : target_("127.0.0.1:" + std::to_string(FreePort())) {
    pid_ = fork();
    if (pid_ == 0) {
      std::vector<std::string> all = {binary, "--listen", target_};
      all.insert(all.end(), args.begin(), args.end());
      std::vector<char*> argv;
      for (std::string& a : all) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(binary, argv.data());
      _exit(127);
    }
  }
  ~ServerProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  const std::string& target() const { return target_; }
  bool started() const { return pid_ > 0; }

  // WaitServing polls health (at most 30 s: the demo layer takes a moment
  // to build) until the server reports SERVING.
  bool WaitServing() const {
    auto client = Client::Connect(target_);
    for (int i = 0; i < 600; ++i) {
      auto status = client->Health();
      if (status.ok() && *status == grpc::health::v1::HealthCheckResponse::SERVING) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  // Stop sends `sig`, waits, and returns the exit status (-1 if killed).
  int Stop(int sig) {
    kill(pid_, sig);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

 private:
  pid_t pid_ = -1;
  std::string target_;
};

}  // namespace qlinear

#endif  // QLINEAR_TESTS_SERVER_PROCESS_H_
