#include "client/npy.h"

#include <fstream>
#include <iterator>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace qlinear {

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open '", path, "'"));
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is not a usable .npy file: ", why));
  };
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) return bad("no \\x93NUMPY magic");
  const int major = static_cast<uint8_t>(bytes[6]);
  size_t header_len, offset;
  if (major == 1) {
    header_len = static_cast<uint8_t>(bytes[8]) | (static_cast<size_t>(static_cast<uint8_t>(bytes[9])) << 8);
    offset = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return bad("truncated header");
    header_len = 0;
    for (int i = 3; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(bytes[8 + i]);
    offset = 12;
  } else {
    return bad(absl::StrCat("format version ", major, " (expected 1, 2 or 3)"));
  }
  if (offset + header_len > bytes.size()) return bad("header runs past the end");
  const std::string header = bytes.substr(offset, header_len);
  // The header is a Python dict literal; read the three keys it must hold.
  auto value_after = [&](const std::string& key) -> std::string {
    const size_t at = header.find("'" + key + "'");
    if (at == std::string::npos) return "";
    const size_t colon = header.find(':', at);
    return colon == std::string::npos ? "" : header.substr(colon + 1);
  };
  NpyArray out;
  const std::string descr = value_after("descr");
  const size_t q1 = descr.find('\'');
  const size_t q2 = q1 == std::string::npos ? q1 : descr.find('\'', q1 + 1);
  if (q2 == std::string::npos) return bad("no descr");
  const std::string type = descr.substr(q1 + 1, q2 - q1 - 1);
  if (type == "<f4") {
    out.dtype = DType::kF32;
  } else if (type == "<f2") {
    out.dtype = DType::kF16;
  } else {
    return bad(absl::StrCat("dtype '", type, "' (expected '<f4' or '<f2')"));
  }
  if (absl::StartsWith(absl::StripLeadingAsciiWhitespace(value_after("fortran_order")), "True")) {
    return bad("Fortran order");
  }
  const std::string shape_text = value_after("shape");
  const size_t open = shape_text.find('(');
  const size_t close = shape_text.find(')');
  if (open == std::string::npos || close == std::string::npos || close < open) return bad("no shape");
  size_t elements = 1;
  for (absl::string_view d : absl::StrSplit(shape_text.substr(open + 1, close - open - 1), ',',
                                            absl::SkipWhitespace())) {
    int64_t v;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(d), &v) || v < 0) {
      return bad(absl::StrCat("shape entry '", d, "'"));
    }
    out.shape.push_back(v);
    elements *= static_cast<size_t>(v);
  }
  const size_t want = elements * DTypeSize(out.dtype);
  if (bytes.size() - offset - header_len != want) {
    return bad(absl::StrCat("data holds ", bytes.size() - offset - header_len, " bytes; shape needs ", want));
  }
  out.data.assign(bytes.begin() + static_cast<ptrdiff_t>(offset + header_len), bytes.end());
  return out;
}

absl::Status WriteNpy(const std::string& path, const NpyArray& array) {
  if (array.dtype != DType::kF32 && array.dtype != DType::kF16) {
    return absl::InvalidArgumentError("only F32 and F16 can be written to .npy");
  }
  std::string shape = absl::StrJoin(array.shape, ", ");
  if (array.shape.size() == 1) shape += ",";
  std::string header = absl::StrCat("{'descr': '", array.dtype == DType::kF32 ? "<f4" : "<f2",
                                    "', 'fortran_order': False, 'shape': (", shape, "), }");
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::InternalError(absl::StrCat("cannot write '", path, "'"));
  out.write("\x93NUMPY\x01\x00", 8);
  const char len[2] = {static_cast<char>(header.size() & 0xFF), static_cast<char>(header.size() >> 8)};
  out.write(len, 2);
  out << header;
  out.write(reinterpret_cast<const char*>(array.data.data()), static_cast<std::streamsize>(array.data.size()));
  if (!out) return absl::InternalError(absl::StrCat("cannot write '", path, "'"));
  return absl::OkStatus();
}

}  // namespace qlinear
