// ServerProcess: qlinear-server run as a child process on a free loopback
// port, for tests that need the real binary.
#ifndef QLINEAR_TESTS_SERVER_PROCESS_H_
#define QLINEAR_TESTS_SERVER_PROCESS_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "client/client.h"
#include "tests/test_util.h"

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
  struct Options {
    // Environment variables set in the child (e.g. QLINEAR_CRASH_AT).
    std::vector<std::pair<std::string, std::string>> env;
    // Where the child's stdout and stderr go (empty: inherited).
    std::string log;
    // RLIMIT_FSIZE for the child, with SIGXFSZ ignored, so that writes past
    // it fail with EFBIG as on a full disk (0: none).
    rlim_t max_file_bytes = 0;
  };

  ServerProcess(const char* binary, const std::vector<std::string>& args)
      : ServerProcess(binary, args, Options()) {}
  ServerProcess(const char* binary, const std::vector<std::string>& args, const Options& options)
      : target_("127.0.0.1:" + std::to_string(FreePort())), log_(options.log) {
    pid_ = fork();
    if (pid_ == 0) {
      // Servers of parallel tests must not all take the default metrics
      // port; a test's own --metrics-listen (or env) still wins.
      setenv("QLINEAR_METRICS_LISTEN", "127.0.0.1:0", 1);
      for (const auto& [key, value] : options.env) setenv(key.c_str(), value.c_str(), 1);
      if (!options.log.empty()) {
        if (!freopen(options.log.c_str(), "w", stdout)) _exit(126);
        dup2(fileno(stdout), fileno(stderr));
      }
      if (options.max_file_bytes > 0) {
        signal(SIGXFSZ, SIG_IGN);
        rlimit limit{options.max_file_bytes, options.max_file_bytes};
        setrlimit(RLIMIT_FSIZE, &limit);
      }
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
  // to build) until the server reports SERVING twice, 50 ms apart. (gRPC's
  // health service says SERVING from the moment its port opens until the
  // server turns it NOT_SERVING microseconds later; one answer caught in
  // that window, on a loaded machine, once let a test go on before the
  // layers were loaded.)
  bool WaitServing() {
    // Until the port accepts a connection, a gRPC channel would fail and
    // back off for a second or more: wait for the listener first.
    for (int i = 0; i < 3000 && !Exited() && !Accepts(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    auto client = Client::Connect(target_);
    bool serving = false;  // the previous answer said SERVING
    for (int i = 0; i < 600; ++i) {
      if (Exited()) return false;
      auto status = client->Health();
      const bool now = status.ok() && *status == grpc::health::v1::HealthCheckResponse::SERVING;
      if (now && serving) return true;
      serving = now;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  // Accepts tells whether the server's port takes a TCP connection.
  bool Accepts() const {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(std::stoi(target_.substr(target_.rfind(':') + 1))));
    const bool ok = fd >= 0 && connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    if (fd >= 0) close(fd);
    return ok;
  }

  // Signal sends `sig` and returns at once.
  void Signal(int sig) {
    if (pid_ > 0) kill(pid_, sig);
  }

  // Stop sends `sig`, waits, and returns the exit status (-1 if killed).
  int Stop(int sig) {
    if (pid_ > 0) kill(pid_, sig);
    return Wait();
  }

  // Wait waits for the child to end by itself; its exit status, or -1 when
  // a signal ended it.
  int Wait() {
    if (pid_ > 0) {
      waitpid(pid_, &status_, 0);
      pid_ = -1;
    }
    return WIFEXITED(status_) ? WEXITSTATUS(status_) : -1;
  }

  // WaitAtMost waits up to `limit` for the child to end by itself: true
  // (and the status in *exit_status, as Wait gives it) if it did.
  bool WaitAtMost(std::chrono::milliseconds limit, int* exit_status) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!Exited()) {
      if (std::chrono::steady_clock::now() > end) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    *exit_status = WIFEXITED(status_) ? WEXITSTATUS(status_) : -1;
    return true;
  }

  // Exited tells (without blocking) whether the child has ended.
  bool Exited() {
    if (pid_ <= 0) return true;
    if (waitpid(pid_, &status_, WNOHANG) == pid_) {
      pid_ = -1;
      return true;
    }
    return false;
  }

  // Log is what the child wrote so far (Options::log).
  std::string Log() const { return ReadFileBytes(log_); }

 private:
  pid_t pid_ = -1;
  int status_ = 0;
  std::string target_;
  std::string log_;
};

}  // namespace qlinear

#endif  // QLINEAR_TESTS_SERVER_PROCESS_H_
