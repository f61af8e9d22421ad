// How mlx-lm's JSON files read, byte for byte: PyDumps reproduces Python's
// json.dump(obj, f, indent=4) (ensure_ascii, float repr, ", " / ": "
// layout), which is how mlx-lm writes config.json and
// model.safetensors.index.json; Truthy is Python's truth value of a JSON
// value, as mlx-lm tests config fields with `if`; SortedByKey is the key
// order save_config writes.
//
//   PyDumps({{"bits", 4}, {"scale", 1e-05}, {"name", "caf\xc3\xa9"}})
//   // {\n    "bits": 4,\n    "scale": 1e-05,\n    "name": "caf\u00e9"\n}
//
// Errors: none; every function is total. Strings must be valid UTF-8, as
// nlohmann's parser guarantees for parsed values.
//
// Thread safety: every function is pure and may be called from any thread.
#ifndef QLINEAR_CLIENT_MLX_LM_JSON_H_
#define QLINEAR_CLIENT_MLX_LM_JSON_H_

#include <string>

#include "nlohmann/json.hpp"

namespace qlinear {

// PyDumps is json.dumps(j, indent=4): objects in their stored order, floats
// as repr() writes them (NaN, Infinity, -Infinity included), non-ASCII as
// \uXXXX escapes (surrogate pairs past the BMP). No trailing newline.
std::string PyDumps(const nlohmann::ordered_json& j);

// Truthy is bool(j) in Python: false for null, false, 0, 0.0 and empty
// strings, arrays and objects; true otherwise.
bool Truthy(const nlohmann::ordered_json& j);

// SortedByKey is dict(sorted(j.items())) for an object: its members in code
// point order, which for UTF-8 keys is byte order.
nlohmann::ordered_json SortedByKey(const nlohmann::ordered_json& j);

}  // namespace qlinear

#endif  // QLINEAR_CLIENT_MLX_LM_JSON_H_
