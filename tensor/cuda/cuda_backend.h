// The CUDA side of the tensor layer as plain functions on raw pointers, so that no CUDA header
// reaches the rest of the code. In a build without CUDA every function throws UnsupportedError
// (available() returns false with the reason).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "tensor/allocator.h"
#include "tensor/check.h"
#include "tensor/dtype.h"
#include "tensor/kernels.h"

namespace dtrain::cuda {

/// True when this build has CUDA and the driver reports at least one device.
bool available();
int device_count();
/// Why available() is false: "built without CUDA", or the driver's error (35 without a driver).
std::string unavailable_reason();

/// Caching allocator for one device: freed blocks are reused once the stream they were last used
/// on has passed the free (the default stream serialises that here).
Allocator& allocator(int device);

/// Copies nbytes between any two of host and device memory; synchronous.
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes);
void fill(void* dst, DType dtype, int64_t n, double value, int device);
/// Elementwise dtype conversion on one device.
void convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n, int device);

void unary(kernels::Unary op, DType dtype, const void* x, void* y, int64_t n,
           kernels::UnaryParams params, int device);
/// out[i] = op(a[ia], b[ib]) for a broadcast index map; comparisons write bool.
void binary(kernels::Binary op, DType dtype, const void* a, const void* b, void* out, int64_t n,
            const kernels::BroadcastIndex& index, int device);
/// Sum of [outer, r, inner] over r into [outer, inner], in a fixed order.
void sum_dim(DType dtype, const void* x, void* y, int64_t outer, int64_t r, int64_t inner,
             int device);
/// Row-major C = alpha * op(A) op(B) + beta * C through cuBLAS (float32).
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc, int device);

}  // namespace dtrain::cuda

namespace dtrain::cuda {
#if defined(DTRAIN_HAS_CUDA)
/// Runs k(i) for every i in [0, n) on the device in a grid-stride kernel. Explicitly instantiated
/// in cuda_backend.cu for every functor of tensor/kernels_nn.h and optimiser step of kernels.h.
template <class Kernel>
void launch(int64_t n, const Kernel& k, int device);
#else
template <class Kernel>
void launch(int64_t, const Kernel&, int) {
  DTRAIN_THROW(UnsupportedError, "CUDA kernel launch: this dtrain was built without CUDA");
}
#endif
/// Copies `rows` blocks of `width` bytes between strided host or device buffers (cudaMemcpy2D).
void copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width,
             size_t rows);
}  // namespace dtrain::cuda
