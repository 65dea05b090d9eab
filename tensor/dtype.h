// Element types and devices: the two facts besides the shape that every tensor carries.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dtrain {

enum class DType : uint8_t {
  kFloat32,
  kFloat64,
  kFloat16,
  kBFloat16,
  kInt64,
  kInt32,
  kUInt8,
  kBool
};

size_t dtype_size(DType t);
std::string_view dtype_name(DType t);  // "float32", "bfloat16", ...
bool is_floating(DType t);

template <class T>
struct DTypeOf;
template <>
struct DTypeOf<float> {
  static constexpr DType value = DType::kFloat32;
};
template <>
struct DTypeOf<double> {
  static constexpr DType value = DType::kFloat64;
};
template <>
struct DTypeOf<int64_t> {
  static constexpr DType value = DType::kInt64;
};
template <>
struct DTypeOf<int32_t> {
  static constexpr DType value = DType::kInt32;
};
template <>
struct DTypeOf<uint8_t> {
  static constexpr DType value = DType::kUInt8;
};
template <>
struct DTypeOf<bool> {
  static constexpr DType value = DType::kBool;
};

struct Device {
  enum class Type : uint8_t { kCPU, kCUDA };
  Type type = Type::kCPU;
  int index = 0;

  static Device cpu() { return {}; }
  static Device cuda(int index = 0) { return {Type::kCUDA, index}; }
  /// Parses "cpu", "cuda", "cuda:N"; throws ValueError naming the text otherwise.
  static Device parse(std::string_view text);
  bool is_cpu() const { return type == Type::kCPU; }
  bool is_cuda() const { return type == Type::kCUDA; }
  std::string str() const;
  bool operator==(const Device&) const = default;
};

}  // namespace dtrain
