// cublasSgemmStridedBatched for a batch of equal GEMMs, on a cuBLAS handle per device of its own
// (the backend's handle is private to cuda_backend.cu).
#include "dtrain/tensor/cuda/cuda_gemm_batched.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdlib>
#include <mutex>
#include <unordered_map>

#include "dtrain/tensor/check.h"
#include "dtrain/tensor/cuda/cuda_backend.h"

namespace dtrain::cuda {
namespace {

#define DTRAIN_CUBLAS_BATCHED_CHECK(expr)                                              \
  do {                                                                                 \
    const cublasStatus_t st_ = (expr);                                                 \
    if (st_ != CUBLAS_STATUS_SUCCESS) {                                                \
      DTRAIN_THROW(::dtrain::ValueError, "cuBLAS error ", static_cast<int>(st_), " (", \
                   cublasGetStatusString(st_), ") in ", #expr);                        \
    }                                                                                  \
  } while (0)

/// Created under the device's guard on first use and never destroyed (it outlives static tensors
/// freed at exit). The mutex covers the lookup only: cuBLAS functions may be called from several
/// host threads with one handle whose settings no longer change.
cublasHandle_t batched_handle(int device) {
  static std::mutex mu;
  static std::unordered_map<int, cublasHandle_t> handles;
  std::lock_guard lock(mu);
  cublasHandle_t& handle = handles[device];
  if (handle == nullptr) {
    DeviceGuard guard(device);
    cublasHandle_t fresh = nullptr;
    DTRAIN_CUBLAS_BATCHED_CHECK(cublasCreate(&fresh));
    // The legacy default stream orders the GEMM with the kernels around it, as everywhere else.
    DTRAIN_CUBLAS_BATCHED_CHECK(cublasSetStream(fresh, cudaStreamLegacy));
    // cuBLAS's default math mode keeps float32 GEMMs off TF32 tensor cores, so results agree with
    // the CPU at 1e-5; set here so the intent does not rest on a default.
    DTRAIN_CUBLAS_BATCHED_CHECK(cublasSetMathMode(fresh, CUBLAS_DEFAULT_MATH));
    handle = fresh;
  }
  return handle;
}

void check_after(int device) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    DTRAIN_THROW(ValueError, "CUDA error ", static_cast<int>(err), " (", cudaGetErrorString(err),
                 ") in cublasSgemmStridedBatched on cuda:", device);
  }
  static const bool sync = parse_cuda_sync(std::getenv("DTRAIN_CUDA_SYNC"));
  if (!sync) return;
  const cudaError_t fault = cudaDeviceSynchronize();
  if (fault != cudaSuccess) {
    DTRAIN_THROW(ValueError, "CUDA error ", static_cast<int>(fault), " (",
                 cudaGetErrorString(fault), ") in cublasSgemmStridedBatched on cuda:", device,
                 " (DTRAIN_CUDA_SYNC=1 checked it as it finished)");
  }
}

}  // namespace

void gemm_strided_batched(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                          const float* a, int64_t lda, int64_t stride_a, const float* b,
                          int64_t ldb, int64_t stride_b, float beta, float* c, int64_t ldc,
                          int64_t stride_c, int64_t batch, int device) {
  if (m == 0 || n == 0 || batch == 0) return;
  DeviceGuard guard(device);
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands and their
  // strides, keep the transpose flags, no copies.
  DTRAIN_CUBLAS_BATCHED_CHECK(cublasSgemmStridedBatched(
      batched_handle(device), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
      trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
      static_cast<int>(k), &alpha, b, static_cast<int>(ldb), stride_b, a, static_cast<int>(lda),
      stride_a, &beta, c, static_cast<int>(ldc), stride_c, static_cast<int>(batch)));
  check_after(device);
}

}  // namespace dtrain::cuda
