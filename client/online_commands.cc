#include "client/online_commands.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/channel_flags.h"
#include "client/client.h"
#include "client/command.h"
#include "client/npy.h"
#include "client/printable.h"
#include "core/checkpoint.h"
#include "core/flags.h"
#include "core/precision.h"
#include "core/half.h"
#include "core/mlx_file.h"
#include "core/safetensors.h"
#include "google/protobuf/util/json_util.h"
#include "proto/wire.h"

namespace qlinear {
namespace {



// Common flags: the connection's (client/channel_flags.h) and --timeout-s.
std::set<std::string> With(std::set<std::string> s) {
  s.insert(ChannelFlagNames().begin(), ChannelFlagNames().end());
  s.insert("timeout-s");
  return s;
}

// Connect makes one Client for --target (a list or dns:/// balances:
// client/channel.h); `replica`, when given, replaces the target.
absl::StatusOr<std::unique_ptr<Client>> Connect(const Flags& flags, const std::string* replica = nullptr) {
  Client::Options options;
  auto timeout = flags.GetInt("timeout-s");
  if (!timeout.ok()) return timeout.status();
  if (*timeout) {
    if (**timeout < 1 || **timeout > 86400) {
      return absl::InvalidArgumentError(absl::StrCat("--timeout-s must be in [1, 86400]; got ", **timeout));
    }
    options.timeout = std::chrono::seconds(**timeout);
  }
  auto channel = ChannelOptionsFromFlags(flags, [](const char* name) { return std::getenv(name); });
  if (!channel.ok()) return channel.status();
  if (replica != nullptr) channel->target = *replica;
  return Client::Connect(*channel, options);
}

// Replicas are --target's replicas (client/channel.h's ParseTarget). Admin
// commands (upload, unload) act on each in turn; Data commands balance.
absl::StatusOr<std::vector<std::string>> Replicas(const Flags& flags) {
  auto parsed = ParseTarget(flags.Get("target").value_or(ChannelOptions().target));
  if (!parsed.ok()) return parsed.status();
  return parsed->replicas;
}

// EachReplica runs `act` on a Client of each replica of --target in turn,
// all of them even after one fails, and returns the exit status: 0 when
// all succeeded; else 1, after a line naming those that failed (with
// `act`'s error) and those that succeeded, which keep what they got.
// With one replica it is `act` on it, with no extra line.
int EachReplica(const Command& cmd, const Flags& flags,
                const std::function<absl::Status(Client&)>& act) {
  auto replicas = Replicas(flags);
  if (!replicas.ok()) return cmd.Usage(replicas.status().message());
  std::vector<std::string> done, failed;
  for (size_t r = 0; r < replicas->size(); ++r) {
    const std::string& replica = (*replicas)[r];
    auto client = Connect(flags, replicas->size() > 1 ? &replica : nullptr);
    if (!client.ok()) return cmd.Usage(client.status().message());
    if (replicas->size() > 1) {
      std::printf("replica %s (%zu of %zu):\n", replica.c_str(), r + 1, replicas->size());
      std::fflush(stdout);
    }
    absl::Status s = act(**client);
    if (s.ok()) {
      done.push_back(replica);
    } else {
      failed.push_back(absl::StrCat(replica, " (", absl::StatusCodeToString(s.code()), ": ",
                                    Printable(s.message()), ")"));
    }
  }
  if (failed.empty()) return 0;
  if (replicas->size() > 1) {
    std::fprintf(stderr, "qlinear %s: failed on %zu of %zu replicas: %s; succeeded on: %s "
                 "(not undone there)\n", cmd.name, failed.size(), replicas->size(),
                 absl::StrJoin(failed, ", ").c_str(),
                 done.empty() ? "none" : absl::StrJoin(done, ", ").c_str());
  }
  return 1;
}

// OriginText is ", from upload" or ", from model PATH" (empty when unknown).
std::string OriginText(const v1::LayerOrigin& origin) {
  if (origin.kind() == v1::ORIGIN_UNSPECIFIED) return "";
  return absl::StrCat(", from ", absl::AsciiStrToLower(v1::OriginKind_Name(origin.kind())),
                      origin.source().empty() ? "" : " ", Printable(origin.source()));
}

std::string Describe(const v1::LayerInfo& l) {
  std::string s = absl::StrFormat("%s: [%d, %d] %s b%d g%d, version %d, %d bytes held%s",
                                  Printable(l.name()), l.out_features(), l.in_features(),
                                  absl::AsciiStrToLower(v1::Mode_Name(l.spec().mode())),
                                  l.spec().bits(), l.spec().group_size(), l.version(),
                                  l.bytes_held(), l.has_bias() ? ", bias" : "");
  absl::StrAppend(&s, OriginText(l.origin()));
  if (l.has_error_report()) {
    absl::StrAppendFormat(&s, "  max_abs_err=%.4g rms_err=%.4g rel_fro_err=%.4g",
                          l.error_report().max_abs(), l.error_report().rms(),
                          l.error_report().rel_fro());
  }
  return s;
}


}  // namespace

int RunUpload(int argc, char** argv) {
  const Command cmd{"upload", "--in FILE.safetensors|FOLDER [--target HOST:PORT[,HOST:PORT...]] [--bits B] "
                              "[--group-size G] [--mode M] [--replace] [--timeout-s S]"};
  auto flags = Flags::Parse(argc, argv, 2, With({"in", "bits", "group-size", "mode"}), {"replace"});
  if (!flags.ok()) return cmd.Usage(flags.status().message());
  const auto in = flags->Get("in");
  if (!in) return cmd.Usage("--in is required");
  auto overrides = ParseQuantFlags(*flags);
  if (!overrides.ok()) return cmd.Usage(overrides.status().message());
  auto params = MakeQuantParams(*overrides);
  if (!params.ok()) return cmd.Usage(params.status().message());
  // Checked before the checkpoint is read; each replica connects in turn.
  if (auto client = Connect(*flags); !client.ok()) return cmd.Usage(client.status().message());
  CheckpointOptions options;
  options.overrides = *overrides;
  options.float_params = *params;
  auto checkpoint = Checkpoint::Open(*in, options);
  if (!checkpoint.ok()) return cmd.FailRpc(checkpoint.status());
  const Checkpoint& c = **checkpoint;
  for (const std::string& w : c.warnings()) {
    std::fprintf(stderr, "qlinear upload: warning: %s\n", w.c_str());
  }
  for (const SkippedTensor& t : c.skipped()) {  // as mlx-lm and `quantize` leave it
    std::fprintf(stderr, "qlinear upload: warning: '%s' %s skipped: %s\n", t.tensor.c_str(),
                 c.Find(t.tensor)->ShapeString().c_str(), t.reason.c_str());
  }
  if (c.layers().empty()) {
    return cmd.FailRpc(absl::InvalidArgumentError(
        absl::StrCat("'", *in, "' holds no 2-D float .weight tensor and no quantized triplet")));
  }
  // The whole checkpoint is checked before the first RPC, so that a bad
  // tensor never leaves half a model on the server.
  for (const CheckpointLayer& layer : c.layers()) {
    absl::Status valid = c.Validate(layer);
    if (!valid.ok()) return cmd.FailRpc(valid);
    if (!layer.quantized && layer.bias != nullptr && layer.bias->dtype != layer.weight->dtype) {
      return cmd.FailRpc(absl::InvalidArgumentError(absl::StrCat(
          "'", layer.bias->name, "' is ", DTypeName(layer.bias->dtype), " but the weight is ",
          DTypeName(layer.weight->dtype), "; Quantize sends both in one dtype")));
    }
  }
  const bool tty = isatty(STDERR_FILENO);
  auto progress = [&](const std::string& layer) -> Client::Progress {
    if (!tty) return {};
    return [layer](size_t sent, size_t total) {
      std::fprintf(stderr, "\r%s: %.1f / %.1f MB", layer.c_str(), sent / 1e6, total / 1e6);
      if (sent == total) std::fprintf(stderr, "\r\033[K");
    };
  };
  // Several replicas: the whole checkpoint to each, one after another.
  return EachReplica(cmd, *flags, [&](Client& client) -> absl::Status {
    std::vector<std::string> published;
    for (size_t i = 0; i < c.layers().size(); ++i) {
      const CheckpointLayer& layer = c.layers()[i];
      absl::StatusOr<v1::LayerInfo> info;
      if (layer.quantized) {
        v1::LoadQuantizedHeader h;
        h.set_name(layer.name);
        h.set_out_features(layer.n);
        h.set_in_features(layer.k);
        *h.mutable_spec() = ToProto(layer.params);
        h.set_scales_dtype(ToProto(layer.scales->dtype));
        h.set_has_bias(layer.bias != nullptr);
        if (layer.bias != nullptr) h.set_bias_dtype(ToProto(layer.bias->dtype));
        h.set_replace(flags->Has("replace"));
        info = client.LoadQuantized(
            h, c.Data(*layer.weight), c.Data(*layer.scales),
            layer.biases != nullptr ? c.Data(*layer.biases) : absl::Span<const uint8_t>(),
            layer.bias != nullptr ? c.Data(*layer.bias) : absl::Span<const uint8_t>(),
            progress(layer.name));
      } else {
        v1::QuantizeHeader h;
        h.set_name(layer.name);
        h.set_out_features(layer.n);
        h.set_in_features(layer.k);
        h.set_dtype(ToProto(layer.weight->dtype));
        *h.mutable_spec() = ToProto(layer.params);
        h.set_has_bias(layer.bias != nullptr);
        h.set_replace(flags->Has("replace"));
        info = client.Quantize(
            h, c.Data(*layer.weight),
            layer.bias != nullptr ? c.Data(*layer.bias) : absl::Span<const uint8_t>(),
            progress(layer.name));
      }
      if (!info.ok()) {
        std::vector<std::string> rest;
        for (size_t j = i; j < c.layers().size(); ++j) rest.push_back(c.layers()[j].name);
        std::fprintf(stderr, "qlinear upload: %s: %s: %s\n",
                     absl::StatusCodeToString(info.status().code()).c_str(), layer.name.c_str(),
                     Printable(info.status().message()).c_str());
        std::fprintf(stderr, "qlinear upload: stopped after %zu of %zu layers; published: %s\n",
                     published.size(), c.layers().size(),
                     published.empty() ? "none" : absl::StrJoin(published, ", ").c_str());
        std::fprintf(stderr, "qlinear upload: not published: %s\n", absl::StrJoin(rest, ", ").c_str());
        return info.status();
      }
      std::printf("%s\n", Describe(*info).c_str());
      published.push_back(layer.name);
    }
    return absl::OkStatus();
  });
}

int RunForward(int argc, char** argv) {
  const Command cmd{"forward", "--layer NAME (--in X.safetensors|X.npy [--key x] | --random-rows R) "
                           "[--dtype f32|f16|bf16] [--precision exact|int8|bf16] "
                           "[--out Y.safetensors|Y.npy] [--target ADDR]"};
  auto flags = Flags::Parse(argc, argv, 2,
                            With({"layer", "in", "key", "random-rows", "out", "dtype", "seed",
                                  "output-dtype", "precision"}), {});
  if (!flags.ok()) return cmd.Usage(flags.status().message());
  const auto layer = flags->Get("layer");
  if (!layer) return cmd.Usage("--layer is required");
  const auto in = flags->Get("in");
  auto random_rows = flags->GetInt("random-rows");
  if (!random_rows.ok()) return cmd.Usage(random_rows.status().message());
  if (in.has_value() == random_rows->has_value()) return cmd.Usage("give exactly one of --in and --random-rows");
  DType dtype = DType::kF32;
  if (auto d = flags->Get("dtype")) {
    auto parsed = ParseFloatDType(*d);
    if (!parsed) return cmd.Usage(absl::StrCat("--dtype must be f32, f16 or bf16; got '", *d, "'"));
    dtype = *parsed;
  }
  Precision precision = Precision::kExact;
  if (auto p = flags->Get("precision")) {
    auto parsed = ParsePrecision(*p);
    if (!parsed.ok()) return cmd.Usage(absl::StrCat("--", parsed.status().message()));
    precision = *parsed;
  }
  auto client = Connect(*flags);
  if (!client.ok()) return cmd.Usage(client.status().message());

  v1::ForwardRequest request;
  request.set_layer(*layer);
  request.set_precision(ToProto(precision));
  request.set_request_id(absl::StrCat("qlinear-cli-", getpid()));
  v1::Tensor* input = request.mutable_input();
  if (*random_rows) {
    if (**random_rows < 1 || **random_rows > 65536) return cmd.Usage("--random-rows must be in [1, 65536]");
    auto info = (*client)->GetLayer(*layer);
    if (!info.ok()) return cmd.FailRpc(info.status());
    const int64_t k = info->in_features();
    auto seed = flags->GetInt("seed");
    std::mt19937_64 rng(seed.ok() && *seed ? static_cast<uint64_t>(**seed) : 1);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::string data(static_cast<size_t>(**random_rows * k) * DTypeSize(dtype), '\0');
    for (size_t i = 0; i < static_cast<size_t>(**random_rows * k); ++i) StoreFloat(dtype, data.data(), i, normal(rng));
    input->set_dtype(ToProto(dtype));
    input->add_shape(**random_rows);
    input->add_shape(k);
    input->set_data(std::move(data));
  } else if (absl::EndsWith(*in, ".npy")) {
    auto arr = ReadNpy(*in);
    if (!arr.ok()) return cmd.FailRpc(arr.status());
    input->set_dtype(ToProto(arr->dtype));
    for (int64_t d : arr->shape) input->add_shape(d);
    input->set_data(reinterpret_cast<const char*>(arr->data.data()), arr->data.size());
  } else {
    auto file = SafetensorsFile::Open(*in);
    if (!file.ok()) return cmd.FailRpc(file.status());
    const std::string key = flags->Get("key").value_or("x");
    const TensorInfo* t = (*file)->Find(key);
    if (t == nullptr) return cmd.FailRpc(absl::NotFoundError(absl::StrCat("'", *in, "' has no tensor '", key, "'")));
    input->set_dtype(ToProto(t->dtype));
    if (!IsFloatDType(t->dtype)) {
      return cmd.FailRpc(absl::InvalidArgumentError(absl::StrCat("'", key, "' must be F32, F16 or BF16; got ", DTypeName(t->dtype))));
    }
    for (int64_t d : t->shape) input->add_shape(d);
    auto data = (*file)->Data(*t);
    input->set_data(reinterpret_cast<const char*>(data.data()), data.size());
  }
  auto response = (*client)->Forward(request);
  if (!response.ok()) return cmd.FailRpc(response.status());
  const v1::Tensor& y = response->output();
  const DType yd = FromProto(y.dtype()).value_or(DType::kF32);
  std::vector<std::string> values;
  const size_t count = y.data().size() / DTypeSize(yd);
  for (size_t i = 0; i < std::min<size_t>(count, 6); ++i) {
    values.push_back(absl::StrFormat("%.6g", LoadFloat(yd, y.data().data(), i)));
  }
  std::printf("output [%s] %s: %s%s\n", absl::StrJoin(y.shape(), ", ").c_str(),
              std::string(DTypeName(yd)).c_str(), absl::StrJoin(values, " ").c_str(),
              count > values.size() ? " ..." : "");
  const v1::ServerTiming& t = response->timing();
  const absl::StatusOr<Precision> ran = PrecisionFromProto(response->precision());
  if (!ran.ok()) {
    std::printf("precision %s (a mode this client does not know)\n",
                WireEnumName(response->precision()).c_str());
  } else {
    std::printf("precision %s%s\n", std::string(PrecisionName(*ran)).c_str(),
                *ran == precision ? ""
                                  : absl::StrCat(" (", PrecisionName(precision),
                                                 " asked; this layer runs it as ",
                                                 PrecisionName(*ran), ")")
                                        .c_str());
  }
  std::printf("layer version %llu; server: queue %lld us, compute %lld us, batch of %lld rows / %lld requests\n",
              static_cast<unsigned long long>(response->layer_version()),
              static_cast<long long>(t.queue_us()), static_cast<long long>(t.compute_us()),
              static_cast<long long>(t.batch_rows()), static_cast<long long>(t.batch_requests()));
  if (auto out = flags->Get("out")) {
    std::vector<int64_t> shape(y.shape().begin(), y.shape().end());
    absl::Status written;
    if (absl::EndsWith(*out, ".npy")) {
      NpyArray arr;
      arr.shape = shape;
      if (yd == DType::kBF16) {  // numpy has no bfloat16: widen exactly
        arr.dtype = DType::kF32;
        arr.data.resize(count * 4);
        for (size_t i = 0; i < count; ++i) StoreFloat(DType::kF32, arr.data.data(), i, LoadFloat(yd, y.data().data(), i));
      } else {
        arr.dtype = yd;
        arr.data.assign(y.data().begin(), y.data().end());
      }
      written = WriteNpy(*out, arr);
    } else {
      written = WriteSafetensors(*out, {{"y", yd, shape, absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(y.data().data()), y.data().size())}}, {});
    }
    if (!written.ok()) return cmd.FailRpc(written);
    std::printf("wrote %s\n", out->c_str());
  }
  return 0;
}

int RunStats(int argc, char** argv) {
  const Command cmd{"stats", "[--target ADDR] [--layer NAME] [--json]"};
  auto flags = Flags::Parse(argc, argv, 2, With({"layer"}), {"json"});
  if (!flags.ok()) return cmd.Usage(flags.status().message());
  auto client = Connect(*flags);
  if (!client.ok()) return cmd.Usage(client.status().message());
  auto stats = (*client)->Stats(flags->Get("layer").value_or(""));
  if (!stats.ok()) return cmd.FailRpc(stats.status());
  if (flags->Has("json")) {
    std::string json;
    google::protobuf::util::JsonPrintOptions o;
    o.always_print_primitive_fields = true;
    o.preserve_proto_field_names = true;
    (void)google::protobuf::util::MessageToJsonString(*stats, &json, o);
    std::printf("%s\n", json.c_str());
    return 0;
  }
  const v1::ServerStats& s = stats->server();
  std::printf("server: up %.1f s, %d layers, %llu bytes held, %lld rows queued, %d threads, %s\n",
              s.uptime_s(), s.layers(), static_cast<unsigned long long>(s.bytes_held()),
              static_cast<long long>(s.queue_rows()), s.threads(), Printable(s.build_info()).c_str());
  for (const v1::LayerStats& l : stats->layers()) {
    std::vector<std::string> codes;
    for (const auto& [code, n] : l.requests_by_code()) {
      const auto rows = l.rows_by_code().find(code);
      codes.push_back(absl::StrCat(Printable(code), " ", n, " (",
                                   rows == l.rows_by_code().end() ? 0 : rows->second, " rows)"));
    }
    std::sort(codes.begin(), codes.end());
    // OK answers by the precision that ran, in the modes' order.
    std::vector<std::string> precisions;
    for (Precision p : {Precision::kExact, Precision::kInt8, Precision::kBf16}) {
      const std::string name(PrecisionName(p));
      const auto n = l.requests_by_precision().find(name);
      if (n == l.requests_by_precision().end()) continue;
      const auto rows = l.rows_by_precision().find(name);
      precisions.push_back(absl::StrCat(name, " ", n->second, " (",
                                        rows == l.rows_by_precision().end() ? 0 : rows->second,
                                        " rows)"));
    }
    std::printf("%s (version %llu, %llu bytes%s): requests %s; %llu batches, mean %.1f rows\n",
                Printable(l.name()).c_str(), static_cast<unsigned long long>(l.version()),
                static_cast<unsigned long long>(l.bytes_held()), OriginText(l.origin()).c_str(),
                codes.empty() ? "none" : absl::StrJoin(codes, ", ").c_str(),
                static_cast<unsigned long long>(l.batches()), l.batch_rows().mean());
    if (!precisions.empty()) std::printf("  OK by precision: %s\n", absl::StrJoin(precisions, ", ").c_str());
    for (const auto& [label, h] : {std::pair<const char*, const v1::Histogram*>{"queue us", &l.queue_us()},
                                   {"compute us", &l.compute_us()},
                                   {"total us", &l.total_us()}}) {
      std::printf("  %-10s p50 %-8.0f p90 %-8.0f p99 %-8.0f max %.0f\n", label, h->p50(), h->p90(),
                  h->p99(), h->max());
    }
  }
  return 0;
}

int RunList(int argc, char** argv) {
  const Command cmd{"list", "[--target ADDR]"};
  auto flags = Flags::Parse(argc, argv, 2, With({}), {});
  if (!flags.ok()) return cmd.Usage(flags.status().message());
  auto client = Connect(*flags);
  if (!client.ok()) return cmd.Usage(client.status().message());
  auto list = (*client)->ListLayers();
  if (!list.ok()) return cmd.FailRpc(list.status());
  for (const v1::LayerInfo& l : list->layers()) std::printf("%s\n", Describe(l).c_str());
  if (list->layers().empty()) std::printf("no layers loaded\n");
  return 0;
}

int RunUnload(int argc, char** argv) {
  const Command cmd{"unload", "--layer NAME [--target HOST:PORT[,HOST:PORT...]]"};
  auto flags = Flags::Parse(argc, argv, 2, With({"layer"}), {});
  if (!flags.ok()) return cmd.Usage(flags.status().message());
  const auto layer = flags->Get("layer");
  if (!layer) return cmd.Usage("--layer is required");
  if (auto client = Connect(*flags); !client.ok()) return cmd.Usage(client.status().message());
  return EachReplica(cmd, *flags, [&](Client& client) {
    absl::Status s = client.Unload(*layer);
    if (!s.ok()) {
      cmd.FailRpc(s);
      return s;
    }
    std::printf("unloaded %s\n", layer->c_str());
    return absl::OkStatus();
  });
}

int RunHealth(int argc, char** argv) {
  const Command cmd{"health", "[--target ADDR]"};
  auto flags = Flags::Parse(argc, argv, 2, With({}), {});
  if (!flags.ok()) return cmd.Usage(flags.status().message());
  auto client = Connect(*flags);
  if (!client.ok()) return cmd.Usage(client.status().message());
  auto status = (*client)->Health();
  if (!status.ok()) {
    std::fprintf(stderr, "qlinear health: unreachable: %s: %s\n",
                 absl::StatusCodeToString(status.status().code()).c_str(),
                 Printable(status.status().message()).c_str());
    return 1;
  }
  const std::string name = grpc::health::v1::HealthCheckResponse::ServingStatus_Name(*status);
  std::printf("%s\n", name.c_str());
  return *status == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 1;
}

}  // namespace qlinear
