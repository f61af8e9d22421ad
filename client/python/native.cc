// qlinear._native: the C++ checkpoint reader (core/checkpoint.h) and the
// safetensors file (core/safetensors.h) for Python, so that `upload(path)`
// reads files and mlx-lm folders by the same rules, with the same messages,
// as the server and the CLI. Nothing here decides anything itself.
//
// Tensor bytes are exposed through the buffer protocol without a copy: a
// `Tensor` keeps its file (or checkpoint) mapped for as long as any
// memoryview of it lives.
//
// Errors: every absl::Status that is not OK raises StatusError(code,
// message), `code` being the canonical code number (equal to gRPC's).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/checkpoint.h"
#include "core/dtype.h"
#include "core/half.h"
#include "core/quant_params.h"
#include "core/safetensors.h"

namespace py = pybind11;

namespace qlinear {
namespace {

// StatusException carries a status to the translator below.
struct StatusException {
  absl::Status status;
};

void ThrowIfError(const absl::Status& status) {
  if (!status.ok()) throw StatusException{status};
}

template <typename T>
T ValueOrThrow(absl::StatusOr<T> v) {
  ThrowIfError(v.status());
  return *std::move(v);
}

// Tensor: one tensor's name, dtype, shape and bytes (a read-only uint8
// buffer), with a reference to whatever owns the bytes.
struct Tensor {
  std::shared_ptr<const void> owner;
  const TensorInfo* info = nullptr;
  absl::Span<const uint8_t> data;
};

py::object MaybeTensor(const std::shared_ptr<const void>& owner, const TensorInfo* info,
                       absl::Span<const uint8_t> data) {
  if (info == nullptr) return py::none();
  return py::cast(Tensor{owner, info, data});
}

std::shared_ptr<SafetensorsFile> OpenSafetensors(const std::string& path) {
  return ValueOrThrow(SafetensorsFile::Open(path));
}

// WriteTensors writes (name, dtype, shape, bytes-like) tuples atomically
// through WriteSafetensors (for test fixtures and tools).
void WriteTensors(const std::string& path, const std::vector<py::tuple>& tensors,
                  const std::map<std::string, std::string>& metadata) {
  std::vector<TensorToWrite> out;
  std::vector<py::buffer_info> keep;
  for (const py::tuple& t : tensors) {
    if (t.size() != 4) throw py::value_error("each tensor is (name, dtype, shape, data)");
    const std::string dtype_name = t[1].cast<std::string>();
    const std::optional<DType> dtype = ParseDTypeName(dtype_name);
    if (!dtype) {
      ThrowIfError(absl::InvalidArgumentError("unknown dtype '" + dtype_name + "'"));
    }
    keep.push_back(t[3].cast<py::buffer>().request());
    const py::buffer_info& b = keep.back();
    out.push_back({t[0].cast<std::string>(), *dtype, t[2].cast<std::vector<int64_t>>(),
                   absl::Span<const uint8_t>(static_cast<const uint8_t*>(b.ptr),
                                             static_cast<size_t>(b.size * b.itemsize))});
  }
  ThrowIfError(WriteSafetensors(path, out, metadata));
}

// Bf16FromF32 rounds float32 values to bfloat16 bits, to nearest even
// (core/half.h, the server's own rounding); the shape is kept.
py::array_t<uint16_t> Bf16FromF32(py::array_t<float, py::array::c_style | py::array::forcecast> x) {
  py::array_t<uint16_t> out(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
  const float* in = x.data();
  uint16_t* o = out.mutable_data();
  const py::ssize_t n = x.size();
  py::gil_scoped_release unlocked;
  for (py::ssize_t i = 0; i < n; ++i) o[i] = FloatToBF16Bits(in[i]);
  return out;
}

// F32FromBf16 widens bfloat16 bits to float32, exactly.
py::array_t<float> F32FromBf16(py::array_t<uint16_t, py::array::c_style | py::array::forcecast> b) {
  py::array_t<float> out(std::vector<py::ssize_t>(b.shape(), b.shape() + b.ndim()));
  const uint16_t* in = b.data();
  float* o = out.mutable_data();
  const py::ssize_t n = b.size();
  py::gil_scoped_release unlocked;
  for (py::ssize_t i = 0; i < n; ++i) o[i] = BF16BitsToFloat(in[i]);
  return out;
}

// PyCheckpoint owns an opened Checkpoint for its layers and tensors.
struct PyCheckpoint {
  std::shared_ptr<const Checkpoint> c;
};

PyCheckpoint OpenCheckpoint(const std::string& path, std::optional<std::string> mode,
                            std::optional<int> bits, std::optional<int> group_size) {
  PartialQuantParams overrides;
  if (mode) overrides.mode = ValueOrThrow(ParseQuantMode(*mode));
  overrides.bits = bits;
  overrides.group_size = group_size;
  CheckpointOptions options;
  options.overrides = overrides;
  options.float_params = ValueOrThrow(MakeQuantParams(overrides));
  std::shared_ptr<const Checkpoint> c = ValueOrThrow(Checkpoint::Open(path, options));
  return PyCheckpoint{std::move(c)};
}

py::dict LayerDict(const PyCheckpoint& pc, size_t index) {
  const Checkpoint& c = *pc.c;
  const CheckpointLayer& l = c.layers()[index];
  auto tensor = [&](const TensorInfo* t) {
    return MaybeTensor(pc.c, t, t ? c.Data(*t) : absl::Span<const uint8_t>());
  };
  py::dict d;
  d["index"] = index;
  d["name"] = l.name;
  d["quantized"] = l.quantized;
  d["mode"] = std::string(QuantModeName(l.params.mode));
  d["bits"] = l.params.bits;
  d["group_size"] = l.params.group_size;
  d["out_features"] = l.n;
  d["in_features"] = l.k;
  d["weight"] = tensor(l.weight);
  d["scales"] = tensor(l.scales);
  d["biases"] = tensor(l.biases);
  d["bias"] = tensor(l.bias);
  d["params_source"] = l.params_source;
  return d;
}

}  // namespace
}  // namespace qlinear

PYBIND11_MODULE(_native, m) {
  using namespace qlinear;
  m.doc() = "qlinear's C++ checkpoint reader and safetensors file (core/checkpoint.h)";

  // Leaked on purpose: destroyed after the interpreter, it would crash.
  static auto* status_error = new py::exception<StatusException>(m, "StatusError");
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StatusException& e) {
      py::tuple args = py::make_tuple(static_cast<int>(e.status.code()),
                                      std::string(e.status.message()));
      PyErr_SetObject(status_error->ptr(), args.ptr());
    }
  });

  py::class_<Tensor>(m, "Tensor", py::buffer_protocol())
      .def_property_readonly("name", [](const Tensor& t) { return t.info->name; })
      .def_property_readonly("dtype",
                             [](const Tensor& t) { return std::string(DTypeName(t.info->dtype)); })
      .def_property_readonly("shape",
                             [](const Tensor& t) { return py::tuple(py::cast(t.info->shape)); })
      .def_property_readonly("nbytes", [](const Tensor& t) { return t.data.size(); })
      .def_buffer([](const Tensor& t) {
        return py::buffer_info(const_cast<uint8_t*>(t.data.data()), 1,
                               py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(t.data.size())}, {1}, /*readonly=*/true);
      })
      .def("__repr__", [](const Tensor& t) {
        return "<Tensor " + t.info->name + " " + std::string(DTypeName(t.info->dtype)) + " " +
               t.info->ShapeString() + ">";
      });

  py::class_<SafetensorsFile, std::shared_ptr<SafetensorsFile>>(m, "SafetensorsFile")
      .def_property_readonly("metadata", &SafetensorsFile::metadata)
      .def("names",
           [](const SafetensorsFile& f) {
             std::vector<std::string> names;
             for (const TensorInfo& t : f.tensors()) names.push_back(t.name);
             return names;
           })
      .def("tensor", [](std::shared_ptr<SafetensorsFile> f, const std::string& name) {
        const TensorInfo* t = f->Find(name);
        if (t == nullptr) {
          ThrowIfError(absl::NotFoundError("no tensor '" + name + "' in the file"));
        }
        return Tensor{f, t, f->Data(*t)};
      });
  m.def("bf16_from_f32", &Bf16FromF32, py::arg("x"),
        "float32 values rounded to bfloat16 bits (uint16), to nearest even.");
  m.def("f32_from_bf16", &F32FromBf16, py::arg("bits"),
        "bfloat16 bits (uint16) widened exactly to float32.");
  m.def("open_safetensors", &OpenSafetensors, py::arg("path"),
        "Maps and validates a .safetensors file (core/safetensors.h).");
  m.def("write_safetensors", &WriteTensors, py::arg("path"), py::arg("tensors"),
        py::arg("metadata") = std::map<std::string, std::string>(),
        "Writes (name, dtype, shape, data) tensors atomically.");

  py::class_<PyCheckpoint>(m, "Checkpoint")
      .def_property_readonly("path", [](const PyCheckpoint& c) { return c.c->path(); })
      .def_property_readonly("is_folder", [](const PyCheckpoint& c) { return c.c->is_folder(); })
      .def_property_readonly("files", [](const PyCheckpoint& c) { return c.c->files(); })
      .def_property_readonly("warnings", [](const PyCheckpoint& c) { return c.c->warnings(); })
      .def_property_readonly("skipped",
                             [](const PyCheckpoint& c) {
                               std::vector<py::tuple> out;
                               for (const SkippedTensor& s : c.c->skipped()) {
                                 const TensorInfo* t = c.c->Find(s.tensor);
                                 out.push_back(py::make_tuple(
                                     s.tensor, t ? t->ShapeString() : std::string(), s.reason));
                               }
                               return out;
                             })
      .def("layers",
           [](const PyCheckpoint& c) {
             py::list out;
             for (size_t i = 0; i < c.c->layers().size(); ++i) out.append(LayerDict(c, i));
             return out;
           })
      .def(
          "validate",
          [](const PyCheckpoint& c, size_t index) {
            if (index >= c.c->layers().size()) throw py::index_error("no such layer");
            py::gil_scoped_release unlocked;
            ThrowIfError(c.c->Validate(c.c->layers()[index]));
          },
          py::arg("index"), "Checks layer `index`'s values as Load would (raises StatusError).");
  m.def("open_checkpoint", &OpenCheckpoint, py::arg("path"), py::arg("mode") = py::none(),
        py::arg("bits") = py::none(), py::arg("group_size") = py::none(),
        "Opens a .safetensors file or an mlx-lm folder (core/checkpoint.h); mode, bits and "
        "group_size override the checkpoint's and quantize its float weights.");
}
