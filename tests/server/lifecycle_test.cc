// A layer's whole life through the real server binary: mlx-lm folders served
// with --model and uploaded with `qlinear upload`, and --state-dir keeping
// uploads across SIGKILL, crashes at each named point of the write path,
// damaged files and a second server on the same folder.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "core/checkpoint.h"
#include "core/quantize.h"
#include "core/safetensors.h"
#include "grpcpp/create_channel.h"
#include "proto/wire.h"
#include "tests/server_process.h"
#include "tests/test_util.h"

namespace qlinear {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

template <typename T>
absl::Span<const uint8_t> Span(const std::vector<T>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(T)};
}

std::vector<float> Random(size_t count, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(count);
  for (float& f : v) f = normal(rng);
  return v;
}

// RunCli runs the qlinear binary; returns its exit status and output.
struct CliResult {
  int exit_code;
  std::string out;
};
CliResult RunCli(const std::string& args, const std::string& log) {
  const std::string command = absl::StrCat(QLINEAR_BINARY, " ", args, " >", log, " 2>&1");
  const int status = std::system(command.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, ReadFileBytes(log)};
}

// ExitWithin is the exit status of a server expected to stop by itself
// (-2 if it is still running after a minute; it is then killed).
int ExitWithin(ServerProcess& server) {
  int status = 0;
  return server.WaitAtMost(std::chrono::seconds(60), &status) ? status : -2;
}

class LifecycleTest : public ::testing::Test {
 protected:
  LifecycleTest() : dir_("lifecycle") {}

  std::string StateDir() const { return dir_.File("state"); }

  std::unique_ptr<ServerProcess> Start(std::vector<std::string> args,
                                       ServerProcess::Options options = {}) {
    options.log = dir_.File(absl::StrCat("server", ++servers_, ".log"));
    args.insert(args.begin(), "--threads=2");
    return std::make_unique<ServerProcess>(QLINEAR_SERVER_BINARY, args, options);
  }

  // An 8x64 float32 layer (with a bias) through Quantize.
  absl::StatusOr<v1::LayerInfo> QuantizeLayer(Client& client, const std::string& name,
                                               uint64_t seed, bool replace = false) {
    v1::QuantizeHeader h;
    h.set_name(name);
    h.set_out_features(8);
    h.set_in_features(64);
    h.set_dtype(v1::F32);
    h.mutable_spec()->set_mode(v1::AFFINE);
    h.set_has_bias(true);
    h.set_replace(replace);
    const std::vector<float> w = Random(8 * 64, seed, 0.1f), b = Random(8, seed + 1);
    return client.Quantize(h, Span(w), Span(b));
  }

  // A 16x64 mxfp4 layer through LoadQuantized.
  absl::StatusOr<v1::LayerInfo> LoadLayer(Client& client, const std::string& name, uint64_t seed) {
    const std::vector<float> w = Random(16 * 64, seed, 0.1f);
    auto q = Quantize(DefaultQuantParams(QuantMode::kMxfp4), DType::kF32, w.data(), 16, 64);
    EXPECT_TRUE(q.ok());
    v1::LoadQuantizedHeader h;
    h.set_name(name);
    h.set_out_features(16);
    h.set_in_features(64);
    *h.mutable_spec() = ToProto(q->params);
    h.set_scales_dtype(v1::U8);
    return client.LoadQuantized(h, Span(q->wq), Span(q->scales), {}, {});
  }

  // Forward of two fixed rows; the output's bytes.
  std::string Forward(Client& client, const std::string& layer, int64_t k = 64) {
    v1::ForwardRequest request;
    request.set_layer(layer);
    const std::vector<float> x = Random(static_cast<size_t>(2 * k), 99);
    request.mutable_input()->set_dtype(v1::F32);
    request.mutable_input()->add_shape(2);
    request.mutable_input()->add_shape(k);
    request.mutable_input()->set_data(x.data(), x.size() * 4);
    auto r = client.Forward(request);
    EXPECT_TRUE(r.ok()) << layer << ": " << r.status();
    return r.ok() ? r->output().data() : "";
  }

  std::map<std::string, v1::LayerInfo> Layers(Client& client) {
    std::map<std::string, v1::LayerInfo> out;
    auto list = client.ListLayers();
    EXPECT_TRUE(list.ok()) << list.status();
    if (list.ok()) {
      for (const auto& l : list->layers()) out[l.name()] = l;
    }
    return out;
  }

  std::vector<std::string> StateFiles() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(StateDir())) names.push_back(e.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }

  ScopedTempDir dir_;
  int servers_ = 0;
};

TEST_F(LifecycleTest, MlxLmFoldersServeAsTheyAreWithModelAndUpload) {
  for (const std::string fixture : {"tiny-llama-4bit", "tiny-llama-mixed"}) {
    SCOPED_TRACE(fixture);
    const std::string folder = MlxLmDir() + "/" + fixture;
    auto checkpoint = Checkpoint::Open(folder);
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    auto ref = SafetensorsFile::Open(folder + "-reference.safetensors");
    ASSERT_TRUE(ref.ok());

    // Served with --model, and uploaded into a server that had none of it.
    auto served = Start({"--model", folder});
    ASSERT_TRUE(served->WaitServing()) << served->Log();
    auto uploaded = Start({"--state-dir", StateDir() + fixture});
    ASSERT_TRUE(uploaded->WaitServing()) << uploaded->Log();
    CliResult up = RunCli("upload --target " + uploaded->target() + " --in " + folder,
                          dir_.File("upload.log"));
    ASSERT_EQ(up.exit_code, 0) << up.out;

    for (ServerProcess* server : {served.get(), uploaded.get()}) {
      auto client = Client::Connect(server->target());
      auto layers = Layers(*client);
      ASSERT_EQ(layers.size(), checkpoint->get()->layers().size());
      for (const CheckpointLayer& layer : (*checkpoint)->layers()) {
        SCOPED_TRACE(layer.name);
        const v1::LayerInfo& info = layers[layer.name];
        auto params = FromProto(info.spec());
        ASSERT_TRUE(params.ok());
        EXPECT_EQ(*params, layer.params);
        EXPECT_EQ(info.origin().kind(), server == served.get() ? v1::MODEL : v1::UPLOAD);
        const TensorInfo* x = (*ref)->Find(layer.name + ".x");
        if (x == nullptr) continue;  // the embedding: served, no reference
        const TensorInfo* want_t = (*ref)->Find(layer.name + ".y_f32ref");
        v1::ForwardRequest request;
        request.set_layer(layer.name);
        request.mutable_input()->set_dtype(v1::F32);
        for (int64_t d : x->shape) request.mutable_input()->add_shape(d);
        request.mutable_input()->set_data((*ref)->Data(*x).data(), x->size);
        auto r = client->Forward(request);
        ASSERT_TRUE(r.ok()) << r.status();
        std::vector<float> got(want_t->elements()), want(want_t->elements());
        ASSERT_EQ(r->output().data().size(), want_t->size);
        std::memcpy(got.data(), r->output().data().data(), want_t->size);
        std::memcpy(want.data(), (*ref)->Data(*want_t).data(), want_t->size);
        EXPECT_LE(NormalisedError(got, want), 1e-5);
      }
    }
  }
}

TEST_F(LifecycleTest, AMalformedFolderStopsTheServerBeforeServing) {
  const std::string folder = dir_.File("broken");
  fs::copy(MlxLmDir() + "/tiny-llama-mixed", folder);
  for (const auto& e : fs::directory_iterator(folder)) {
    fs::permissions(e.path(), fs::perms::owner_read | fs::perms::owner_write);
  }
  std::ofstream(folder + "/config.json", std::ios::trunc) << "{not json";
  auto server = Start({"--model", folder});
  EXPECT_EQ(ExitWithin(*server), 1);
  EXPECT_THAT(server->Log(), AllOf(HasSubstr(folder), HasSubstr("config.json"),
                                   Not(HasSubstr("listening"))));

  // Two sources of one layer name: an error naming both.
  auto twice = Start({"--model", MlxLmDir() + "/tiny-llama-4bit", "--model",
                      MlxLmDir() + "/tiny-llama-mixed"});
  EXPECT_EQ(ExitWithin(*twice), 1);
  EXPECT_THAT(twice->Log(), AllOf(HasSubstr("is in both"), HasSubstr("tiny-llama-4bit"),
                                  HasSubstr("tiny-llama-mixed")));
}

TEST_F(LifecycleTest, UploadValidatesFirstAndReportsAPartWayRefusal) {
  auto server = Start({"--state-dir", StateDir()});
  ASSERT_TRUE(server->WaitServing()) << server->Log();
  auto client = Client::Connect(server->target());
  // A name the folder also holds, taken beforehand: the upload stops there.
  ASSERT_TRUE(QuantizeLayer(*client, "model.layers.0.mlp.up_proj", 1).ok());
  const std::string folder = MlxLmDir() + "/tiny-llama-4bit";
  CliResult r = RunCli("upload --target " + server->target() + " --in " + folder,
                       dir_.File("upload.log"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.out, AllOf(HasSubstr("ALREADY_EXISTS"), HasSubstr("model.layers.0.mlp.up_proj"),
                           HasSubstr("stopped after 4 of 16 layers"),
                           HasSubstr("published: lm_head, model.embed_tokens, "
                                     "model.layers.0.mlp.down_proj, model.layers.0.mlp.gate_proj"),
                           HasSubstr("not published: model.layers.0.mlp.up_proj, "
                                     "model.layers.0.self_attn.k_proj")));
  EXPECT_EQ(Layers(*client).size(), 5u);

  // A malformed folder is refused before the first RPC.
  const std::string broken = dir_.File("broken");
  fs::copy(MlxLmDir() + "/tiny-llama-mixed", broken);
  fs::permissions(broken + "/model.safetensors.index.json",
                  fs::perms::owner_read | fs::perms::owner_write);
  std::ofstream(broken + "/model.safetensors.index.json", std::ios::trunc)
      << R"({"weight_map": {"lm_head.weight": "model-00009-of-00009.safetensors"}})";
  r = RunCli("upload --replace --target " + server->target() + " --in " + broken,
             dir_.File("upload2.log"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.out, AllOf(HasSubstr("model-00009-of-00009.safetensors"), HasSubstr("lm_head.weight")));
  EXPECT_EQ(Layers(*client).size(), 5u);
}

TEST_F(LifecycleTest, StateDirKeepsUploadsAcrossSigkill) {
  std::map<std::string, v1::LayerInfo> before;
  std::map<std::string, std::string> outputs;
  // As odd as core/names.h allows: slashes, a colon, dots, 250 bytes.
  const std::string odd = "a/b:c/" + std::string(240, 'x') + "/-._";
  {
    auto server = Start({"--state-dir", StateDir()});
    ASSERT_TRUE(server->WaitServing()) << server->Log();
    auto client = Client::Connect(server->target());
    EXPECT_TRUE(Layers(*client).empty());  // no demo beside a state dir
    ASSERT_TRUE(QuantizeLayer(*client, odd, 1).ok());
    ASSERT_TRUE(LoadLayer(*client, "q", 2).ok());
    ASSERT_TRUE(QuantizeLayer(*client, "r", 3).ok());
    auto replaced = QuantizeLayer(*client, "r", 4, /*replace=*/true);
    ASSERT_TRUE(replaced.ok());
    ASSERT_TRUE(QuantizeLayer(*client, "gone", 5).ok());
    ASSERT_TRUE(client->Unload("gone").ok());
    before = Layers(*client);
    for (const auto& [name, info] : before) outputs[name] = Forward(*client, name);
    EXPECT_EQ(server->Stop(SIGKILL), -1);
  }
  EXPECT_EQ(StateFiles().size(), 5u);  // LOCK, VERSION and three layers
  auto server = Start({"--state-dir", StateDir()});
  ASSERT_TRUE(server->WaitServing()) << server->Log();
  auto client = Client::Connect(server->target());
  auto after = Layers(*client);
  ASSERT_EQ(after.size(), 3u);
  uint64_t largest = 0;
  for (const auto& [name, info] : before) {
    SCOPED_TRACE(name.substr(0, 20));
    ASSERT_TRUE(after.count(name));
    const v1::LayerInfo& a = after[name];
    EXPECT_EQ(a.version(), info.version());
    EXPECT_EQ(a.spec().SerializeAsString(), info.spec().SerializeAsString());
    EXPECT_EQ(a.out_features(), info.out_features());
    EXPECT_EQ(a.has_bias(), info.has_bias());
    EXPECT_EQ(a.weight_dtype(), info.weight_dtype());
    EXPECT_EQ(a.error_report().SerializeAsString(), info.error_report().SerializeAsString());
    EXPECT_EQ(a.origin().kind(), v1::STATE);
    EXPECT_EQ(Forward(*client, name), outputs[name]);
    largest = std::max(largest, info.version());
  }
  // Versions continue above the largest stored one.
  auto next = QuantizeLayer(*client, "next", 6);
  ASSERT_TRUE(next.ok());
  EXPECT_GT(next->version(), largest);
  EXPECT_GT(next->version(), 5u);  // "gone" had version 5 and is never reused

  // A second server on the same folder is refused, naming the holder.
  auto second = Start({"--state-dir", StateDir()});
  EXPECT_EQ(ExitWithin(*second), 1);
  EXPECT_THAT(second->Log(), AllOf(HasSubstr(StateDir()), HasSubstr("pid")));
}

TEST_F(LifecycleTest, ACrashAtEachPointLeavesTheLayerBeforeOrAfter) {
  struct Case {
    const char* point;
    bool unload;
  };
  for (const Case& c : {Case{"store-after-temp", false}, Case{"store-after-rename", false},
                        Case{"store-after-remove-old", false}, Case{"catalog-after-store", false},
                        Case{"store-before-remove", true}, Case{"catalog-after-remove", true}}) {
    SCOPED_TRACE(c.point);
    fs::remove_all(StateDir());
    std::string old_output, new_output;
    {
      auto server = Start({"--state-dir", StateDir()});
      ASSERT_TRUE(server->WaitServing()) << server->Log();
      auto client = Client::Connect(server->target());
      ASSERT_TRUE(QuantizeLayer(*client, "x", 10).ok());
      old_output = Forward(*client, "x");
      ASSERT_TRUE(QuantizeLayer(*client, "y", 11).ok());
      new_output = Forward(*client, "y");  // what x holds after the replace
      server->Stop(SIGKILL);
    }
    {
      ServerProcess::Options crash;
      crash.env = {{"QLINEAR_CRASH_AT", c.point}};
      auto server = Start({"--state-dir", StateDir()}, crash);
      ASSERT_TRUE(server->WaitServing()) << server->Log();
      auto client = Client::Connect(server->target());
      absl::Status s = c.unload ? client->Unload("x") : QuantizeLayer(*client, "x", 11, true).status();
      EXPECT_FALSE(s.ok());  // the server died before answering
      int exit_status = 0;
      ASSERT_TRUE(server->WaitAtMost(std::chrono::seconds(30), &exit_status))
          << "the server did not crash; the call returned " << s << "\n" << server->Log();
      EXPECT_EQ(exit_status, -1);
      EXPECT_THAT(server->Log(), HasSubstr(c.point));
    }
    auto server = Start({"--state-dir", StateDir()});
    ASSERT_TRUE(server->WaitServing()) << server->Log();
    EXPECT_THAT(server->Log(), Not(HasSubstr("warning")));
    auto client = Client::Connect(server->target());
    auto layers = Layers(*client);
    if (c.unload) {
      if (layers.count("x")) {
        EXPECT_EQ(Forward(*client, "x"), old_output);
      }
    } else {
      ASSERT_TRUE(layers.count("x"));
      const std::string got = Forward(*client, "x");
      EXPECT_TRUE(got == old_output || got == new_output);
    }
  }
}

TEST_F(LifecycleTest, SigkillDuringAnUploadLeavesNothing) {
  auto server = Start({"--state-dir", StateDir()});
  ASSERT_TRUE(server->WaitServing()) << server->Log();
  ChannelOptions plain;
  plain.target = server->target();
  auto channel = *MakeChannel(plain);
  auto admin = v1::Admin::NewStub(channel);
  grpc::ClientContext context;
  v1::UploadResponse response;
  auto writer = admin->Quantize(&context, &response);
  v1::QuantizeChunk chunk;
  v1::QuantizeHeader* h = chunk.mutable_header();
  h->set_name("half");
  h->set_out_features(64);
  h->set_in_features(64);
  h->set_dtype(v1::F32);
  ASSERT_TRUE(writer->Write(chunk));
  const std::vector<float> w = Random(32 * 64, 1);
  chunk.Clear();
  chunk.set_weight(w.data(), w.size() * 4);  // half of the rows
  ASSERT_TRUE(writer->Write(chunk));
  // The server has the chunks once a later call is answered in order.
  auto client = Client::Connect(server->target());
  EXPECT_TRUE(Layers(*client).empty());
  server->Stop(SIGKILL);
  EXPECT_EQ(StateFiles(), std::vector<std::string>{"LOCK"});
  auto again = Start({"--state-dir", StateDir()});
  ASSERT_TRUE(again->WaitServing()) << again->Log();
  EXPECT_TRUE(Layers(*Client::Connect(again->target())).empty());
}

TEST_F(LifecycleTest, ADamagedFileIsNamedAndTheRestIsServed) {
  {
    auto server = Start({"--state-dir", StateDir()});
    ASSERT_TRUE(server->WaitServing()) << server->Log();
    auto client = Client::Connect(server->target());
    ASSERT_TRUE(QuantizeLayer(*client, "keep", 1).ok());
    ASSERT_TRUE(QuantizeLayer(*client, "torn", 2).ok());
    server->Stop(SIGKILL);
  }
  std::string torn;
  for (const std::string& f : StateFiles()) {
    if (f.find("torn") != std::string::npos) torn = StateDir() + "/" + f;
  }
  ASSERT_FALSE(torn.empty());
  fs::resize_file(torn, fs::file_size(torn) / 2);
  auto server = Start({"--state-dir", StateDir()});
  ASSERT_TRUE(server->WaitServing()) << server->Log();
  EXPECT_THAT(server->Log(), AllOf(HasSubstr("warning"), HasSubstr(torn)));
  auto layers = Layers(*Client::Connect(server->target()));
  EXPECT_EQ(layers.size(), 1u);
  EXPECT_TRUE(layers.count("keep"));
}

TEST_F(LifecycleTest, StateDirWinsOverModelAndCountsAgainstTheBudget) {
  const std::string folder = MlxLmDir() + "/tiny-llama-4bit";
  std::string model_output;
  {
    auto server = Start({"--model", folder, "--state-dir", StateDir()});
    ASSERT_TRUE(server->WaitServing()) << server->Log();
    auto client = Client::Connect(server->target());
    model_output = Forward(*client, "lm_head", 256);
    // An explicit upload replaces the folder's lm_head; an unload of a
    // folder layer is undone by the next start (the folder is the source).
    v1::QuantizeHeader h;
    h.set_name("lm_head");
    h.set_out_features(512);
    h.set_in_features(256);
    h.set_dtype(v1::F32);
    h.set_replace(true);
    const std::vector<float> w = Random(512 * 256, 7, 0.02f);
    ASSERT_TRUE(client->Quantize(h, Span(w), {}).ok());
    ASSERT_TRUE(client->Unload("model.norm").code() == absl::StatusCode::kNotFound);
    ASSERT_TRUE(client->Unload("model.layers.0.mlp.up_proj").ok());
    server->Stop(SIGKILL);
  }
  auto server = Start({"--model", folder, "--state-dir", StateDir()});
  ASSERT_TRUE(server->WaitServing()) << server->Log();
  EXPECT_THAT(server->Log(), AllOf(HasSubstr("'lm_head'"), HasSubstr("state dir")));
  auto client = Client::Connect(server->target());
  auto layers = Layers(*client);
  EXPECT_EQ(layers.size(), 16u);
  EXPECT_EQ(layers["lm_head"].origin().kind(), v1::STATE);
  EXPECT_EQ(layers["model.layers.0.mlp.up_proj"].origin().kind(), v1::MODEL);
  EXPECT_NE(Forward(*client, "lm_head", 256), model_output);
  server->Stop(SIGKILL);

  // A state dir that does not fit the budget fails start-up, naming what
  // does not fit.
  v1::QuantizeHeader big;
  big.set_name("big");
  big.set_out_features(2048);
  big.set_in_features(1024);
  big.set_dtype(v1::F32);
  {
    auto s = Start({"--state-dir", StateDir() + "2"});
    ASSERT_TRUE(s->WaitServing()) << s->Log();
    const std::vector<float> w = Random(2048 * 1024, 8, 0.02f);
    ASSERT_TRUE(Client::Connect(s->target())->Quantize(big, Span(w), {}).ok());
    s->Stop(SIGKILL);
  }
  auto small = Start({"--state-dir", StateDir() + "2", "--max-memory-mb", "1"});
  EXPECT_EQ(ExitWithin(*small), 1);
  EXPECT_THAT(small->Log(), AllOf(HasSubstr("layer 'big'"), HasSubstr("state-dir")));
}

TEST_F(LifecycleTest, AFailedStoreWritePublishesNothing) {
  // Writes past 64 KiB fail with EFBIG, as they would on a full disk.
  ServerProcess::Options limited;
  limited.max_file_bytes = 64 << 10;
  auto server = Start({"--state-dir", StateDir()}, limited);
  ASSERT_TRUE(server->WaitServing()) << server->Log();
  auto client = Client::Connect(server->target());
  ASSERT_TRUE(QuantizeLayer(*client, "small", 1).ok());
  v1::QuantizeHeader h;
  h.set_name("big");
  h.set_out_features(512);
  h.set_in_features(512);
  h.set_dtype(v1::F32);
  const std::vector<float> w = Random(512 * 512, 2, 0.05f);
  auto big = client->Quantize(h, Span(w), {});
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(big.status().message(), AllOf(HasSubstr("state dir"), HasSubstr("'big'")));
  auto layers = Layers(*client);
  EXPECT_EQ(layers.size(), 1u);
  EXPECT_EQ(client->GetLayer("big").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(StateFiles().size(), 2u);  // LOCK and "small"
}

}  // namespace
}  // namespace qlinear
