// Internals shared by op implementations: dtype dispatch (calls f(T{}) with the C++ type of a
// dtype, or throws UnsupportedError naming the op and the dtype), operand checks, and the index
// arithmetic of reductions along a dim and of broadcasting.
#pragma once

#include <cstdint>

#include "dtrain/tensor/check.h"
#include "dtrain/tensor/kernels.h"
#include "dtrain/tensor/tensor.h"

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

/// A shape seen as [outer, r, inner] around dim: for reductions and ops along one dim.
struct Split {
  int64_t outer = 1, r = 1, inner = 1;
};
Split split_at(const Shape& shape, int64_t dim);

/// Offsets of a and b (broadcast to `out`, NumPy rules) for each flat index of `out`.
kernels::BroadcastIndex broadcast_index(const Shape& out, const Shape& a, const Shape& b);

}  // namespace dtrain::detail
