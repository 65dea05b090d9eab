// safetensors writer: 8-byte little-endian header length, space-padded JSON header, tensor bytes.
#include "dtrain/train/safetensors.h"

#include <bit>
#include <cstring>
#include <set>
#include <string_view>

#include "dtrain/tensor/check.h"
#include "dtrain/train/checkpoint.h"
#include "dtrain/train/encoding.h"

namespace dtrain::train {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; tensor bytes are written as in memory");

std::string_view safetensors_dtype(DType dtype) {
  switch (dtype) {
    case DType::kFloat64:
      return "F64";
    case DType::kFloat32:
      return "F32";
    case DType::kFloat16:
      return "F16";
    case DType::kBFloat16:
      return "BF16";
    case DType::kInt64:
      return "I64";
    case DType::kInt32:
      return "I32";
    case DType::kUInt8:
      return "U8";
    case DType::kBool:
      return "BOOL";
  }
  return "?";
}

}  // namespace

void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::set<std::string_view> seen;
  std::vector<Tensor> host;
  host.reserve(tensors.size());
  std::string header = "{";
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    DTRAIN_CHECK(!name.empty(), "write_safetensors ", path, ": a tensor has an empty name");
    DTRAIN_CHECK(name != "__metadata__", "write_safetensors ", path,
                 ": \"__metadata__\" is reserved for the metadata and cannot name a tensor");
    DTRAIN_CHECK(name.find('"') == std::string::npos, "write_safetensors ", path, ": tensor name '",
                 name, "' contains '\"'; rename it");
    DTRAIN_CHECK(seen.insert(name).second, "write_safetensors ", path, ": duplicate tensor name '",
                 name, "'; every name must be unique");
    DTRAIN_CHECK(tensor.defined(), "write_safetensors ", path, ": tensor '", name,
                 "' is undefined");
    host.push_back(to_device(tensor, Device::cpu()));
    const uint64_t end = offset + host.back().nbytes();

    if (header.size() > 1) header += ", ";
    header += detail::json_string(name);
    header += ": {\"dtype\": \"";
    header += safetensors_dtype(tensor.dtype());
    header += "\", \"shape\": [";
    for (size_t d = 0; d < tensor.shape().size(); ++d) {
      if (d > 0) header += ", ";
      header += std::to_string(tensor.shape()[d]);
    }
    header += "], \"data_offsets\": [" + std::to_string(offset) + ", " + std::to_string(end) + "]}";
    offset = end;
  }
  if (!metadata.empty()) {
    if (header.size() > 1) header += ", ";
    header += "\"__metadata__\": {";
    bool first = true;
    for (const auto& [key, value] : metadata) {
      if (!first) header += ", ";
      first = false;
      header += detail::json_string(key) + ": " + detail::json_string(value);
    }
    header += "}";
  }
  header += "}";
  // Padding the header to a multiple of 8 keeps the data 8-byte aligned for memory-mapped readers.
  header.append((8 - header.size() % 8) % 8, ' ');

  const uint64_t header_length = header.size();
  char length_bytes[sizeof(header_length)];
  std::memcpy(length_bytes, &header_length, sizeof(header_length));
  std::vector<std::string_view> pieces = {std::string_view(length_bytes, sizeof(length_bytes)),
                                          header};
  for (const Tensor& t : host) {
    if (t.nbytes() > 0) pieces.emplace_back(static_cast<const char*>(t.data_ptr()), t.nbytes());
  }
  write_file_atomic(path, pieces);
}

}  // namespace dtrain::train
