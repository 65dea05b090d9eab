// Gradient clipping by the global L2 norm of all gradients (torch.nn.utils.clip_grad_norm_).
#pragma once

#include <vector>

#include "dtrain/tensor/tensor.h"

namespace dtrain::nn {

/// Sum of the squares of every element of `tensors` (undefined ones skipped), in float64 by
/// tensor ops on each tensor's device, in a fixed order; blocks once to read it on the host.
double sum_of_squares(const std::vector<Tensor>& tensors);

/// Multiplies every gradient of `params` by `coef` in place when coef < 1 (clipping's scale).
void scale_gradients_(const std::vector<Tensor>& params, double coef);

/// L2 norm of the gradients of `params` as if they were one concatenated vector; parameters
/// without a gradient are skipped (0 when none has one). Summed in float64 by tensor ops on each
/// gradient's device, in a fixed order; blocks once to read the result on the host.
double grad_norm(const std::vector<Tensor>& params);

/// Scales every gradient in place by max_norm / (norm + 1e-6) when that factor is below 1, as
/// PyTorch does, and returns the norm before clipping. A non-finite norm is returned as it is
/// (PyTorch's error_if_nonfinite=False); the caller decides whether to skip the step.
/// Throws ValueError unless max_norm > 0. Not thread-safe with a concurrent backward.
double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm);

}  // namespace dtrain::nn
