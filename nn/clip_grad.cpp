// Global-norm gradient clipping with tensor ops, so gradients stay on their device.
#include "dtrain/nn/clip_grad.h"

#include <cmath>

#include "dtrain/tensor/ops.h"

namespace dtrain::nn {

namespace {

// Reducing the bulk as [rows, kCols] over rows first gives kCols independent partial sums; a
// reduction over all elements at once is one sequential pass on a device, and a vector loop on
// the CPU.
constexpr int64_t kCols = 1024;

/// Sum of the squares of x[0, n) in float64, read in place: a float64 copy of every gradient, as
/// the tensor path makes, cost more than the rest of the clipping.
template <class T>
double squares_summed_on_host(const T* x, int64_t n) {
  double partial[kCols] = {};
  const int64_t rows = n / kCols;
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = x + r * kCols;
    for (int64_t j = 0; j < kCols; ++j) {
      const double v = static_cast<double>(row[j]);
      partial[j] += v * v;
    }
  }
  double total = 0;
  for (int64_t i = rows * kCols; i < n; ++i) {
    const double v = static_cast<double>(x[i]);
    total += v * v;
  }
  for (double p : partial) total += p;
  return total;
}

/// Sum of the squares of g's elements in float64, as a one-element tensor on g's device.
Tensor squares_summed(const Tensor& g) {
  const int64_t n = g.numel();
  Tensor sq = ops::unary(kernels::Unary::kSquare, to_dtype(g, DType::kFloat64)).view({n});
  const int64_t rows = n / kCols;
  if (rows < 2) return ops::sum(sq);
  Tensor bulk = ops::slice(sq, 0, 0, rows * kCols).view({rows, kCols});
  Tensor tail = ops::slice(sq, 0, rows * kCols, n);
  return ops::binary(kernels::Binary::kAdd, ops::sum(ops::sum(bulk, {0})), ops::sum(tail));
}

}  // namespace

double sum_of_squares(const std::vector<Tensor>& tensors) {
  double host_total = 0;
  Tensor total;
  for (const Tensor& t : tensors) {
    if (!t.defined()) continue;
    if (t.device().is_cpu() && t.dtype() == DType::kFloat32) {
      host_total += squares_summed_on_host(t.data<float>(), t.numel());
      continue;
    }
    if (t.device().is_cpu() && t.dtype() == DType::kFloat64) {
      host_total += squares_summed_on_host(t.data<double>(), t.numel());
      continue;
    }
    Tensor s = squares_summed(t);
    total = total.defined()
                ? ops::binary(kernels::Binary::kAdd, total, to_device(s, total.device()))
                : s;
  }
  return host_total + (total.defined() ? total.item<double>() : 0.0);
}

double grad_norm(const std::vector<Tensor>& params) {
  std::vector<Tensor> grads;
  for (const Tensor& p : params) {
    if (p.defined()) grads.push_back(p.grad());
  }
  return std::sqrt(sum_of_squares(grads));
}

void scale_gradients_(const std::vector<Tensor>& params, double coef) {
  if (coef >= 1.0) return;
  for (const Tensor& p : params) {
    if (!p.defined()) continue;
    Tensor g = p.grad();
    if (g.defined()) ops::scale_(g, coef);
  }
}

double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm) {
  DTRAIN_CHECK(max_norm > 0, "clip_grad_norm_: max_norm must be > 0; got ", max_norm);
  const double norm = grad_norm(params);
  scale_gradients_(params, max_norm / (norm + 1e-6));
  return norm;
}

}  // namespace dtrain::nn
