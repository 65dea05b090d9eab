// safetensors writer and reader: 8-byte little-endian header length, JSON header, tensor bytes.
#include "dtrain/train/safetensors.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string_view>

#include "dtrain/tensor/check.h"
#include "dtrain/tensor/printable.h"
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

namespace dtrain::train {
namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the format's own limit

std::optional<DType> dtype_of(const std::string& name) {
  static const std::pair<const char*, DType> kTypes[] = {
      {"F64", DType::kFloat64},   {"F32", DType::kFloat32}, {"F16", DType::kFloat16},
      {"BF16", DType::kBFloat16}, {"I64", DType::kInt64},   {"I32", DType::kInt32},
      {"U8", DType::kUInt8},      {"BOOL", DType::kBool}};
  for (const auto& [text, dtype] : kTypes) {
    if (name == text) return dtype;
  }
  return std::nullopt;
}

}  // namespace

SafetensorsFile read_safetensors(const std::string& path) {
  const std::string where = "safetensors file '" + printable(path) + "'";
  std::ifstream in(path, std::ios::binary);
  DTRAIN_CHECK(in.is_open(), where, ": cannot open: ", std::strerror(errno));
  std::error_code ec;
  DTRAIN_CHECK(std::filesystem::is_regular_file(path, ec), where, ": not a regular file");
  const uint64_t file_size = std::filesystem::file_size(path, ec);
  DTRAIN_CHECK(!ec, where, ": cannot read its size: ", ec.message());
  DTRAIN_CHECK(file_size >= 8, where, ": ", file_size,
               " bytes, shorter than the 8-byte header length; not a safetensors file");
  unsigned char length_bytes[8];
  in.read(reinterpret_cast<char*>(length_bytes), 8);
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = header_size << 8 | length_bytes[i];
  DTRAIN_CHECK(header_size <= kMaxHeaderBytes && header_size <= file_size - 8, where,
               ": header length ", header_size, " does not fit the file (", file_size,
               " bytes; the format allows at most 100 MB); not a safetensors file");
  std::string header(header_size, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_size));
  DTRAIN_CHECK(in.good(), where, ": cannot read the header");
  const nlohmann::json json = nlohmann::json::parse(header, nullptr, /*allow_exceptions=*/false);
  DTRAIN_CHECK(!json.is_discarded() && json.is_object(), where,
               ": the header is not a JSON object; not a safetensors file");

  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  SafetensorsFile file;
  const uint64_t data_size = file_size - 8 - header_size;
  for (const auto& [name, value] : json.items()) {
    if (name == "__metadata__") {
      DTRAIN_CHECK(value.is_object(), where, ": __metadata__ is not an object of strings");
      for (const auto& [key, text] : value.items()) {
        DTRAIN_CHECK(text.is_string(), where, ": __metadata__ '", printable(key),
                     "' is not a string");
        file.metadata[key] = text.get<std::string>();
      }
      continue;
    }
    const std::string tensor = where + ": tensor '" + printable(name) + "'";
    DTRAIN_CHECK(value.is_object() && value.contains("dtype") && value.contains("shape") &&
                     value.contains("data_offsets"),
                 tensor, ": needs dtype, shape and data_offsets");
    const nlohmann::json& dtype = value["dtype"];
    const std::optional<DType> type =
        dtype.is_string() ? dtype_of(dtype.get<std::string>()) : std::nullopt;
    DTRAIN_CHECK(type.has_value(), tensor, ": dtype ", printable(dtype.dump()),
                 " is not one of F64, F32, F16, BF16, I64, I32, U8, BOOL");
    const nlohmann::json& dims = value["shape"];
    DTRAIN_CHECK(dims.is_array(), tensor, ": shape is not a list");
    Shape shape;
    uint64_t bytes = dtype_size(*type);
    for (const nlohmann::json& d : dims) {
      DTRAIN_CHECK(d.is_number_unsigned(), tensor, ": shape ", printable(dims.dump()),
                   " has an entry that is not a non-negative integer");
      const uint64_t n = d.get<uint64_t>();
      DTRAIN_CHECK(n == 0 || bytes <= data_size / n, tensor, ": shape ", printable(dims.dump()),
                   " needs more bytes than the file's ", data_size, " of data");
      bytes *= n;
      shape.push_back(static_cast<int64_t>(n));
    }
    const nlohmann::json& offsets = value["data_offsets"];
    DTRAIN_CHECK(offsets.is_array() && offsets.size() == 2 && offsets[0].is_number_unsigned() &&
                     offsets[1].is_number_unsigned(),
                 tensor, ": data_offsets is not [begin, end]");
    const uint64_t begin = offsets[0].get<uint64_t>(), end = offsets[1].get<uint64_t>();
    DTRAIN_CHECK(begin <= end && end <= data_size, tensor, ": data_offsets [", begin, ", ", end,
                 "] are outside the file's ", data_size, " bytes of data");
    DTRAIN_CHECK(end - begin == bytes, tensor, ": data_offsets [", begin, ", ", end, "] hold ",
                 end - begin, " bytes; dtype ", dtype.get<std::string>(), " and shape ",
                 shape_str(shape), " need ", bytes);
    entries.push_back({name, *type, std::move(shape), begin, end});
  }
  // The header's order is not the data's: read each range where it is.
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.begin < b.begin; });
  for (const Entry& e : entries) {
    Tensor t(e.shape, e.dtype);
    in.seekg(static_cast<std::streamoff>(8 + header_size + e.begin));
    in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(e.end - e.begin));
    DTRAIN_CHECK(in.good() || e.end == e.begin, where, ": cannot read tensor '", printable(e.name),
                 "'");
    file.tensors.emplace_back(e.name, std::move(t));
  }
  return file;
}

void load_weights(nn::Module& model, const std::vector<std::pair<std::string, Tensor>>& tensors,
                  const std::string& source) {
  std::map<std::string, const Tensor*> given;
  for (const auto& [name, t] : tensors) given[name] = &t;
  std::vector<std::string> problems;
  nn::NamedTensors fitted;
  for (const auto& [name, mine] : model.state_dict()) {
    const auto it = given.find(name);
    if (it == given.end()) {
      problems.push_back("missing " + name + " " + shape_str(mine.shape()));
      continue;
    }
    const Tensor& theirs = *it->second;
    given.erase(it);
    if (theirs.shape() != mine.shape()) {
      problems.push_back(name + ": " + shape_str(theirs.shape()) + " in the file, " +
                         shape_str(mine.shape()) + " in the model");
    } else if (theirs.dtype() != mine.dtype() &&
               !(is_floating(theirs.dtype()) && is_floating(mine.dtype()))) {
      problems.push_back(name + ": " + std::string(dtype_name(theirs.dtype())) + " in the file, " +
                         std::string(dtype_name(mine.dtype())) + " in the model");
    } else {
      fitted.emplace_back(name,
                          theirs.dtype() == mine.dtype() ? theirs : to_dtype(theirs, mine.dtype()));
    }
  }
  for (const auto& [name, t] : given) {
    problems.push_back("unexpected " + printable(name) + " " + shape_str(t->shape()));
  }
  if (!problems.empty()) {
    std::string list;
    for (const std::string& p : problems) list += "\n  " + p;
    DTRAIN_THROW(ValueError, printable(source), " does not fit the model (", problems.size(),
                 problems.size() == 1 ? " problem" : " problems", "):", list);
  }
  model.load_state_dict(fitted);
}

}  // namespace dtrain::train
