// Finite-difference gradient checking (float64), for op tests and for users' own functions.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "dtrain/tensor/tensor.h"

namespace dtrain {

struct GradcheckResult {
  bool ok = true;
  /// On failure: which input and element, the analytic and numerical values.
  std::string message;
  double max_abs_error = 0;
};

/// Compares the gradients autograd computes for fn(inputs) against central differences.
/// Inputs must be float64 tensors; those with requires_grad are checked. fn may return any shape:
/// each output element is checked through a one-hot backward.
GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                          const std::vector<Tensor>& inputs, double eps = 1e-6, double atol = 1e-5,
                          double rtol = 1e-3);

}  // namespace dtrain
