// Small helpers for the tensor tests: random inputs, row-major index math for naive reference
// loops, a thread-count guard and error-message capture.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "dtrain/tensor/check.h"
#include "dtrain/tensor/cpu/parallel.h"
#include "dtrain/tensor/tensor.h"

namespace dtrain::testref {

/// Uniform values in [lo, hi) from a generator of its own, so tests do not share RNG state.
inline Tensor random_tensor(const Shape& shape, uint64_t seed, double lo = -1.0, double hi = 1.0,
                            DType dtype = DType::kFloat32) {
  Generator gen(seed, /*stream=*/7);
  return uniform(shape, lo, hi, gen, dtype);
}

/// Host values converted to `dtype`.
inline Tensor tensor_of(const std::vector<double>& values, const Shape& shape,
                        DType dtype = DType::kFloat32) {
  return to_dtype(from_vector(values, shape), dtype);
}

/// Row-major multi-index of flat index i.
inline std::vector<int64_t> unravel(int64_t i, const Shape& shape) {
  std::vector<int64_t> idx(shape.size());
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    idx[d] = i % shape[d];
    i /= shape[d];
  }
  return idx;
}

/// Flat row-major index of a multi-index.
inline int64_t ravel(const std::vector<int64_t>& idx, const Shape& shape) {
  int64_t flat = 0;
  for (size_t d = 0; d < shape.size(); ++d) flat = flat * shape[d] + idx[d];
  return flat;
}

/// Flat index into `in_shape` of output multi-index `out_idx` under NumPy broadcasting
/// (shapes right-aligned, size-1 dims pinned to 0).
inline int64_t broadcast_source(const std::vector<int64_t>& out_idx, const Shape& in_shape) {
  const size_t lead = out_idx.size() - in_shape.size();
  int64_t flat = 0;
  for (size_t d = 0; d < in_shape.size(); ++d) {
    const int64_t i = in_shape[d] == 1 ? 0 : out_idx[lead + d];
    flat = flat * in_shape[d] + i;
  }
  return flat;
}

/// Sets the CPU thread count for a scope and restores the previous one.
class ThreadCountGuard {
 public:
  explicit ThreadCountGuard(int n) : saved_(cpu::num_threads()) { cpu::set_num_threads(n); }
  ~ThreadCountGuard() { cpu::set_num_threads(saved_); }
  ThreadCountGuard(const ThreadCountGuard&) = delete;
  ThreadCountGuard& operator=(const ThreadCountGuard&) = delete;

 private:
  int saved_;
};

/// The message() of the dtrain::Error that f throws, or a marker when it throws none.
inline std::string error_message(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.message();
  }
  return "<no dtrain::Error thrown>";
}

}  // namespace dtrain::testref
