// Minimal .npy (NumPy format 1.0-3.0) I/O for float tensors: '<f4' and '<f2',
// C order. bfloat16 has no NumPy dtype: callers write it as float32.
#ifndef QLINEAR_CLIENT_NPY_H_
#define QLINEAR_CLIENT_NPY_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/dtype.h"

namespace qlinear {

struct NpyArray {
  DType dtype = DType::kF32;  // F32 or F16
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;
};

// ReadNpy: INVALID_ARGUMENT naming what was expected for anything else.
absl::StatusOr<NpyArray> ReadNpy(const std::string& path);
absl::Status WriteNpy(const std::string& path, const NpyArray& array);

}  // namespace qlinear

#endif  // QLINEAR_CLIENT_NPY_H_
