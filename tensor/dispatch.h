// Dtype dispatch for op implementations: calls f(T{}) with the C++ type of a dtype, or throws
// UnsupportedError naming the op and the dtype.
#pragma once

#include <cstdint>

#include "tensor/check.h"
#include "tensor/tensor.h"

namespace dtrain::detail {

template <class F>
void dispatch_floating(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::kFloat32:
      f(float{});
      return;
    case DType::kFloat64:
      f(double{});
      return;
    default:
      DTRAIN_THROW(UnsupportedError, op, ": dtype ", dtype_name(t),
                   " is not supported; expected float32 or float64 (convert with to_dtype)");
  }
}

template <class F>
void dispatch_numeric(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::kInt64:
      f(int64_t{});
      return;
    case DType::kInt32:
      f(int32_t{});
      return;
    case DType::kUInt8:
      f(uint8_t{});
      return;
    default:
      dispatch_floating(t, op, static_cast<F&&>(f));
  }
}

/// Both operands on the same device and of the same dtype, or an error naming both.
void check_same(const char* op, const Tensor& a, const Tensor& b);
void check_defined(const char* op, const Tensor& t, const char* what);
void check_cpu(const char* op, const Tensor& t);

}  // namespace dtrain::detail
