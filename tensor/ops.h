// Raw tensor operations: compute only, no autograd recording. The differentiable versions that
// users call (dtrain::add, dtrain::matmul, ...) live in autograd/functions.h and use these.
// Every op validates its operands and throws an error naming the op and both operands.
#pragma once

#include <optional>
#include <vector>

#include "dtrain/tensor/kernels.h"
#include "dtrain/tensor/tensor.h"

namespace dtrain::ops {

/// The broadcast shape of a and b (NumPy rules); throws naming op and both shapes.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

// ---- elementwise ----------------------------------------------------------------------------
Tensor unary(kernels::Unary op, const Tensor& x, kernels::UnaryParams params = {});
/// Broadcasting; comparisons return bool tensors.
Tensor binary(kernels::Binary op, const Tensor& a, const Tensor& b);
/// out = op(out, b) in place; b broadcasts to out's shape.
void binary_(kernels::Binary op, Tensor& out, const Tensor& b);
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
/// y += alpha * x (same shape) in place.
void axpy_(Tensor& y, double alpha, const Tensor& x);
void scale_(Tensor& t, double factor);
/// True when every element is finite.
bool all_finite(const Tensor& t);

// ---- optimiser updates (in place, PyTorch's rules; bodies in tensor/kernels.h) ---------------
// Every buffer matches the parameter in device, dtype and shape, or the op throws naming it.
// Elementwise, so the result does not depend on the device's thread or block count.
/// param -= lr * d, where d = grad + weight_decay * param, passed through momentum_buffer when
/// s.momentum != 0 (momentum_buffer is ignored, and may be undefined, otherwise).
/// s.first_step: the buffer is fresh and takes d as it is.
void sgd_update_(Tensor& param, const Tensor& grad, Tensor& momentum_buffer,
                 const kernels::SgdParams& s);
/// Adam (AdamW with s.decoupled): updates param, exp_avg and exp_avg_sq; s carries the bias
/// corrections 1 - beta^t for this parameter's step t.
void adam_update_(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                  const kernels::AdamParams& s);
/// RMSprop: updates param and square_avg, and momentum_buffer when s.momentum > 0 (ignored, and
/// may be undefined, otherwise).
void rmsprop_update_(Tensor& param, const Tensor& grad, Tensor& square_avg, Tensor& momentum_buffer,
                     const kernels::RmspropParams& s);

// ---- reductions (fixed order: the same bits on every run and thread count) --------------------
/// Sum over dims (empty = all); negative dims count from the end.
Tensor sum(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
/// Max over one dim: values and int64 indices (first maximum wins).
std::pair<Tensor, Tensor> max(const Tensor& x, int64_t dim, bool keepdim = false);
/// Gradient of max over dim: gy routed to the positions in indices (as max returned them).
Tensor max_backward(const Tensor& gy, const Tensor& indices, const Shape& x_shape, int64_t dim);
Tensor max_all(const Tensor& x);
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);
/// Sums a broadcast gradient back to `shape` (the reverse of broadcasting).
Tensor sum_to(const Tensor& g, const Shape& shape);

// ---- linear algebra -------------------------------------------------------------------------
/// Floating-point operations of the matrix products this process has run since it started: GEMMs,
/// matmuls and convolutions (forward and both gradients) on every device and dtype, counted as 2
/// per multiply-add, as model-FLOP utilisation counts them. Elementwise work, normalisation and the
/// optimiser are not counted. The difference over a span of time is the achieved matrix FLOP rate.
uint64_t matrix_flops();
/// Adds to matrix_flops(): for kernels that run a matrix product without going through gemm().
void count_matrix_flops(int64_t flops);
/// C = alpha * op(A) @ op(B) + beta * C for 2-D tensors, op = transpose when the flag is set.
/// Transposes are GEMM flags, never copies. float32 through oneDNN (CPU) or cuBLAS (CUDA).
void gemm(bool trans_a, bool trans_b, const Tensor& a, const Tensor& b, Tensor& c,
          float alpha = 1.f, float beta = 0.f);
/// [.., M, K] @ [.., K, N] with broadcast batch dims; both operands at least 2-D.
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
/// Matrix (i, j) of an [outer, inner] grid of row-major matrices inside a tensor: it starts at
/// element offset + i * outer_stride + j * inner_stride and its rows lie ld elements apart.
struct MatrixGrid {
  const Tensor& tensor;
  int64_t offset, outer_stride, inner_stride, ld;
};
/// C(i, j) = alpha op(A(i, j)) op(B(i, j)) + beta C(i, j) for every matrix of an [outer, inner]
/// grid, op(A) M x K and op(B) K x N: batched products over layouts such as the attention heads
/// inside [N, T, 3, H, hd], read and written in place instead of permuted into batches. The C
/// matrices must not overlap. float32 through oneDNN (CPU) or cuBLAS (CUDA), as gemm().
void gemm_grid(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
               const MatrixGrid& a, const MatrixGrid& b, float beta, const MatrixGrid& c,
               int64_t outer, int64_t inner);

// ---- convolution and pooling (NCHW) -------------------------------------------------------
struct Conv2dArgs {
  int64_t stride = 1, padding = 0;
};
/// x [N, C, H, W], w [O, C, KH, KW], bias [O] or undefined -> [N, O, OH, OW]. oneDNN on the CPU.
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, Conv2dArgs args);
/// Gradients of conv2d: dx (needs x's shape), dw, and with `bias_grad` also db (the sum of gy
/// over N, H and W; on the CPU in the same oneDNN pass as dw).
Tensor conv2d_backward_input(const Tensor& gy, const Tensor& w, const Shape& x_shape,
                             Conv2dArgs args);
Tensor conv2d_backward_weight(const Tensor& gy, const Tensor& x, const Shape& w_shape,
                              Conv2dArgs args, Tensor* bias_grad = nullptr);
/// Both passes of one convolution's backward (each when wanted, and db with `bias_grad`); on the
/// CPU they share the output gradient converted once to oneDNN's layout.
std::pair<Tensor, Tensor> conv2d_backward(const Tensor& gy, const Tensor& x, const Tensor& w,
                                          Conv2dArgs args, bool want_input, bool want_weight,
                                          Tensor* bias_grad = nullptr);
/// The reference implementation (im2col + GEMM) the tests compare oneDNN against.
Tensor conv2d_reference(const Tensor& x, const Tensor& w, const Tensor& bias, Conv2dArgs args);
Tensor im2col(const Tensor& x, int64_t kh, int64_t kw, Conv2dArgs args);  // [N, C*KH*KW, OH*OW]

struct Pool2dArgs {
  int64_t kernel = 2, stride = 2, padding = 0;
};
/// Returns output and, for max pooling, the flat input index of each maximum (int64).
std::pair<Tensor, Tensor> max_pool2d(const Tensor& x, Pool2dArgs args);
/// With the forward's `window` known to be 2x2 with stride 2 and no padding, the CPU writes each
/// window's four gradients in one pass instead of zeroing dx and scattering into it.
Tensor max_pool2d_backward(const Tensor& gy, const Tensor& indices, const Shape& x_shape,
                           std::optional<Pool2dArgs> window = std::nullopt);
/// Padding counts towards the divisor (PyTorch's count_include_pad=True).
Tensor avg_pool2d(const Tensor& x, Pool2dArgs args);
Tensor avg_pool2d_backward(const Tensor& gy, const Shape& x_shape, Pool2dArgs args);

// ---- softmax family, normalisation, losses ---------------------------------------------------
Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);
Tensor softmax_backward(const Tensor& y, const Tensor& gy, int64_t dim);
Tensor log_softmax_backward(const Tensor& y, const Tensor& gy, int64_t dim);
/// Mean cross-entropy of logits [N, C] against int64 targets [N]; also returns the softmax
/// probabilities, which the backward pass needs.
std::pair<Tensor, Tensor> softmax_cross_entropy(const Tensor& logits, const Tensor& targets,
                                                double label_smoothing = 0.0);
Tensor softmax_cross_entropy_backward(const Tensor& probs, const Tensor& targets, double grad_loss,
                                      double label_smoothing = 0.0);

/// Mean negative log-likelihood of log-probabilities [N, C] at int64 targets [N], and its
/// gradient for an upstream gradient grad_loss.
Tensor nll_loss(const Tensor& log_probs, const Tensor& targets);
Tensor nll_loss_backward(const Shape& shape, const Tensor& targets, double grad_loss, DType dtype,
                         Device device);

struct NormStats {
  Tensor mean, rstd;  // per normalised group
};
/// Normalises over the trailing dims whose product is `group` (x viewed as [rows, group]).
std::pair<Tensor, NormStats> layer_norm(const Tensor& x, int64_t group, const Tensor& weight,
                                        const Tensor& bias, double eps);
/// Returns dx, dweight, dbias.
std::vector<Tensor> layer_norm_backward(const Tensor& gy, const Tensor& x, const NormStats& stats,
                                        const Tensor& weight, int64_t group);
/// Batch norm over [N, C] or [N, C, H, W] with per-channel statistics. In training, updates
/// running stats (when defined) with `momentum` and the unbiased variance.
std::pair<Tensor, NormStats> batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                        Tensor running_mean, Tensor running_var, bool training,
                                        double momentum, double eps);
std::vector<Tensor> batch_norm_backward(const Tensor& gy, const Tensor& x, const NormStats& stats,
                                        const Tensor& weight, bool training);

// ---- indexing, shape ------------------------------------------------------------------------
/// weight [V, D], indices int64 of any shape -> [..., D]; names the bad index when out of range.
Tensor embedding(const Tensor& weight, const Tensor& indices);
Tensor embedding_backward(const Tensor& gy, const Tensor& indices, int64_t num_embeddings);
/// Copying unless the slice is contiguous in memory (then a view). end is clamped to size(dim).
Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end);
Tensor cat(const std::vector<Tensor>& xs, int64_t dim);
Tensor stack(const std::vector<Tensor>& xs, int64_t dim);
/// Copying permutation of the dims.
Tensor permute(const Tensor& x, const std::vector<int64_t>& dims);
Tensor transpose(const Tensor& x, int64_t d0, int64_t d1);
/// Mask with P(keep) = 1 - p, scaled by 1 / (1 - p), from the generator's Philox stream.
Tensor dropout_mask(const Shape& shape, double p, Generator& gen, DType dtype = DType::kFloat32,
                    Device device = Device::cpu());
/// Wraps a negative dim and checks its range, naming op and the shape.
int64_t normalize_dim(int64_t dim, int64_t ndim, const char* op);

}  // namespace dtrain::ops

namespace dtrain::ops {
/// Copies x broadcast to `shape` (NumPy rules).
Tensor expand(const Tensor& x, const Shape& shape);
/// out[i] = x[source offset of i under index's `a` strides], for any dtype (expand, permute).
void gather_elements(const Tensor& x, Tensor& out, const kernels::BroadcastIndex& index);
/// Copies `rows` blocks of `width` bytes from src (row pitch src_pitch) to dst (dst_pitch), on
/// the host or the device.
void copy_blocks(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width,
                 int64_t rows, Device device);
}  // namespace dtrain::ops
