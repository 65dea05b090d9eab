// Host reductions for the collectives.
#include "dtrain/distributed/reduce.h"

#include <algorithm>

#include "dtrain/tensor/check.h"
#include "dtrain/tensor/cpu/half_convert.h"
#include "dtrain/tensor/kernels.h"

namespace dtrain::dist {
namespace {

template <class T>
T combine(T a, T b, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg:
      return a + b;
    case ReduceOp::kMin:
      return b < a ? b : a;
    case ReduceOp::kMax:
      return b > a ? b : a;
    case ReduceOp::kProduct:
      return a * b;
  }
  return a;
}

template <class T>
void reduce_typed(T* dst, const T* src, int64_t n, ReduceOp op) {
  // Switch outside the loop so each op's loop vectorises.
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg:
      for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
      return;
    default:
      for (int64_t i = 0; i < n; ++i) dst[i] = combine(dst[i], src[i], op);
  }
}

template <float (*ToFloat)(uint16_t), uint16_t (*FromFloat)(float)>
void reduce_half(uint16_t* dst, const uint16_t* src, int64_t n, ReduceOp op) {
  if (op == ReduceOp::kSum || op == ReduceOp::kAvg) {  // the compressed gradients' case
    for (int64_t i = 0; i < n; ++i) dst[i] = FromFloat(ToFloat(dst[i]) + ToFloat(src[i]));
    return;
  }
  for (int64_t i = 0; i < n; ++i) dst[i] = FromFloat(combine(ToFloat(dst[i]), ToFloat(src[i]), op));
}

template <class T>
void divide_floats(T* p, int64_t n, int64_t divisor) {
  if ((divisor & (divisor - 1)) == 0) {
    // x * 2^-k is the same real number as x / 2^k, rounded once: the same bits, at a
    // multiplication's cost instead of a division's.
    const T reciprocal = T(1) / static_cast<T>(divisor);
    for (int64_t i = 0; i < n; ++i) p[i] *= reciprocal;
    return;
  }
  for (int64_t i = 0; i < n; ++i) p[i] /= static_cast<T>(divisor);
}

}  // namespace

std::string_view reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kAvg:
      return "avg";
    case ReduceOp::kMin:
      return "min";
    case ReduceOp::kMax:
      return "max";
    case ReduceOp::kProduct:
      return "product";
  }
  return "?";
}

bool is_collective_dtype(DType dtype) {
  return dtype == DType::kFloat32 || dtype == DType::kFloat64 || dtype == DType::kFloat16 ||
         dtype == DType::kBFloat16 || dtype == DType::kInt32 || dtype == DType::kInt64;
}

void reduce_into(void* dst, const void* src, int64_t n, DType dtype, ReduceOp op) {
  switch (dtype) {
    case DType::kFloat32:
      return reduce_typed(static_cast<float*>(dst), static_cast<const float*>(src), n, op);
    case DType::kFloat64:
      return reduce_typed(static_cast<double*>(dst), static_cast<const double*>(src), n, op);
    case DType::kInt32:
      return reduce_typed(static_cast<int32_t*>(dst), static_cast<const int32_t*>(src), n, op);
    case DType::kInt64:
      return reduce_typed(static_cast<int64_t*>(dst), static_cast<const int64_t*>(src), n, op);
    case DType::kFloat16:
      if (op == ReduceOp::kSum || op == ReduceOp::kAvg) {
        return cpu::add_halves_n(static_cast<uint16_t*>(dst), static_cast<const uint16_t*>(src), n);
      }
      return reduce_half<kernels::half_to_float, kernels::float_to_half>(
          static_cast<uint16_t*>(dst), static_cast<const uint16_t*>(src), n, op);
    case DType::kBFloat16:
      return reduce_half<kernels::bf16_to_float, kernels::float_to_bf16>(
          static_cast<uint16_t*>(dst), static_cast<const uint16_t*>(src), n, op);
    default:
      DTRAIN_THROW(UnsupportedError, "collective reduction: dtype ", dtype_name(dtype),
                   " is not supported");
  }
}

void divide_in_place(void* data, int64_t n, DType dtype, int64_t divisor) {
  if (divisor == 1) return;  // one rank: its values are the average already
  if (dtype == DType::kFloat32) return divide_floats(static_cast<float*>(data), n, divisor);
  if (dtype == DType::kFloat64) return divide_floats(static_cast<double*>(data), n, divisor);
  for (int64_t i = 0; i < n; ++i) {
    kernels::store_element(data, dtype, i, [&] {
      const double v = kernels::load_element(data, dtype, i);
      if (dtype == DType::kInt32 || dtype == DType::kInt64) {
        return static_cast<double>(static_cast<int64_t>(v) / divisor);
      }
      return v / static_cast<double>(divisor);
    }());
  }
}

}  // namespace dtrain::dist
