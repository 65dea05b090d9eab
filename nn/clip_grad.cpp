// Global-norm gradient clipping with tensor ops, so gradients stay on their device.
#include "dtrain/nn/clip_grad.h"

#include <cmath>

#include "dtrain/tensor/ops.h"

namespace dtrain::nn {

namespace {

/// Sum of the squares of g's elements in float64, as a one-element tensor on g's device.
Tensor squares_summed(const Tensor& g) {
  // Reducing the bulk as [rows, kCols] over rows first gives kCols independent partial sums; a
  // reduction over all elements at once is one sequential pass on a device.
  constexpr int64_t kCols = 1024;
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
  Tensor total;
  for (const Tensor& t : tensors) {
    if (!t.defined()) continue;
    Tensor s = squares_summed(t);
    total = total.defined()
                ? ops::binary(kernels::Binary::kAdd, total, to_device(s, total.device()))
                : s;
  }
  return total.defined() ? total.item<double>() : 0.0;
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
