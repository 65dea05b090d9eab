// The precision of matrix-product and convolution inputs on this thread: the autocast behind
// train.precision. Tensors stay float32 (master weights, activations, gradients); with bfloat16 or
// float16, GEMM and convolution round both operands to that type and accumulate in float32, as
// bf16/fp16 tensor-core GEMMs do. On CUDA the GEMM runs in cuBLAS on 16-bit operands; on the CPU
// the rounded operands go through the float32 kernels (the same numbers; see docs/performance.md
// for why not oneDNN's bf16 kernels).
#pragma once

#include "dtrain/tensor/dtype.h"

namespace dtrain {

/// kFloat32 (the default), kBFloat16 or kFloat16.
DType matmul_precision();

/// Sets this thread's matmul precision while alive, restoring the previous one.
class MatmulPrecisionGuard {
 public:
  explicit MatmulPrecisionGuard(DType precision);
  ~MatmulPrecisionGuard();
  MatmulPrecisionGuard(const MatmulPrecisionGuard&) = delete;
  MatmulPrecisionGuard& operator=(const MatmulPrecisionGuard&) = delete;

 private:
  DType previous_;
};

/// `n` floats rounded to `precision` (bfloat16 or float16, nearest even) and widened back.
void round_floats(const float* src, float* dst, int64_t n, DType precision);

}  // namespace dtrain
