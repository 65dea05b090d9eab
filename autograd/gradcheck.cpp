// gradcheck: analytic Jacobian rows by one-hot backward, numerical columns by central differences.
#include "dtrain/autograd/gradcheck.h"

#include <cmath>
#include <sstream>

#include "dtrain/autograd/grad_mode.h"

namespace dtrain {

GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                          const std::vector<Tensor>& inputs, double eps, double atol, double rtol) {
  for (size_t i = 0; i < inputs.size(); ++i) {
    DTRAIN_CHECK(!inputs[i].defined() || !is_floating(inputs[i].dtype()) ||
                     inputs[i].dtype() == DType::kFloat64,
                 "gradcheck: input ", i, " is ", inputs[i].describe(),
                 "; use float64 for finite differences to be meaningful");
  }
  Tensor out0;
  {
    NoGradGuard no_grad;
    out0 = fn(inputs);
  }
  const int64_t n_out = out0.numel();
  GradcheckResult result;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& x = inputs[i];
    if (!x.defined() || !x.requires_grad()) continue;
    const int64_t n_in = x.numel();
    // Analytic Jacobian [n_out, n_in], one backward per output element.
    std::vector<double> analytic(n_out * n_in, 0.0);
    for (int64_t o = 0; o < n_out; ++o) {
      for (const Tensor& t : inputs) {
        if (t.defined() && t.requires_grad()) const_cast<Tensor&>(t).set_grad(Tensor());
      }
      Tensor out = fn(inputs);
      DTRAIN_CHECK(out.requires_grad(), "gradcheck: the function's output does not require grad");
      Tensor seed = zeros(out.shape(), out.dtype());
      seed.data<double>()[o] = 1.0;
      out.backward(seed);
      Tensor g = x.grad();
      if (g.defined()) {
        const double* pg = g.data<double>();
        for (int64_t k = 0; k < n_in; ++k) analytic[o * n_in + k] = pg[k];
      }
    }
    // Numerical Jacobian by central differences.
    double* px = x.data<double>();
    for (int64_t k = 0; k < n_in; ++k) {
      const double saved = px[k];
      Tensor plus, minus;
      {
        NoGradGuard no_grad;
        px[k] = saved + eps;
        plus = fn(inputs).clone();
        px[k] = saved - eps;
        minus = fn(inputs).clone();
        px[k] = saved;
      }
      const double* pp = plus.data<double>();
      const double* pm = minus.data<double>();
      for (int64_t o = 0; o < n_out; ++o) {
        const double numeric = (pp[o] - pm[o]) / (2 * eps);
        const double a = analytic[o * n_in + k];
        const double err = std::fabs(a - numeric);
        result.max_abs_error = std::max(result.max_abs_error, err);
        if (result.ok && err > atol + rtol * std::fabs(numeric)) {
          std::ostringstream os;
          os << "gradcheck: input " << i << " " << x.describe() << ", element " << k
             << ", output element " << o << ": analytic " << a << " vs numerical " << numeric;
          result.ok = false;
          result.message = os.str();
        }
      }
    }
  }
  for (const Tensor& t : inputs) {
    if (t.defined() && t.requires_grad()) const_cast<Tensor&>(t).set_grad(Tensor());
  }
  return result;
}

}  // namespace dtrain
