// Client-side balancing (client/channel.h's ParseTarget and service
// config) against three qlinear-server processes: round robin reaches each,
// a replica that drains (SIGTERM) or dies (SIGKILL) mid-flow costs no
// Forward, and `qlinear upload` / `unload` act on each replica.
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_join.h"
#include "client/channel.h"
#include "client/client.h"
#include "core/safetensors.h"
#include "tests/server_process.h"
#include "tests/test_util.h"

namespace qlinear {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

struct RunResult {
  int exit_code;
  std::string out, err;
};

RunResult Cli(const ScopedTempDir& dir, const std::string& args) {
  const std::string out = dir.File("cli.out"), err = dir.File("cli.err");
  const int rc = std::system((std::string(QLINEAR_BINARY) + " " + args + " > " + out + " 2> " + err).c_str());
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, ReadFileBytes(out), ReadFileBytes(err)};
}

// A float model of one [8, 64] layer `name`.
void WriteModel(const std::string& path, const std::string& name) {
  std::vector<float> w(8 * 64);
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i % 13) / 13.0f - 0.5f;
  ASSERT_TRUE(WriteSafetensors(path, {{name + ".weight", DType::kF32, {8, 64},
                                       absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(w.data()),
                                                                 w.size() * 4)}},
                               {})
                  .ok());
}

v1::ForwardRequest Request(const std::string& layer) {
  v1::ForwardRequest r;
  r.set_layer(layer);
  r.mutable_input()->set_dtype(v1::F32);
  r.mutable_input()->add_shape(1);
  r.mutable_input()->add_shape(64);
  std::vector<float> x(64, 0.25f);
  r.mutable_input()->set_data(reinterpret_cast<const char*>(x.data()), x.size() * 4);
  return r;
}

// Forwards one replica answered OK for `layer`, from its own Stats.
uint64_t OkOn(const std::string& target, const std::string& layer) {
  auto client = Client::Connect(target);
  auto stats = client->Stats(layer);
  if (!stats.ok() || stats->layers().empty()) return 0;
  const auto& by_code = stats->layers(0).requests_by_code();
  auto it = by_code.find("OK");
  return it == by_code.end() ? 0 : it->second;
}

class BalanceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int i = 0; i < 3; ++i) {
      servers_.push_back(std::make_unique<ServerProcess>(
          QLINEAR_SERVER_BINARY,
          std::vector<std::string>{"--threads", "1", "--drain-timeout-s", "10", "--state-dir",
                                   dir_.File("state" + std::to_string(i))}));
    }
    for (auto& s : servers_) {
      ASSERT_TRUE(s->started());
      ASSERT_TRUE(s->WaitServing());
      targets_.push_back(s->target());
    }
    all_ = absl::StrJoin(targets_, ",");
    WriteModel(dir_.File("model.safetensors"), "l");
    RunResult up = Cli(dir_, "upload --target " + all_ + " --in " + dir_.File("model.safetensors"));
    ASSERT_EQ(up.exit_code, 0) << up.err;
    for (size_t i = 0; i < targets_.size(); ++i) {
      EXPECT_THAT(up.out, HasSubstr("replica " + targets_[i] + " (" + std::to_string(i + 1) + " of 3)"));
    }
  }

  ScopedTempDir dir_{"balance"};
  std::vector<std::unique_ptr<ServerProcess>> servers_;
  std::vector<std::string> targets_;
  std::string all_;
};

TEST_F(BalanceTest, UploadPublishesOnEachReplica) {
  for (const std::string& t : targets_) {
    auto list = Client::Connect(t)->ListLayers();
    ASSERT_TRUE(list.ok()) << list.status();
    ASSERT_EQ(list->layers_size(), 1) << t;
    EXPECT_EQ(list->layers(0).name(), "l");
  }
}

TEST_F(BalanceTest, RoundRobinReachesEveryReplicaAndBenchToo) {
  ChannelOptions o;
  o.target = all_;
  auto client = Client::Connect(o, Client::Options());
  ASSERT_TRUE(client.ok()) << client.status();
  const v1::ForwardRequest request = Request("l");
  constexpr int kCalls = 30;
  for (int i = 0; i < kCalls; ++i) {
    auto y = (*client)->Forward(request);
    ASSERT_TRUE(y.ok()) << y.status();
  }
  uint64_t total = 0;
  for (const std::string& t : targets_) {
    const uint64_t n = OkOn(t, "l");
    EXPECT_GE(n, 1u) << t << " got no Forward";
    total += n;
  }
  EXPECT_EQ(total, static_cast<uint64_t>(kCalls));

  RunResult bench = Cli(dir_, "bench --target " + all_ +
                                  " --layer l --concurrency 4 --requests 120 --warmup 0 --json");
  ASSERT_EQ(bench.exit_code, 0) << bench.err;
  EXPECT_THAT(bench.out, AllOf(HasSubstr("\"errors\": {}"), HasSubstr("\"requests\": 120")));
  for (const std::string& t : targets_) EXPECT_GT(OkOn(t, "l"), 1u) << t;
  RunResult help = Cli(dir_, "bench --help");
  EXPECT_THAT(help.err, HasSubstr("--target HOST:PORT[,HOST:PORT...]|dns:///HOST:PORT"));
}

// Forwards flow from 4 threads while replica 0 is SIGTERMed (it drains and
// answers UNAVAILABLE) and replica 1 SIGKILLed: the retry policy sends
// those calls to a live replica, and not one Forward fails.
TEST_F(BalanceTest, DrainingAndDeadReplicasCostNoForward) {
  ChannelOptions o;
  o.target = all_;
  auto client = Client::Connect(o, Client::Options());
  ASSERT_TRUE(client.ok()) << client.status();
  const v1::ForwardRequest request = Request("l");
  std::mutex mu;
  std::condition_variable cv;
  uint64_t ok = 0;
  std::vector<std::string> failures;
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      while (!stop.load()) {
        auto y = (*client)->Forward(request);
        std::lock_guard<std::mutex> lock(mu);
        if (y.ok()) {
          ++ok;
        } else {
          failures.push_back(y.status().ToString());
        }
        cv.notify_all();
      }
    });
  }
  // Waits until `more` further Forwards have been answered.
  auto answered = [&](uint64_t more) {
    std::unique_lock<std::mutex> lock(mu);
    const uint64_t want = ok + failures.size() + more;
    cv.wait(lock, [&] { return ok + failures.size() >= want; });
  };
  answered(100);
  servers_[0]->Signal(SIGTERM);  // drains while calls keep coming
  answered(100);
  EXPECT_EQ(servers_[0]->Wait(), 0);  // the drain finished in time
  answered(100);
  servers_[1]->Stop(SIGKILL);
  answered(200);
  stop = true;
  for (auto& t : threads) t.join();
  EXPECT_THAT(failures, ::testing::IsEmpty());
  EXPECT_GE(ok, 500u);
  EXPECT_GT(OkOn(targets_[2], "l"), 0u);

  // Upload to a list with dead replicas: the live one gets it, the message
  // names those that failed, and the exit status is 1.
  WriteModel(dir_.File("m2.safetensors"), "m");
  RunResult up = Cli(dir_, "upload --timeout-s 5 --target " + all_ + " --in " + dir_.File("m2.safetensors"));
  EXPECT_EQ(up.exit_code, 1);
  EXPECT_THAT(up.err, AllOf(HasSubstr("failed on 2 of 3 replicas: " + targets_[0] + " (UNAVAILABLE"),
                            HasSubstr(targets_[1] + " (UNAVAILABLE"),
                            HasSubstr("succeeded on: " + targets_[2] + " (not undone there)")));
  auto list = Client::Connect(targets_[2])->ListLayers();
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->layers_size(), 2);

  // unload acts on each replica alike.
  RunResult un = Cli(dir_, "unload --timeout-s 5 --layer m --target " + targets_[2] + "," + targets_[0]);
  EXPECT_EQ(un.exit_code, 1);
  EXPECT_THAT(un.out, HasSubstr("unloaded m"));
  EXPECT_THAT(un.err, AllOf(HasSubstr("failed on 1 of 2 replicas: " + targets_[0]),
                            Not(HasSubstr("failed on 2"))));
}

}  // namespace
}  // namespace qlinear
