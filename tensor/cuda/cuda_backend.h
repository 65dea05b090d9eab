// The CUDA side of the tensor layer as plain functions on raw pointers, so that no CUDA header
// reaches the rest of the code. In a build without CUDA every function throws UnsupportedError
// (available() returns false with the reason).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "dtrain/tensor/allocator.h"
#include "dtrain/tensor/check.h"
#include "dtrain/tensor/dtype.h"
#include "dtrain/tensor/kernels.h"
#include "dtrain/tensor/storage.h"

namespace dtrain::cuda {

/// True when this build has CUDA and the driver reports at least one device.
bool available();
/// Read from the driver once per process: after a kernel fault the query itself can fail.
int device_count();
/// Why available() is false: "built without CUDA", or the driver's error (35 without a driver).
std::string unavailable_reason();

/// Caching allocator for one device. Kernels run on the legacy default stream, which orders them,
/// so a freed block is reused at once, unless record_stream() noted work on another stream.
Allocator& allocator(int device);
/// Notes that work just enqueued on `stream` (a cudaStream_t of the storage's device, passed
/// opaquely) uses `storage`: once the storage is freed, its block is not handed out again until
/// that work has finished. A no-op for host memory and memory the allocator does not own.
void record_stream(const Storage& storage, void* stream);

/// Makes cuda:`device` current on this thread for a scope. On leaving, it puts the previous device
/// back only if it changed it and the thread had chosen one (had a CUDA context), so a thread's
/// first device stays current instead of a context being made on GPU 0.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool restore_ = false;
};

/// Makes `device` current on the calling thread (each thread has its own current device).
void set_device(int device);
int current_device();
/// Waits until everything queued on `device` has finished, and throws its error if any did not,
/// or a bad index an earlier check_indices found.
void synchronize(int device);

/// For tests: holds back the legacy default stream of `device` from construction until release()
/// (or destruction, or `limit`, whichever comes first), so work queued behind it is still pending
/// in a known way. While it holds, nothing may wait for that stream (to_vector, cudaFree,
/// synchronize), or the caller waits for the limit.
class DefaultStreamHold {
 public:
  explicit DefaultStreamHold(int device,
                             std::chrono::milliseconds limit = std::chrono::seconds(30));
  ~DefaultStreamHold();
  DefaultStreamHold(const DefaultStreamHold&) = delete;
  DefaultStreamHold& operator=(const DefaultStreamHold&) = delete;
  void release();
  struct State;

 private:
  std::shared_ptr<State> state_;
};

/// The value of DTRAIN_CUDA_SYNC: unset, "" or "0" is off; "1" makes every kernel launch wait for
/// the device and check, so a fault is reported at the kernel that caused it. Anything else
/// throws ValueError naming the variable.
bool parse_cuda_sync(const char* value);

/// Checks int64 indices idx[0, n) against [0, limit) on cuda:`device` without waiting for it.
/// `safe` receives the indices with bad ones replaced by 0, so kernels that index with it stay
/// in bounds; the first bad one is recorded, and the next check_indices or synchronize on that
/// device throws ValueError naming `op` (a string literal), the position and the value.
void check_indices(const int64_t* idx, int64_t* safe, int64_t n, int64_t limit, const char* op,
                   int device);

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
/// The same with A and B in `operand_dtype` (bfloat16 or float16), C float32, accumulated in
/// float32 (cublasGemmEx): train.precision's GEMM.
void gemm_16bit(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                const void* a, int64_t lda, const void* b, int64_t ldb, float beta, float* c,
                int64_t ldc, DType operand_dtype, int device);
/// Row-major C = alpha * op(A) op(B) + beta * C through cuBLAS (float32).
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc, int device);

}  // namespace dtrain::cuda

namespace dtrain::kernels {
template <class T>
struct BatchNormChannels;
template <class T>
struct BatchNormBackwardChannels;
template <class T>
struct SoftmaxLines;
template <class T>
struct SoftmaxBackwardLines;
template <class T>
struct CrossEntropyRows;
}  // namespace dtrain::kernels

namespace dtrain::cuda {
#if defined(DTRAIN_HAS_CUDA)
/// The batch norm functors of tensor/kernels_nn.h with a block per channel instead of a thread:
/// the channel's N*HW values are read coalesced and summed in double in a fixed-order tree (same
/// formulas as the functor, other rounding of the sums). For x [N, C, HW] with HW > 1; float and
/// double.
template <class T>
void batch_norm(const kernels::BatchNormChannels<T>& k, int device);
template <class T>
void batch_norm_backward(const kernels::BatchNormBackwardChannels<T>& k, int device);
/// SoftmaxLines, SoftmaxBackwardLines (inner == 1) and CrossEntropyRows on `rows` contiguous rows
/// with a block per row instead of a thread: fixed-order block reductions, the sums in double
/// (the functors' formulas, other rounding of the sums). float and double.
template <class T>
void softmax_rows(const kernels::SoftmaxLines<T>& k, int64_t rows, int device);
template <class T>
void softmax_backward_rows(const kernels::SoftmaxBackwardLines<T>& k, int64_t rows, int device);
template <class T>
void cross_entropy_rows(const kernels::CrossEntropyRows<T>& k, int64_t rows, int device);
/// Runs k(i) for every i in [0, n) on the device in a grid-stride kernel. Explicitly instantiated
/// in cuda_backend.cu for every functor of tensor/kernels_nn.h and optimiser step of kernels.h.
template <class Kernel>
void launch(int64_t n, const Kernel& k, int device);
#else
template <class Kernel>
void launch(int64_t, const Kernel&, int) {
  DTRAIN_THROW(UnsupportedError, "CUDA kernel launch: this dtrain was built without CUDA");
}
template <class T>
void batch_norm(const kernels::BatchNormChannels<T>&, int) {
  DTRAIN_THROW(UnsupportedError, "batch norm on CUDA: this dtrain was built without CUDA");
}
template <class T>
void batch_norm_backward(const kernels::BatchNormBackwardChannels<T>&, int) {
  DTRAIN_THROW(UnsupportedError, "batch norm on CUDA: this dtrain was built without CUDA");
}
template <class T>
void softmax_rows(const kernels::SoftmaxLines<T>&, int64_t, int) {
  DTRAIN_THROW(UnsupportedError, "softmax on CUDA: this dtrain was built without CUDA");
}
template <class T>
void softmax_backward_rows(const kernels::SoftmaxBackwardLines<T>&, int64_t, int) {
  DTRAIN_THROW(UnsupportedError, "softmax on CUDA: this dtrain was built without CUDA");
}
template <class T>
void cross_entropy_rows(const kernels::CrossEntropyRows<T>&, int64_t, int) {
  DTRAIN_THROW(UnsupportedError, "cross_entropy on CUDA: this dtrain was built without CUDA");
}
#endif
/// Copies `rows` blocks of `width` bytes between strided host or device buffers (cudaMemcpy2D),
/// issued on cuda:`device`, the device of the buffers that are not host memory.
void copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width,
             size_t rows, int device);
}  // namespace dtrain::cuda
