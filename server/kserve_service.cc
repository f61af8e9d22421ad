#include "server/kserve_service.h"

#include <chrono>
#include <cstdint>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/names.h"
#include "core/precision.h"
#include "server/convert.h"
#include "server/wire_forward.h"

namespace qlinear {
namespace {

constexpr char kInput[] = "x";
constexpr char kOutput[] = "y";
constexpr char kPlatform[] = "qlinear";

// The protocol's datatype names for the three float dtypes.
std::optional<DType> FromDatatype(const std::string& name) {
  if (name == "FP32") return DType::kF32;
  if (name == "FP16") return DType::kF16;
  if (name == "BF16") return DType::kBF16;
  return std::nullopt;
}

const char* ToDatatype(DType dtype) {
  switch (dtype) {
    case DType::kF16:
      return "FP16";
    case DType::kBF16:
      return "BF16";
    default:
      return "FP32";
  }
}

// CheckVersion: an empty `asked` means the current version; any other must
// be it, else NOT_FOUND naming the one available.
absl::Status CheckVersion(const std::string& model, const std::string& asked, uint64_t version) {
  if (asked.empty() || asked == absl::StrCat(version)) return absl::OkStatus();
  return absl::NotFoundError(absl::StrCat("model ", QuoteForMessage(model), " has no version ",
                                          QuoteForMessage(asked), "; the version available is '",
                                          version, "'"));
}

// Authorized checks the call's token for the Data plane first, as every
// qlinear.v1 method does; on a refusal it finishes `reactor` and says false.
bool Authorized(const Authorizer* auth, grpc::CallbackServerContext* context,
                grpc::ServerUnaryReactor* reactor) {
  auto who = CheckCall(auth, *context, Plane::kData);
  if (who.ok()) return true;
  reactor->Finish(ToGrpc(who.status()));
  return false;
}

void SetInt(google::protobuf::Map<std::string, inference::InferParameter>* params,
            const char* key, int64_t value) {
  (*params)[key].set_int64_param(value);
}

}  // namespace

KServeService::KServeService(Engine* engine, const Authorizer* auth, Options options)
    : engine_(engine), auth_(auth), options_(std::move(options)) {}

grpc::ServerUnaryReactor* KServeService::ServerLive(grpc::CallbackServerContext* context,
                                                    const inference::ServerLiveRequest*,
                                                    inference::ServerLiveResponse* response) {
  // Liveness and readiness are probes: open, as gRPC health is.
  auto* reactor = context->DefaultReactor();
  response->set_live(true);  // it answers: it is live, draining or not
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* KServeService::ServerReady(grpc::CallbackServerContext* context,
                                                     const inference::ServerReadyRequest*,
                                                     inference::ServerReadyResponse* response) {
  auto* reactor = context->DefaultReactor();
  response->set_ready(!options_.ready || options_.ready());
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* KServeService::ModelReady(grpc::CallbackServerContext* context,
                                                    const inference::ModelReadyRequest* request,
                                                    inference::ModelReadyResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (!Authorized(auth_, context, reactor)) return reactor;
  // As Triton answers: an unknown model or version is not ready (no error).
  auto entry = engine_->catalog().Get(request->name());
  response->set_ready(entry.ok() && (!options_.ready || options_.ready()) &&
                      CheckVersion(request->name(), request->version(),
                                   entry->layer->info().version)
                          .ok());
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* KServeService::ServerMetadata(
    grpc::CallbackServerContext* context, const inference::ServerMetadataRequest*,
    inference::ServerMetadataResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (!Authorized(auth_, context, reactor)) return reactor;
  response->set_name(options_.server_name);
  response->set_version(options_.version);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* KServeService::ModelMetadata(
    grpc::CallbackServerContext* context, const inference::ModelMetadataRequest* request,
    inference::ModelMetadataResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (!Authorized(auth_, context, reactor)) return reactor;
  auto entry = engine_->catalog().Get(request->name());
  if (!entry.ok()) {
    reactor->Finish(ToGrpc(entry.status()));
    return reactor;
  }
  const Layer::Info& info = entry->layer->info();
  if (absl::Status s = CheckVersion(info.name, request->version(), info.version); !s.ok()) {
    reactor->Finish(ToGrpc(s));
    return reactor;
  }
  response->set_name(info.name);
  response->add_versions(absl::StrCat(info.version));
  response->set_platform(kPlatform);
  // One datatype can be listed; FP16 and BF16 are accepted as well, and the
  // output takes the input's datatype.
  auto* x = response->add_inputs();
  x->set_name(kInput);
  x->set_datatype("FP32");
  x->add_shape(-1);
  x->add_shape(info.k);
  auto* y = response->add_outputs();
  y->set_name(kOutput);
  y->set_datatype("FP32");
  y->add_shape(-1);
  y->add_shape(info.n);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* KServeService::ModelInfer(grpc::CallbackServerContext* context,
                                                    const inference::ModelInferRequest* request,
                                                    inference::ModelInferResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (!Authorized(auth_, context, reactor)) return reactor;
  const std::string& model = request->model_name();
  auto fail = [&](absl::Status s) {  // refused before Submit, which counts its own
    engine_->RecordRejected(model, s.code());
    reactor->Finish(ToGrpc(s));
    return reactor;
  };
  auto entry = engine_->catalog().Get(model);
  if (!entry.ok()) return fail(entry.status());
  const Layer::Info& info = entry->layer->info();
  if (absl::Status s = CheckVersion(model, request->model_version(), info.version); !s.ok()) {
    return fail(s);
  }
  if (request->inputs_size() != 1) {
    return fail(absl::InvalidArgumentError(absl::StrCat(
        "model ", QuoteForMessage(model), " takes one input '", kInput, "'; got ", request->inputs_size())));
  }
  const auto& input = request->inputs(0);
  if (input.name() != kInput) {
    return fail(absl::InvalidArgumentError(absl::StrCat(
        "model ", QuoteForMessage(model), " takes one input '", kInput, "'; got ", QuoteForMessage(input.name()))));
  }
  for (const auto& out : request->outputs()) {
    if (out.name() != kOutput) {
      return fail(absl::InvalidArgumentError(absl::StrCat(
          "model ", QuoteForMessage(model), " has one output '", kOutput, "'; ", QuoteForMessage(out.name()),
          " was requested")));
    }
  }
  const std::optional<DType> dtype = FromDatatype(input.datatype());
  if (!dtype) {
    return fail(absl::InvalidArgumentError(absl::StrCat(
        "input 'x' datatype must be FP32, FP16 or BF16; got ", QuoteForMessage(input.datatype()))));
  }
  if (input.shape_size() != 2 || input.shape(0) < 0 || input.shape(1) < 0) {
    return fail(absl::InvalidArgumentError(absl::StrCat(
        "input 'x' shape must be [-1, ", info.k, "]; got ", ShapeText(input.shape()))));
  }
  // The optional request parameter "precision": a string, exact (the
  // default), int8 or bf16.
  Precision precision = Precision::kExact;
  if (auto it = request->parameters().find("precision"); it != request->parameters().end()) {
    const inference::InferParameter& p = it->second;
    absl::StatusOr<Precision> parsed =
        p.parameter_choice_case() == inference::InferParameter::kStringParam
            ? ParsePrecision(p.string_param())
            : absl::InvalidArgumentError("");
    if (!parsed.ok()) {
      return fail(absl::InvalidArgumentError(absl::StrCat(
          "parameter 'precision' must be a string, exact, int8 or bf16; got ",
          p.parameter_choice_case() == inference::InferParameter::kStringParam
              ? QuoteForMessage(p.string_param())
              : "another type")));
    }
    precision = *parsed;
  }
  const int64_t rows = input.shape(0), k = input.shape(1);
  if (k > 0 && rows > (int64_t{1} << 40) / k) {
    return fail(absl::InvalidArgumentError(absl::StrCat(
        "input 'x' shape ", ShapeText(input.shape()), " has more than 2^40 elements")));
  }
  const uint64_t want_bytes = static_cast<uint64_t>(rows * k) * DTypeSize(*dtype);
  const void* data = nullptr;
  const bool typed = input.has_contents();
  if (request->raw_input_contents_size() > 0) {
    if (typed) {
      return fail(absl::InvalidArgumentError(
          "input 'x' has both contents and raw_input_contents; send one of them"));
    }
    if (request->raw_input_contents_size() != 1) {
      return fail(absl::InvalidArgumentError(absl::StrCat(
          "raw_input_contents must hold one entry (for 'x'); got ", request->raw_input_contents_size())));
    }
    const std::string& raw = request->raw_input_contents(0);
    if (raw.size() != want_bytes) {
      return fail(absl::InvalidArgumentError(absl::StrCat(
          "raw_input_contents for 'x' holds ", raw.size(), " bytes but shape [", rows, ", ", k,
          "] of ", input.datatype(), " needs ", want_bytes)));
    }
    data = raw.data();
  } else {
    if (*dtype != DType::kF32) {
      return fail(absl::InvalidArgumentError(absl::StrCat(
          "input 'x' of ", input.datatype(),
          " must travel in raw_input_contents (the protocol has no typed field for it)")));
    }
    const auto& c = input.contents();
    const int other = c.bool_contents_size() + c.int_contents_size() + c.int64_contents_size() +
                      c.uint_contents_size() + c.uint64_contents_size() + c.fp64_contents_size() +
                      c.bytes_contents_size();
    if (other > 0) {
      return fail(absl::InvalidArgumentError(
          "input 'x' of FP32 takes contents.fp32_contents; another contents field is set"));
    }
    if (static_cast<uint64_t>(c.fp32_contents_size()) != static_cast<uint64_t>(rows * k)) {
      return fail(absl::InvalidArgumentError(absl::StrCat(
          "contents.fp32_contents for 'x' holds ", c.fp32_contents_size(), " values but shape [",
          rows, ", ", k, "] needs ", rows * k)));
    }
    data = c.fp32_contents().data();
  }
  Engine::ForwardRequest req;
  req.layer = model;
  req.x_dtype = *dtype;
  req.x = data;  // borrowed from the request, which lives until Finish
  req.rows = rows;
  req.k = k;
  req.y_dtype = *dtype;
  req.precision = precision;
  req.deadline = CallDeadline(*context, *engine_);
  req.cancelled = [context] { return context->IsCancelled(); };
  req.max_answer_bytes = options_.max_answer_bytes;
  // Besides y: the names, version, id, shape and parameters.
  req.answer_overhead_bytes = 512 + model.size() + request->id().size();
  const DType y_dtype = *dtype;
  absl::Status submitted = engine_->Submit(
      std::move(req), [reactor, request, response, y_dtype, rows](Engine::ForwardResult r) {
        // A replace between the check above and the batch: the answer came
        // from another version than the one asked for.
        if (r.status.ok()) {
          absl::Status version = CheckVersion(request->model_name(), request->model_version(), r.version);
          if (!version.ok()) {
            // Counted OK by the engine; the client receives NOT_FOUND.
            Engine::RecordUndelivered(r, rows, version.code());
            r.status = version;
          }
        }
        if (r.status.ok()) {
          response->set_model_name(request->model_name());
          response->set_model_version(absl::StrCat(r.version));
          response->set_id(request->id());
          auto* out = response->add_outputs();
          out->set_name(kOutput);
          out->set_datatype(ToDatatype(y_dtype));
          out->add_shape(rows);
          out->add_shape(r.n);
          response->add_raw_output_contents()->assign(reinterpret_cast<const char*>(r.y.data()),
                                                      r.y.size());
          auto* params = response->mutable_parameters();
          SetInt(params, "queue_us", r.queue_us);
          SetInt(params, "compute_us", r.compute_us);
          SetInt(params, "batch_rows", r.batch_rows);
          SetInt(params, "batch_requests", r.batch_requests);
          (*params)["precision"].set_string_param(std::string(PrecisionName(r.precision)));
        }
        reactor->Finish(ToGrpc(r.status));
      });
  if (!submitted.ok()) reactor->Finish(ToGrpc(submitted));
  return reactor;
}

}  // namespace qlinear
