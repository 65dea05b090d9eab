// Float32 vector math for the CPU hot paths: exp, erf, GELU and its gradient, and softmax over
// contiguous rows. AVX-512 or AVX2 + FMA where the build targets them, std:: functions otherwise.
#pragma once

#include <cstdint>

namespace dtrain::cpu {

/// y[i] = exp(x[i]); relative error below 2e-7 (exp(-inf) = 0, overflow gives inf, NaN stays).
/// x and y may be the same array. Serial: callers split work with parallel_for.
void exp_f32(const float* x, float* y, int64_t n);

/// y[i] = erf(x[i]); absolute error below 1e-7 and relative below 5e-7, saturating to +-1.
void erf_f32(const float* x, float* y, int64_t n);

/// y[i] = 0.5 x (1 + erf(x / sqrt 2)), the exact (not tanh) GELU.
void gelu_f32(const float* x, float* y, int64_t n);

/// dx[i] = gy[i] (Phi(x[i]) + x[i] phi(x[i])), the gradient of gelu_f32 at x.
void gelu_backward_f32(const float* x, const float* gy, float* dx, int64_t n);

/// Softmax (log = false) or log-softmax of each of `rows` contiguous rows of `cols` floats:
/// x, y [rows, cols]. Entries of -inf give exactly 0 (softmax) or -inf (log-softmax); a row that
/// is all -inf gives NaN, as the shared kernel body does.
void softmax_rows_f32(const float* x, float* y, int64_t rows, int64_t cols, bool log);

/// Cross-entropy with label smoothing of `rows` rows of logits [rows, classes] (classes > 0)
/// against targets in [0, classes): each row's softmax to probs and its loss to row_loss[row],
/// as kernels::CrossEntropyRows computes them, with the vector exp (the log-sum-exp in float64).
void cross_entropy_rows_f32(const float* logits, const int64_t* targets, float* probs,
                            float* row_loss, int64_t rows, int64_t classes, double smoothing);

/// Gradient of softmax_rows_f32 from its output y and the incoming gradient gy: dx, y, gy
/// [rows, cols].
void softmax_backward_rows_f32(const float* y, const float* gy, float* dx, int64_t rows,
                               int64_t cols, bool log);

}  // namespace dtrain::cpu
