// One cuBLAS call for a batch of equal-sized float32 GEMMs (convolution's im2col path and
// batched matmul), instead of one call per matrix.
#pragma once

#include <cstdint>

namespace dtrain::cuda {

/// Row-major C_i = alpha * op(A_i) op(B_i) + beta * C_i for i in [0, batch), where
/// A_i = a + i * stride_a (in elements; stride 0 uses one matrix for every i), and likewise B_i
/// and C_i. lda, ldb, ldc are row strides as stored. One cublasSgemmStridedBatched on the legacy
/// default stream of cuda:`device`, FP32 arithmetic (no TF32). Throws ValueError on a cuBLAS
/// error, UnsupportedError in a build without CUDA.
void gemm_strided_batched(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                          const float* a, int64_t lda, int64_t stride_a, const float* b,
                          int64_t ldb, int64_t stride_b, float beta, float* c, int64_t ldc,
                          int64_t stride_c, int64_t batch, int device);

}  // namespace dtrain::cuda
