// Fuzz target: Forward request validation into the engine, in process.
// Bytes -> ParseForward (server/wire_forward.h) -> Engine::Submit -> wait
// for the answer -> BuildForwardResponse: the server's Forward path without
// gRPC. The engine (one compute thread) serves two small layers:
//   "k256": affine b4 g64, N=16, K=256, float32 scales, with a bias;
//   "k384": mxfp4 g32, N=8, K=384.
// (Seeds built by fuzz_seeds from the golden x rows name them by K.)
//
// Input: one serialized ForwardRequest.
//
// Checks: ParseForward fails only with INVALID_ARGUMENT and a message;
// Submit fails only with NOT_FOUND, INVALID_ARGUMENT or RESOURCE_EXHAUSTED
// (the 1 MiB answer limit) and then never calls `done`; an accepted request
// is answered exactly once, OK with rows x N values of the output dtype.
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "core/engine/engine.h"
#include "core/quantize.h"
#include "fuzz/fuzz_input.h"
#include "server/wire_forward.h"

namespace qlinear::fuzz {
namespace {

void Publish(Engine& engine, const std::string& name, QuantParams params, int64_t n, int64_t k,
             bool bias) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f / 64);
  std::vector<float> w(static_cast<size_t>(n * k));
  for (float& v : w) v = normal(rng);
  auto q = Quantize(params, DType::kF32, w.data(), n, k);
  FUZZ_CHECK(q.ok(), "Quantize " + name + ": " + q.status().ToString());
  LoadedLayer layer;
  layer.name = name;
  layer.q = *std::move(q);
  if (bias) layer.bias.assign(static_cast<size_t>(n), 0.5f);
  auto published = engine.catalog().Publish(layer, LayerOrigin{}, /*replace=*/false);
  FUZZ_CHECK(published.ok(), "Publish " + name + ": " + published.status().ToString());
}

Engine& TheEngine() {
  static Engine* engine = [] {
    Engine::Options options;
    options.threads = 1;
    auto e = Engine::Create(options);
    FUZZ_CHECK(e.ok(), "Engine::Create: " + e.status().ToString());
    Publish(**e, "k256", {QuantMode::kAffine, 4, 64}, 16, 256, true);
    Publish(**e, "k384", {QuantMode::kMxfp4, 4, 32}, 8, 384, false);
    return e->release();
  }();
  return *engine;
}

void Run(const uint8_t* data, size_t size) {
  Engine& engine = TheEngine();
  ForwardLimits limits;
  limits.max_answer_bytes = 1 << 20;
  ParsedForward parsed;
  absl::Status status =
      ParseForward(absl::string_view(reinterpret_cast<const char*>(data), size), limits, &parsed);
  if (!status.ok()) {
    FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument,
               "ParseForward failed with " + status.ToString());
    FUZZ_CHECK(!status.message().empty(), "ParseForward failed without a message");
    return;
  }
  absl::Notification answered;
  Engine::ForwardResult result;
  int calls = 0;
  status = engine.Submit(parsed.request, [&](Engine::ForwardResult r) {
    ++calls;
    result = std::move(r);
    answered.Notify();
  });
  if (!status.ok()) {
    const auto code = status.code();
    FUZZ_CHECK(code == absl::StatusCode::kNotFound || code == absl::StatusCode::kInvalidArgument ||
                   code == absl::StatusCode::kResourceExhausted,
               "Submit failed with " + status.ToString());
    FUZZ_CHECK(!status.message().empty(), "Submit failed without a message");
    FUZZ_CHECK(calls == 0, "done ran for a refused request");
    return;
  }
  answered.WaitForNotification();
  FUZZ_CHECK(calls == 1, absl::StrCat("done ran ", calls, " times"));
  FUZZ_CHECK(result.status.ok(), "an accepted request was answered " + result.status.ToString());
  const size_t expected = static_cast<size_t>(parsed.request.rows * result.n) *
                          DTypeSize(parsed.request.y_dtype);
  FUZZ_CHECK(result.y.size() == expected,
             absl::StrCat("answer holds ", result.y.size(), " bytes; expected ", expected));
  v1::ForwardResponse response;
  BuildForwardResponse(parsed, result, &response);
  FUZZ_CHECK(response.output().data().size() == expected, "the response lost bytes");
  FUZZ_CHECK(response.ByteSizeLong() <= limits.max_answer_bytes,
             absl::StrCat("the response is ", response.ByteSizeLong(), " bytes, over the limit"));
}

}  // namespace
}  // namespace qlinear::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  qlinear::fuzz::Run(data, size);
  return 0;
}
