// Fuzz targets quantize_stream_fuzz and load_stream_fuzz: one Quantize or
// LoadQuantized upload stream (server/upload_stream.h, built with
// QLINEAR_FUZZ_RPC = kQuantize or kLoadQuantized) driven in process, no
// socket, against an Engine with a 64 MiB memory budget.
//
// Input parts (fuzz_input.h): the serialized chunk messages, in order. Each
// goes to OnMessage until one fails; when all pass, Finish.
//
// Checks the stream's contract: a message that does not parse, or has no
// part, fails the stream with INVALID_ARGUMENT; failures are INVALID_ARGUMENT,
// ALREADY_EXISTS or RESOURCE_EXHAUSTED with a message; a dead stream keeps
// answering its first failure; a failed stream publishes nothing and
// releases its reservation (the catalog is empty and holds 0 bytes again);
// a published layer has the header's name and is the only one. The layer
// is unloaded after each input, so inputs do not depend on each other.
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "core/engine/engine.h"
#include "fuzz/fuzz_input.h"
#include "server/upload_stream.h"

#ifndef QLINEAR_FUZZ_RPC
#error "build with -DQLINEAR_FUZZ_RPC=kQuantize or kLoadQuantized"
#endif

namespace qlinear::fuzz {
namespace {

constexpr UploadStream::Rpc kRpc = UploadStream::Rpc::QLINEAR_FUZZ_RPC;
using Chunk = std::conditional_t<kRpc == UploadStream::Rpc::kQuantize, v1::QuantizeChunk,
                                 v1::LoadQuantizedChunk>;

Engine& TheEngine() {
  static Engine* engine = [] {
    Engine::Options options;
    options.threads = 1;
    options.max_memory_bytes = 64 << 20;
    auto e = Engine::Create(options);
    FUZZ_CHECK(e.ok(), "Engine::Create: " + e.status().ToString());
    return e->release();
  }();
  return *engine;
}

void ExpectFailure(const absl::Status& status, absl::string_view what) {
  const auto code = status.code();
  FUZZ_CHECK(code == absl::StatusCode::kInvalidArgument ||
                 code == absl::StatusCode::kAlreadyExists ||
                 code == absl::StatusCode::kResourceExhausted,
             absl::StrCat(what, " failed with an unexpected code: ", status.ToString()));
  FUZZ_CHECK(!status.message().empty(), absl::StrCat(what, " failed without a message"));
}

void ExpectEmpty(Engine& engine, absl::string_view when) {
  FUZZ_CHECK(engine.catalog().List().empty(), absl::StrCat("a layer is published ", when));
  FUZZ_CHECK(engine.catalog().bytes_held() == 0,
             absl::StrCat(engine.catalog().bytes_held(), " bytes still held ", when));
}

void Run(const uint8_t* data, size_t size) {
  Engine& engine = TheEngine();
  const std::vector<absl::string_view> parts = SplitParts(data, size);
  absl::Status failed;
  {
    UploadStream stream(&engine, kRpc);
    for (size_t i = 0; i < parts.size() && failed.ok(); ++i) {
      failed = stream.OnMessage(parts[i]);
      // Bytes that do not parse, or a message with no part, end the stream.
      Chunk chunk;
      if (!chunk.ParseFromArray(parts[i].data(), static_cast<int>(parts[i].size()))) {
        FUZZ_CHECK(failed.code() == absl::StatusCode::kInvalidArgument && stream.malformed(),
                   absl::StrCat("message ", i + 1, " does not parse, yet the stream answered ",
                                failed.ToString()));
      } else if (chunk.part_case() == Chunk::PART_NOT_SET) {
        FUZZ_CHECK(failed.code() == absl::StatusCode::kInvalidArgument,
                   absl::StrCat("message ", i + 1, " has no part, yet the stream answered ",
                                failed.ToString()));
      }
    }
    if (failed.ok()) {
      auto layer = stream.Finish();
      if (layer.ok()) {
        const size_t listed = engine.catalog().List().size();
        FUZZ_CHECK(listed == 1, absl::StrCat(listed, " layers after one upload"));
        FUZZ_CHECK((*layer)->info().name == stream.name(),
                   "published '" + (*layer)->info().name + "', the header said '" +
                       stream.name() + "'");
        FUZZ_CHECK(engine.catalog().Unload(stream.name()).ok(), "cannot unload the upload");
        // The layer's bytes go with its last reference (ours).
        FUZZ_CHECK(layer->use_count() == 1,
                   absl::StrCat("the unloaded layer has ", layer->use_count() - 1,
                                " references besides ours"));
        const uint64_t held = (*layer)->info().bytes_held;
        layer->reset();
        FUZZ_CHECK(engine.catalog().bytes_held() == 0,
                   absl::StrCat(engine.catalog().bytes_held(), " bytes held after the layer of ",
                                held, " bytes went"));
        ExpectEmpty(engine, "after unloading the upload");
        auto again = stream.Finish();
        FUZZ_CHECK(!again.ok(), "Finish published twice");
        return;
      }
      failed = layer.status();
    }
    ExpectFailure(failed, "the stream");
    // A dead stream keeps its first failure.
    const absl::Status later = stream.OnMessage(parts[0]);
    FUZZ_CHECK(later == failed, "a dead stream answered " + later.ToString() + " after " +
                                    failed.ToString());
    auto finish = stream.Finish();
    FUZZ_CHECK(!finish.ok() && finish.status() == failed,
               "Finish on a dead stream answered " + finish.status().ToString());
  }
  ExpectEmpty(engine, "after a failed upload");
}

}  // namespace
}  // namespace qlinear::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  qlinear::fuzz::Run(data, size);
  return 0;
}
