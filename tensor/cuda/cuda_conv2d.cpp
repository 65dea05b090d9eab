// Convolution on CUDA tensors: cuDNN (tensor/cuda/cudnn_conv.h) when it is loaded and allowed,
// else im2col + cuBLAS: one strided-batched GEMM for the forward and backward-data passes and one
// GEMM over all samples for the weight gradient.
#include "dtrain/tensor/cuda/cuda_conv2d.h"

#include <limits>

#include "dtrain/tensor/cuda/cudnn_conv.h"
#include "dtrain/tensor/dispatch.h"
#include "dtrain/tensor/kernels_nn.h"
#include "dtrain/tensor/precision.h"
#include "dtrain/tensor/run.h"

namespace dtrain::ops {
namespace {

cuda::ConvShape conv_shape(const Shape& x, const Shape& w, Conv2dArgs a) {
  return {x[0], x[1], x[2], x[3], w[0], w[2], w[3], a.stride, a.padding};
}

/// cuDNN's 4-D descriptors count elements in int, and it rejects empty tensors.
bool fits_cudnn(const cuda::ConvShape& s) {
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  const int64_t sizes[] = {s.n * s.c * s.h * s.w, s.o * s.c * s.kh * s.kw,
                           s.n * s.o * s.oh() * s.ow()};
  for (int64_t size : sizes)
    if (size <= 0 || size > kMax) return false;
  return true;
}

/// cuDNN computes in FP32 from float32 operands, which is train.precision float32 only. CPU
/// tensors take the im2col path too, which is how its arithmetic is tested without a GPU.
bool use_cudnn(const Tensor& t, const cuda::ConvShape& s) {
  return t.device().is_cuda() && t.dtype() == DType::kFloat32 &&
         matmul_precision() == DType::kFloat32 && fits_cudnn(s) && cuda::cudnn_allowed() &&
         cuda::cudnn_loaded();
}

/// Multiply-adds of one cuDNN pass times 2 (the im2col path counts its GEMMs in gemm()).
void count_pass(const cuda::ConvShape& s) {
  count_matrix_flops(2 * s.n * s.o * s.oh() * s.ow() * s.c * s.kh * s.kw);
}

kernels::Window2d window_of(const cuda::ConvShape& s) {
  return {s.h, s.w, s.oh(), s.ow(), s.kh, s.kw, s.stride, s.padding};
}

}  // namespace

Tensor conv2d_cuda(const Tensor& x, const Tensor& w, const Tensor& bias, Conv2dArgs args) {
  const cuda::ConvShape s = conv_shape(x.shape(), w.shape(), args);
  if (use_cudnn(x, s)) {
    Tensor y({s.n, s.o, s.oh(), s.ow()}, x.dtype(), x.device());
    if (cuda::cudnn_conv_forward(s, x.data_ptr<float>(), w.data_ptr<float>(), y.data_ptr<float>(),
                                 x.device().index)) {
      count_pass(s);
      if (bias.defined()) {
        Tensor planes = y.view({s.n, s.o, s.oh() * s.ow()});
        binary_(kernels::Binary::kAdd, planes, bias.view({s.o, 1}));
      }
      return y;
    }
  }
  // im2col, then W [O, CKK] @ cols [N, CKK, OHW]: matmul makes that one strided-batched GEMM.
  return conv2d_reference(x, w, bias, args);
}

Tensor conv2d_backward_input_cuda(const Tensor& gy, const Tensor& w, const Shape& x_shape,
                                  Conv2dArgs args) {
  const cuda::ConvShape s = conv_shape(x_shape, w.shape(), args);
  if (use_cudnn(gy, s)) {
    Tensor dx(x_shape, gy.dtype(), gy.device());
    if (cuda::cudnn_conv_backward_data(s, gy.data_ptr<float>(), w.data_ptr<float>(),
                                       dx.data_ptr<float>(), gy.device().index)) {
      count_pass(s);
      return dx;
    }
  }
  const int64_t ckk = s.c * s.kh * s.kw, ohw = s.oh() * s.ow();
  // cols[n] = W^T [CKK, O] @ gy[n] [O, OHW] in one batched GEMM, then scattered onto the image.
  Tensor cols = matmul(w.view({s.o, ckk}), gy.view({s.n, s.o, ohw}), true, false);
  Tensor dx = zeros(x_shape, gy.dtype(), gy.device());
  detail::dispatch_floating(gy.dtype(), "conv2d backward", [&](auto tag) {
    using T = decltype(tag);
    run_kernel(gy.device(), s.n * s.c,
               kernels::Col2imPlanes<T>{cols.data_ptr<T>(), dx.data_ptr<T>(), s.c, window_of(s)},
               1);
  });
  return dx;
}

Tensor conv2d_backward_weight_cuda(const Tensor& gy, const Tensor& x, const Shape& w_shape,
                                   Conv2dArgs args) {
  const cuda::ConvShape s = conv_shape(x.shape(), w_shape, args);
  Tensor dw(w_shape, gy.dtype(), gy.device());
  if (use_cudnn(gy, s) &&
      cuda::cudnn_conv_backward_filter(s, gy.data_ptr<float>(), x.data_ptr<float>(),
                                       dw.data_ptr<float>(), gy.device().index)) {
    count_pass(s);
    return dw;
  }
  const int64_t ckk = s.c * s.kh * s.kw, ohw = s.oh() * s.ow();
  // dW [O, CKK] = sum over n of gy[n] [O, OHW] @ cols[n]^T: with the batch moved next to the
  // pixels that is one GEMM, gy' [O, N*OHW] @ cols'^T [N*OHW, CKK].
  Tensor cols = im2col(x, s.kh, s.kw, args);  // [N, CKK, OHW]
  Tensor gy_rows = gy.view({s.n, s.o, ohw});
  if (s.n > 1) {
    gy_rows = permute(gy_rows, {1, 0, 2});  // [O, N, OHW]
    cols = permute(cols, {1, 0, 2});        // [CKK, N, OHW]
  }
  Tensor dw_rows = dw.view({s.o, ckk});
  gemm(false, true, gy_rows.view({s.o, s.n * ohw}), cols.view({ckk, s.n * ohw}), dw_rows);
  return dw;
}

}  // namespace dtrain::ops
