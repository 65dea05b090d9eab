// Forward computations and their backward formulas.
#include "dtrain/autograd/functions.h"

#include <cstring>

#include "dtrain/autograd/node.h"
#include "dtrain/tensor/dispatch.h"

namespace dtrain {

using autograd::record;
using kernels::Binary;
using kernels::Unary;
using Grads = std::vector<Tensor>;

namespace {
Tensor un(Unary op, const Tensor& x, double p = 0, double lo = 0, double hi = 0) {
  return ops::unary(op, x, {p, lo, hi});
}
Tensor bin(Binary op, const Tensor& a, const Tensor& b) { return ops::binary(op, a, b); }
bool needs(const Tensor& t) { return t.defined() && t.requires_grad(); }
Tensor scalar_like(const Tensor& t, double v) { return scalar_tensor(v, t.dtype(), t.device()); }
}  // namespace

// ---- elementwise ----------------------------------------------------------------------------
Tensor add(const Tensor& a, const Tensor& b) {
  return record(
      bin(Binary::kAdd, a, b), "add", {a, b},
      [sa = a.shape(), sb = b.shape(), ra = needs(a), rb = needs(b)](const Tensor& g) {
        return Grads{ra ? ops::sum_to(g, sa) : Tensor(), rb ? ops::sum_to(g, sb) : Tensor()};
      });
}

Tensor sub(const Tensor& a, const Tensor& b) {
  return record(bin(Binary::kSub, a, b), "sub", {a, b},
                [sa = a.shape(), sb = b.shape(), ra = needs(a), rb = needs(b)](const Tensor& g) {
                  return Grads{ra ? ops::sum_to(g, sa) : Tensor(),
                               rb ? ops::sum_to(un(Unary::kNeg, g), sb) : Tensor()};
                });
}

Tensor mul(const Tensor& a, const Tensor& b) {
  return record(bin(Binary::kMul, a, b), "mul", {a, b},
                [a = a.detach(), b = b.detach(), ra = needs(a), rb = needs(b)](const Tensor& g) {
                  return Grads{ra ? ops::sum_to(bin(Binary::kMul, g, b), a.shape()) : Tensor(),
                               rb ? ops::sum_to(bin(Binary::kMul, g, a), b.shape()) : Tensor()};
                });
}

Tensor div(const Tensor& a, const Tensor& b) {
  return record(bin(Binary::kDiv, a, b), "div", {a, b},
                [a = a.detach(), b = b.detach(), ra = needs(a), rb = needs(b)](const Tensor& g) {
                  Tensor ga, gb;
                  if (ra) ga = ops::sum_to(bin(Binary::kDiv, g, b), a.shape());
                  if (rb) {
                    // d(a/b)/db = -a / b^2
                    Tensor t = bin(Binary::kDiv, bin(Binary::kMul, g, a), un(Unary::kSquare, b));
                    gb = ops::sum_to(un(Unary::kNeg, t), b.shape());
                  }
                  return Grads{ga, gb};
                });
}

Tensor add(const Tensor& a, double b) {
  return record(un(Unary::kAddScalar, a, b), "add", {a}, [](const Tensor& g) { return Grads{g}; });
}

Tensor mul(const Tensor& a, double b) {
  return record(un(Unary::kMulScalar, a, b), "mul", {a},
                [b](const Tensor& g) { return Grads{un(Unary::kMulScalar, g, b)}; });
}

Tensor neg(const Tensor& x) {
  return record(un(Unary::kNeg, x), "neg", {x},
                [](const Tensor& g) { return Grads{un(Unary::kNeg, g)}; });
}

Tensor exp(const Tensor& x) {
  Tensor y = un(Unary::kExp, x);
  return record(y, "exp", {x},
                [y = y.detach()](const Tensor& g) { return Grads{bin(Binary::kMul, g, y)}; });
}

Tensor log(const Tensor& x) {
  return record(un(Unary::kLog, x), "log", {x},
                [x = x.detach()](const Tensor& g) { return Grads{bin(Binary::kDiv, g, x)}; });
}

Tensor sqrt(const Tensor& x) {
  Tensor y = un(Unary::kSqrt, x);
  return record(y, "sqrt", {x}, [y = y.detach()](const Tensor& g) {
    return Grads{bin(Binary::kDiv, un(Unary::kMulScalar, g, 0.5), y)};
  });
}

Tensor pow(const Tensor& x, double p) {
  return record(un(Unary::kPow, x, p), "pow", {x}, [x = x.detach(), p](const Tensor& g) {
    return Grads{bin(Binary::kMul, g, un(Unary::kMulScalar, un(Unary::kPow, x, p - 1), p))};
  });
}

Tensor abs(const Tensor& x) {
  return record(un(Unary::kAbs, x), "abs", {x}, [x = x.detach()](const Tensor& g) {
    return Grads{bin(Binary::kMul, g, un(Unary::kSign, x))};
  });
}

Tensor relu(const Tensor& x) {
  Tensor y = un(Unary::kRelu, x);
  return record(y, "relu", {x}, [y = y.detach()](const Tensor& g) {
    return Grads{bin(Binary::kReluBackward, y, g)};
  });
}

Tensor gelu(const Tensor& x) {
  return record(un(Unary::kGelu, x), "gelu", {x}, [x = x.detach()](const Tensor& g) {
    return Grads{bin(Binary::kGeluBackward, x, g)};
  });
}

Tensor tanh(const Tensor& x) {
  Tensor y = un(Unary::kTanh, x);
  return record(y, "tanh", {x}, [y = y.detach()](const Tensor& g) {
    return Grads{bin(Binary::kTanhBackward, y, g)};
  });
}

Tensor sigmoid(const Tensor& x) {
  Tensor y = un(Unary::kSigmoid, x);
  return record(y, "sigmoid", {x}, [y = y.detach()](const Tensor& g) {
    return Grads{bin(Binary::kSigmoidBackward, y, g)};
  });
}

Tensor clamp(const Tensor& x, double lo, double hi) {
  DTRAIN_CHECK(lo <= hi, "clamp: lo ", lo, " is greater than hi ", hi);
  return record(
      un(Unary::kClamp, x, 0, lo, hi), "clamp", {x}, [x = x.detach(), lo, hi](const Tensor& g) {
        Tensor inside =
            bin(Binary::kMul, to_dtype(bin(Binary::kGe, x, scalar_like(x, lo)), x.dtype()),
                to_dtype(bin(Binary::kLe, x, scalar_like(x, hi)), x.dtype()));
        return Grads{bin(Binary::kMul, g, inside)};
      });
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  return record(ops::where(cond, a, b), "where", {a, b},
                [c = cond.detach(), sa = a.shape(), sb = b.shape(), ra = needs(a),
                 rb = needs(b)](const Tensor& g) {
                  Tensor zero = scalar_like(g, 0);
                  return Grads{ra ? ops::sum_to(ops::where(c, g, zero), sa) : Tensor(),
                               rb ? ops::sum_to(ops::where(c, zero, g), sb) : Tensor()};
                });
}

Tensor eq(const Tensor& a, const Tensor& b) { return bin(Binary::kEq, a, b); }
Tensor ne(const Tensor& a, const Tensor& b) { return bin(Binary::kNe, a, b); }
Tensor lt(const Tensor& a, const Tensor& b) { return bin(Binary::kLt, a, b); }
Tensor le(const Tensor& a, const Tensor& b) { return bin(Binary::kLe, a, b); }
Tensor gt(const Tensor& a, const Tensor& b) { return bin(Binary::kGt, a, b); }
Tensor ge(const Tensor& a, const Tensor& b) { return bin(Binary::kGe, a, b); }

Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator-(const Tensor& x) { return neg(x); }
Tensor operator+(const Tensor& a, double b) { return add(a, b); }
Tensor operator-(const Tensor& a, double b) { return add(a, -b); }
Tensor operator*(const Tensor& a, double b) { return mul(a, b); }
Tensor operator/(const Tensor& a, double b) { return mul(a, 1.0 / b); }
Tensor operator*(double a, const Tensor& b) { return mul(b, a); }
Tensor operator+(double a, const Tensor& b) { return add(b, a); }

// ---- reductions -----------------------------------------------------------------------------
namespace {
/// The gradient of a reduction, broadcast back to the input's shape.
Tensor expand_reduced(const Tensor& g, const Shape& in_shape, std::vector<int64_t> dims) {
  Shape keep = in_shape;
  const int64_t nd = static_cast<int64_t>(in_shape.size());
  if (dims.empty() || in_shape.empty()) {
    for (auto& d : keep) d = 1;
  } else {
    for (int64_t d : dims) keep[ops::normalize_dim(d, nd, "reduction backward")] = 1;
  }
  return ops::expand(g.view(keep), in_shape);
}
int64_t reduced_count(const Shape& shape, const std::vector<int64_t>& dims) {
  if (dims.empty() || shape.empty()) return shape_numel(shape);
  int64_t n = 1;
  for (int64_t d : dims) n *= shape[ops::normalize_dim(d, shape.size(), "mean")];
  return n;
}
}  // namespace

Tensor sum(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  return record(ops::sum(x, dims, keepdim), "sum", {x}, [s = x.shape(), dims](const Tensor& g) {
    return Grads{expand_reduced(g, s, dims)};
  });
}

Tensor mean(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  const double scale =
      1.0 / static_cast<double>(std::max<int64_t>(1, reduced_count(x.shape(), dims)));
  return record(ops::mean(x, dims, keepdim), "mean", {x},
                [s = x.shape(), dims, scale](const Tensor& g) {
                  Tensor e = expand_reduced(g, s, dims);
                  ops::scale_(e, scale);
                  return Grads{e};
                });
}

std::pair<Tensor, Tensor> max(const Tensor& x, int64_t dim, bool keepdim) {
  auto [values, indices] = ops::max(x, dim, keepdim);
  dim = ops::normalize_dim(dim, x.dim(), "max");
  values = record(values, "max", {x}, [s = x.shape(), dim, idx = indices](const Tensor& g) {
    return Grads{ops::max_backward(g, idx, s, dim)};
  });
  return {values, indices};
}

Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) { return ops::argmax(x, dim, keepdim); }

// ---- linear algebra -------------------------------------------------------------------------
Tensor matmul(const Tensor& a, const Tensor& b) {
  return record(
      ops::matmul(a, b), "matmul", {a, b},
      [a = a.detach(), b = b.detach(), ra = needs(a), rb = needs(b)](const Tensor& g) {
        Tensor ga, gb;
        if (ra) ga = ops::sum_to(ops::matmul(g, b, false, true), a.shape());
        if (rb) {
          if (b.dim() == 2 && a.dim() > 2) {
            // Rows of every batch against one matrix: a single GEMM over stacked rows.
            gb = ops::matmul(a.view({-1, a.size(-1)}), g.view({-1, g.size(-1)}), true, false);
          } else {
            gb = ops::sum_to(ops::matmul(a, g, true, false), b.shape());
          }
        }
        return Grads{ga, gb};
      });
}

Tensor bmm(const Tensor& a, const Tensor& b) {
  detail::check_defined("bmm", a, "a");
  detail::check_defined("bmm", b, "b");
  if (a.dim() != 3 || b.dim() != 3 || a.size(0) != b.size(0) || a.size(2) != b.size(1)) {
    DTRAIN_THROW(ValueError, "bmm: expects [B, M, K] @ [B, K, N]; got ", a.describe(), " @ ",
                 b.describe(), ". Use matmul for broadcast batch dims");
  }
  return matmul(a, b);
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  detail::check_same("linear", x, weight);
  DTRAIN_CHECK(weight.dim() == 2, "linear: weight must be [out, in]; got ", weight.describe());
  if (x.dim() < 1 || x.size(-1) != weight.size(1)) {
    DTRAIN_THROW(ValueError, "Linear(", weight.size(1), " -> ", weight.size(0), "): input ",
                 x.describe(), "; expected [N, ", weight.size(1), "]",
                 x.dim() > 2 ? ". Add Flatten before it?" : "");
  }
  const Tensor x2 = x.dim() == 2 ? x : x.view({-1, x.size(-1)});
  Tensor y;
  if (bias.defined()) {
    detail::check_same("linear", x, bias);
    DTRAIN_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0), "linear: bias must be [",
                 weight.size(0), "]; got ", bias.describe());
    // Bias first, then GEMM with beta = 1: one pass over the output instead of two.
    y = ops::expand(bias.view({1, bias.size(0)}), {x2.size(0), weight.size(0)});
    ops::gemm(false, true, x2, weight, y, 1.f, 1.f);
  } else {
    y = Tensor({x2.size(0), weight.size(0)}, x.dtype(), x.device());
    ops::gemm(false, true, x2, weight, y);
  }
  Shape out_shape = x.shape();
  out_shape.back() = weight.size(0);
  return record(y.view(out_shape), "linear", {x, weight, bias},
                [x2 = x2.detach(), w = weight.detach(), xs = x.shape(), rx = needs(x),
                 rw = needs(weight), rb = needs(bias)](const Tensor& g) {
                  const Tensor g2 = g.view({-1, g.size(-1)});
                  Tensor gx, gw, gb;
                  if (rx) gx = ops::matmul(g2, w).view(xs);
                  if (rw) {
                    gw = Tensor(w.shape(), w.dtype(), w.device());
                    ops::gemm(true, false, g2, x2, gw);
                  }
                  if (rb) gb = ops::sum(g2, {0});
                  return Grads{gx, gw, gb};
                });
}

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t stride,
              int64_t padding) {
  const ops::Conv2dArgs args{stride, padding};
  return record(ops::conv2d(x, weight, bias, args), "conv2d", {x, weight, bias},
                [x = x.detach(), w = weight.detach(), args, rx = needs(x), rw = needs(weight),
                 rb = needs(bias)](const Tensor& g) {
                  Tensor db;
                  auto [dx, dw] = ops::conv2d_backward(g, x, w, args, rx, rw, rb ? &db : nullptr);
                  return Grads{dx, dw, db};
                });
}

Tensor max_pool2d(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding) {
  auto [y, idx] = ops::max_pool2d(x, {kernel, stride, padding});
  const ops::Pool2dArgs window{kernel, stride, padding};
  return record(y, "max_pool2d", {x}, [s = x.shape(), idx = idx, window](const Tensor& g) {
    return Grads{ops::max_pool2d_backward(g, idx, s, window)};
  });
}

Tensor avg_pool2d(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding) {
  const ops::Pool2dArgs args{kernel, stride, padding};
  return record(ops::avg_pool2d(x, args), "avg_pool2d", {x},
                [s = x.shape(), args](const Tensor& g) {
                  return Grads{ops::avg_pool2d_backward(g, s, args)};
                });
}

// ---- softmax, losses ------------------------------------------------------------------------
Tensor softmax(const Tensor& x, int64_t dim) {
  Tensor y = ops::softmax(x, dim);
  return record(y, "softmax", {x}, [y = y.detach(), dim](const Tensor& g) {
    return Grads{ops::softmax_backward(y, g, dim)};
  });
}

Tensor log_softmax(const Tensor& x, int64_t dim) {
  Tensor y = ops::log_softmax(x, dim);
  return record(y, "log_softmax", {x}, [y = y.detach(), dim](const Tensor& g) {
    return Grads{ops::log_softmax_backward(y, g, dim)};
  });
}

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, double label_smoothing) {
  auto [loss, probs] = ops::softmax_cross_entropy(logits, targets, label_smoothing);
  return record(
      loss, "cross_entropy", {logits},
      [probs = probs, t = targets, label_smoothing](const Tensor& g) {
        if (g.device().is_cuda()) {
          // g stays on the device: reading it would make the host wait every step.
          return Grads{bin(Binary::kMul,
                           ops::softmax_cross_entropy_backward(probs, t, 1.0, label_smoothing), g)};
        }
        return Grads{
            ops::softmax_cross_entropy_backward(probs, t, g.item<double>(), label_smoothing)};
      });
}

Tensor nll_loss(const Tensor& log_probs, const Tensor& targets) {
  return record(ops::nll_loss(log_probs, targets), "nll_loss", {log_probs},
                [shape = log_probs.shape(), t = targets, dtype = log_probs.dtype(),
                 device = log_probs.device()](const Tensor& g) {
                  return Grads{ops::nll_loss_backward(shape, t, g.item<double>(), dtype, device)};
                });
}

Tensor mse_loss(const Tensor& input, const Tensor& target) {
  DTRAIN_CHECK(input.shape() == target.shape(), "mse_loss: input ", input.describe(),
               " and target ", target.describe(), " differ in shape");
  Tensor diff = sub(input, target);
  return mean(mul(diff, diff));
}

// ---- normalisation, dropout, embedding ------------------------------------------------------
Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight,
                  const Tensor& bias, double eps) {
  const int64_t k = static_cast<int64_t>(normalized_shape.size());
  DTRAIN_CHECK(
      k >= 1 && k <= x.dim() && Shape(x.shape().end() - k, x.shape().end()) == normalized_shape,
      "layer_norm: input ", x.describe(), " does not end in normalized_shape ",
      shape_str(normalized_shape));
  const int64_t group = shape_numel(normalized_shape);
  auto [y, stats] = ops::layer_norm(x, group, weight, bias, eps);
  return record(y, "layer_norm", {x, weight, bias},
                [x = x.detach(), w = weight.defined() ? weight.detach() : Tensor(), stats = stats,
                 group, ws = weight.defined() ? weight.shape() : Shape{}](const Tensor& g) {
                  auto grads = ops::layer_norm_backward(g, x, stats, w, group);
                  if (w.defined()) grads[1] = grads[1].view(ws);
                  if (w.defined()) grads[2] = grads[2].view(ws);
                  return grads;
                });
}

Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias,
                  const Tensor& running_mean, const Tensor& running_var, bool training,
                  double momentum, double eps) {
  auto [y, stats] =
      ops::batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps);
  return record(
      y, "batch_norm", {x, weight, bias},
      [x = x.detach(), w = weight.defined() ? weight.detach() : Tensor(), stats = stats,
       training](const Tensor& g) { return ops::batch_norm_backward(g, x, stats, w, training); });
}

Tensor dropout(const Tensor& x, double p, bool training, Generator& gen) {
  if (!training || p == 0) return x;
  Tensor mask = ops::dropout_mask(x.shape(), p, gen, x.dtype(), x.device());
  return record(bin(Binary::kMul, x, mask), "dropout", {x},
                [mask](const Tensor& g) { return Grads{bin(Binary::kMul, g, mask)}; });
}

Tensor embedding(const Tensor& weight, const Tensor& indices) {
  return record(ops::embedding(weight, indices), "embedding", {weight},
                [idx = indices, v = weight.size(0)](const Tensor& g) {
                  return Grads{ops::embedding_backward(g, idx, v)};
                });
}

// ---- shape ----------------------------------------------------------------------------------
Tensor reshape(const Tensor& x, const Shape& shape) {
  return record(x.view(shape), "reshape", {x},
                [s = x.shape()](const Tensor& g) { return Grads{g.view(s)}; });
}

Tensor flatten(const Tensor& x, int64_t start_dim) {
  start_dim = ops::normalize_dim(start_dim, x.dim(), "flatten");
  Shape s(x.shape().begin(), x.shape().begin() + start_dim);
  s.push_back(-1);
  if (x.numel() == 0) s.back() = 0;
  return reshape(x, s);
}

Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end) {
  Tensor y = ops::slice(x, dim, start, end);
  dim = ops::normalize_dim(dim, x.dim(), "slice");
  const int64_t begin = start < 0 ? start + x.size(dim) : start;
  return record(y, "slice", {x}, [s = x.shape(), dim, begin](const Tensor& g) {
    // Zero pieces around the gradient, on its device, joined along dim.
    std::vector<Tensor> parts;
    Shape before = s, after = s;
    before[dim] = begin;
    after[dim] = s[dim] - begin - g.size(dim);
    if (before[dim] > 0) parts.push_back(zeros(before, g.dtype(), g.device()));
    parts.push_back(g);
    if (after[dim] > 0) parts.push_back(zeros(after, g.dtype(), g.device()));
    return Grads{parts.size() == 1 ? g : ops::cat(parts, dim)};
  });
}

Tensor cat(const std::vector<Tensor>& xs, int64_t dim) {
  Tensor y = ops::cat(xs, dim);
  dim = ops::normalize_dim(dim, xs[0].dim(), "cat");
  std::vector<int64_t> sizes;
  for (const Tensor& x : xs) sizes.push_back(x.size(dim));
  return record(y, "cat", xs, [sizes, dim](const Tensor& g) {
    Grads grads;
    int64_t at = 0;
    for (int64_t n : sizes) {
      grads.push_back(ops::slice(g, dim, at, at + n).clone());
      at += n;
    }
    return grads;
  });
}

Tensor stack(const std::vector<Tensor>& xs, int64_t dim) {
  DTRAIN_CHECK(!xs.empty(), "stack: needs at least one tensor");
  dim = ops::normalize_dim(dim, xs[0].dim() + 1, "stack");
  std::vector<Tensor> expanded;
  for (const Tensor& x : xs) {
    Shape s = x.shape();
    s.insert(s.begin() + dim, 1);
    expanded.push_back(reshape(x, s));
  }
  return cat(expanded, dim);
}

Tensor permute(const Tensor& x, const std::vector<int64_t>& dims) {
  Tensor y = ops::permute(x, dims);
  std::vector<int64_t> inverse(dims.size());
  for (size_t i = 0; i < dims.size(); ++i)
    inverse[ops::normalize_dim(dims[i], x.dim(), "permute")] = i;
  return record(y, "permute", {x},
                [inverse](const Tensor& g) { return Grads{ops::permute(g, inverse)}; });
}

Tensor transpose(const Tensor& x, int64_t d0, int64_t d1) {
  if (x.dim() == 0) {  // swapping the only valid dim with itself
    ops::normalize_dim(d0, 0, "transpose");
    ops::normalize_dim(d1, 0, "transpose");
    return reshape(x, {});
  }
  std::vector<int64_t> dims(x.dim());
  for (int64_t i = 0; i < x.dim(); ++i) dims[i] = i;
  std::swap(dims[ops::normalize_dim(d0, x.dim(), "transpose")],
            dims[ops::normalize_dim(d1, x.dim(), "transpose")]);
  return permute(x, dims);
}

Tensor to(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  return record(to_dtype(x, dtype), "to", {x},
                [from = x.dtype()](const Tensor& g) { return Grads{to_dtype(g, from)}; });
}

Tensor to(const Tensor& x, Device device) {
  if (x.device() == device) return x;
  return record(to_device(x, device), "to", {x},
                [from = x.device()](const Tensor& g) { return Grads{to_device(g, from)}; });
}

}  // namespace dtrain
