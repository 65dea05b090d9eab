// Differentiable operations: each computes with the raw ops of tensor/ops.h and records a graph
// node with its backward when grad mode is on and an input requires grad.
#pragma once

#include <optional>
#include <vector>

#include "dtrain/autograd/engine.h"
#include "dtrain/autograd/grad_mode.h"
#include "dtrain/tensor/ops.h"
#include "dtrain/tensor/tensor.h"

namespace dtrain {

// ---- elementwise (broadcasting) -------------------------------------------------------------
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, double b);
Tensor mul(const Tensor& a, double b);
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor pow(const Tensor& x, double exponent);
Tensor abs(const Tensor& x);
Tensor relu(const Tensor& x);
/// Exact GELU: x * Phi(x) with the normal CDF through erf.
Tensor gelu(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor clamp(const Tensor& x, double lo, double hi);
/// cond ? a : b with broadcasting; gradients flow to a and b.
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
// Comparisons return bool tensors and are not differentiable.
Tensor eq(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);

Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& x);
Tensor operator+(const Tensor& a, double b);
Tensor operator-(const Tensor& a, double b);
Tensor operator*(const Tensor& a, double b);
Tensor operator/(const Tensor& a, double b);
Tensor operator*(double a, const Tensor& b);
Tensor operator+(double a, const Tensor& b);

// ---- reductions -----------------------------------------------------------------------------
Tensor sum(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
/// Max over dim; the gradient flows to the (first) maximum.
std::pair<Tensor, Tensor> max(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);

// ---- linear algebra, convolution, pooling ---------------------------------------------------
/// [.., M, K] @ [.., K, N], batch dims broadcast.
Tensor matmul(const Tensor& a, const Tensor& b);
/// [B, M, K] @ [B, K, N] -> [B, M, N]; no broadcasting: anything else is an error.
Tensor bmm(const Tensor& a, const Tensor& b);
/// x @ weight^T + bias: x [.., in], weight [out, in], bias [out] or undefined.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t stride = 1,
              int64_t padding = 0);
Tensor max_pool2d(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding = 0);
Tensor avg_pool2d(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding = 0);

// ---- activations with a dim, losses ---------------------------------------------------------
Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);
/// Mean cross-entropy of logits [N, C] against int64 class indices [N] (fused with softmax).
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, double label_smoothing = 0.0);
/// Mean negative log-likelihood of log-probabilities [N, C].
Tensor nll_loss(const Tensor& log_probs, const Tensor& targets);
Tensor mse_loss(const Tensor& input, const Tensor& target);

// ---- normalisation, dropout, embedding ------------------------------------------------------
/// Normalises over the last normalized_shape.size() dims.
Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight,
                  const Tensor& bias, double eps = 1e-5);
/// Per-channel normalisation of [N, C] or [N, C, H, W]; updates the running stats in training.
Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias,
                  const Tensor& running_mean, const Tensor& running_var, bool training,
                  double momentum = 0.1, double eps = 1e-5);
/// Zeroes elements with probability p and scales the rest by 1 / (1 - p) when training.
Tensor dropout(const Tensor& x, double p, bool training, Generator& gen = default_generator());
Tensor embedding(const Tensor& weight, const Tensor& indices);

// ---- shape ----------------------------------------------------------------------------------
/// A view when possible (always, for contiguous tensors); -1 infers one dim.
Tensor reshape(const Tensor& x, const Shape& shape);
/// Flattens dims [start_dim, end] into one.
Tensor flatten(const Tensor& x, int64_t start_dim = 1);
Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end);
Tensor cat(const std::vector<Tensor>& xs, int64_t dim = 0);
Tensor stack(const std::vector<Tensor>& xs, int64_t dim = 0);
Tensor permute(const Tensor& x, const std::vector<int64_t>& dims);
Tensor transpose(const Tensor& x, int64_t d0, int64_t d1);
/// Differentiable dtype conversion (the gradient is converted back).
Tensor to(const Tensor& x, DType dtype);
Tensor to(const Tensor& x, Device device);

}  // namespace dtrain
