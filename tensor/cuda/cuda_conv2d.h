// ops::conv2d and its gradients for CUDA tensors: cuDNN where it loads and DTRAIN_CUDNN allows,
// otherwise im2col + cuBLAS with one batched GEMM per pass.
#pragma once

#include "dtrain/tensor/ops.h"

namespace dtrain::ops {

// The operands are on one device and already validated by the ops::conv2d entry points, which
// send CUDA tensors here. cuDNN serves float32 at train.precision float32; other precisions
// (16-bit GEMM operands), shapes cuDNN has no deterministic FP32 algorithm for, and CPU tensors
// (the tests' way to check the im2col arithmetic without a GPU) take the im2col path.
/// x [N, C, H, W], w [O, C, KH, KW], bias [O] or undefined -> [N, O, OH, OW].
Tensor conv2d_cuda(const Tensor& x, const Tensor& w, const Tensor& bias, Conv2dArgs args);
/// gy [N, O, OH, OW] -> dx of x_shape.
Tensor conv2d_backward_input_cuda(const Tensor& gy, const Tensor& w, const Shape& x_shape,
                                  Conv2dArgs args);
/// gy [N, O, OH, OW] -> dw of w_shape, summed over the batch.
Tensor conv2d_backward_weight_cuda(const Tensor& gy, const Tensor& x, const Shape& w_shape,
                                   Conv2dArgs args);

}  // namespace dtrain::ops
