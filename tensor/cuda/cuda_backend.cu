// The CUDA backend: grid-stride kernels over the shared kernel bodies (tensor/kernels.h), a caching
// device allocator, and cuBLAS GEMM. Everything runs on the legacy default stream of the current
// device, which orders all work, so a freed block can be handed out again at once.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <array>
#include <bit>
#include <limits>
#include <mutex>
#include <vector>

#include "tensor/caching_allocator.h"
#include "tensor/check.h"
#include "tensor/cuda/cuda_backend.h"
#include "tensor/dispatch.h"
#include "tensor/kernels_nn.h"

#define DTRAIN_CUDA_CHECK(expr)                                                       \
  do {                                                                                \
    const cudaError_t err_ = (expr);                                                  \
    if (err_ != cudaSuccess) {                                                        \
      DTRAIN_THROW(::dtrain::ValueError, "CUDA error ", static_cast<int>(err_), " (", \
                   cudaGetErrorString(err_), ") in ", #expr);                         \
    }                                                                                 \
  } while (0)

#define DTRAIN_CUBLAS_CHECK(expr)                                                      \
  do {                                                                                 \
    const cublasStatus_t st_ = (expr);                                                 \
    if (st_ != CUBLAS_STATUS_SUCCESS) {                                                \
      DTRAIN_THROW(::dtrain::ValueError, "cuBLAS error ", static_cast<int>(st_), " (", \
                   cublasGetStatusString(st_), ") in ", #expr);                        \
    }                                                                                  \
  } while (0)

namespace dtrain::cuda {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < 65535 ? (b < 1 ? 1 : b) : 65535);
}

void check_launch() { DTRAIN_CUDA_CHECK(cudaGetLastError()); }

struct DeviceGuard {
  explicit DeviceGuard(int device) {
    cudaGetDevice(&previous);
    if (previous != device) DTRAIN_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() { cudaSetDevice(previous); }
  int previous = 0;
};

// ---- allocator ------------------------------------------------------------------------------
/// cudaMalloc blocks cached in size classes. All work runs on the default stream, so a freed block
/// can be handed out again at once: later work that uses it is ordered after earlier work.
class CachingCudaAllocator final : public detail::CachingAllocator {
 public:
  explicit CachingCudaAllocator(int device)
      : CachingAllocator(512, std::numeric_limits<size_t>::max()), device_(device) {}

 protected:
  void* system_allocate(size_t nbytes) override {
    DeviceGuard guard(device_);
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, nbytes);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear the error; the caller empties the cache and retries
      return nullptr;
    }
    DTRAIN_CUDA_CHECK(err);
    return p;
  }
  void system_free(void* ptr) override {
    DeviceGuard guard(device_);
    cudaFree(ptr);
  }
  [[noreturn]] void out_of_memory(size_t nbytes) override {
    DTRAIN_THROW(ValueError, "cudaMalloc of ", nbytes, " bytes on cuda:", device_,
                 " failed: out of device memory");
  }
  void before_release() override {
    DeviceGuard guard(device_);
    cudaDeviceSynchronize();  // no kernel may still use a block we return
  }

 private:
  int device_;
};

// ---- kernels --------------------------------------------------------------------------------
#define DTRAIN_GRID_STRIDE(i, n)                                            \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); \
       i += int64_t(blockDim.x) * gridDim.x)

__global__ void fill_kernel(void* dst, DType t, int64_t n, double v) {
  DTRAIN_GRID_STRIDE(i, n) kernels::store_element(dst, t, i, v);
}

__global__ void convert_kernel(const void* src, DType st, void* dst, DType dt, int64_t n) {
  DTRAIN_GRID_STRIDE(i, n) kernels::store_element(dst, dt, i, kernels::load_element(src, st, i));
}

template <class T>
__global__ void unary_kernel(kernels::Unary op, const T* x, T* y, int64_t n,
                             kernels::UnaryParams q) {
  DTRAIN_GRID_STRIDE(i, n) y[i] = kernels::apply_unary(op, x[i], q);
}

template <class T, class O>
__global__ void binary_kernel(kernels::Binary op, const T* a, const T* b, O* out, int64_t n,
                              kernels::BroadcastIndex index) {
  DTRAIN_GRID_STRIDE(i, n) {
    int64_t ia = i, ib = i;
    if (index.ndim > 0) index.offsets(i, ia, ib);
    out[i] = static_cast<O>(kernels::apply_binary(op, a[ia], b[ib]));
  }
}

/// One thread per output; the reduction over r runs in a fixed order.
template <class T>
__global__ void sum_dim_kernel(const T* x, T* y, int64_t outer, int64_t r, int64_t inner) {
  DTRAIN_GRID_STRIDE(idx, outer * inner) {
    const int64_t o = idx / inner, i = idx % inner;
    T acc = 0;
    for (int64_t k = 0; k < r; ++k) acc += x[(o * r + k) * inner + i];
    y[idx] = acc;
  }
}

cublasHandle_t cublas_handle(int device) {
  static std::mutex mu;
  static std::vector<cublasHandle_t> handles;
  std::lock_guard lock(mu);
  if (static_cast<int>(handles.size()) <= device) handles.resize(device + 1, nullptr);
  if (handles[device] == nullptr) {
    DeviceGuard guard(device);
    DTRAIN_CUBLAS_CHECK(cublasCreate(&handles[device]));
  }
  return handles[device];
}

template <class Kernel>
__global__ void functor_kernel(Kernel k, int64_t n) {
  DTRAIN_GRID_STRIDE(i, n) k(i);
}

}  // namespace

template <class Kernel>
void launch(int64_t n, const Kernel& k, int device) {
  DeviceGuard guard(device);
  functor_kernel<Kernel><<<blocks_for(n), kThreads>>>(k, n);
  check_launch();
}

// One line per functor of tensor/kernels_nn.h and optimiser step of tensor/kernels.h (float and
// double where templated on T).
#define DTRAIN_LAUNCH_FLOATING(K)                                                  \
  template void launch<kernels::K<float>>(int64_t, const kernels::K<float>&, int); \
  template void launch<kernels::K<double>>(int64_t, const kernels::K<double>&, int)
DTRAIN_LAUNCH_FLOATING(SoftmaxLines);
DTRAIN_LAUNCH_FLOATING(SoftmaxBackwardLines);
DTRAIN_LAUNCH_FLOATING(CrossEntropyRows);
DTRAIN_LAUNCH_FLOATING(CrossEntropyBackward);
DTRAIN_LAUNCH_FLOATING(NllRows);
DTRAIN_LAUNCH_FLOATING(NllBackwardRows);
DTRAIN_LAUNCH_FLOATING(LayerNormRows);
DTRAIN_LAUNCH_FLOATING(LayerNormBackwardRows);
DTRAIN_LAUNCH_FLOATING(LayerNormParamGradColumns);
DTRAIN_LAUNCH_FLOATING(BatchNormChannels);
DTRAIN_LAUNCH_FLOATING(BatchNormBackwardChannels);
DTRAIN_LAUNCH_FLOATING(MaxLines);
DTRAIN_LAUNCH_FLOATING(MaxLinesBackward);
DTRAIN_LAUNCH_FLOATING(MaxPoolForward);
DTRAIN_LAUNCH_FLOATING(MaxPoolBackwardPlanes);
DTRAIN_LAUNCH_FLOATING(AvgPoolForward);
DTRAIN_LAUNCH_FLOATING(AvgPoolBackwardPlanes);
DTRAIN_LAUNCH_FLOATING(Im2colRows);
DTRAIN_LAUNCH_FLOATING(Col2imPlanes);
DTRAIN_LAUNCH_FLOATING(EmbeddingGather);
DTRAIN_LAUNCH_FLOATING(EmbeddingScatterColumns);
DTRAIN_LAUNCH_FLOATING(WhereElements);
DTRAIN_LAUNCH_FLOATING(UniformFill);
DTRAIN_LAUNCH_FLOATING(NormalFill);
DTRAIN_LAUNCH_FLOATING(DropoutMaskFill);
DTRAIN_LAUNCH_FLOATING(AdamStep);
DTRAIN_LAUNCH_FLOATING(RmspropStep);
// SgdStep: the five variants kernels::dispatch_sgd_variant selects.
#define DTRAIN_LAUNCH_SGD(T, M, N, F)                                                              \
  template void launch<kernels::SgdStep<T, M, N, F>>(int64_t, const kernels::SgdStep<T, M, N, F>&, \
                                                     int)
#define DTRAIN_LAUNCH_SGD_VARIANTS(T)        \
  DTRAIN_LAUNCH_SGD(T, false, false, false); \
  DTRAIN_LAUNCH_SGD(T, true, false, false);  \
  DTRAIN_LAUNCH_SGD(T, true, false, true);   \
  DTRAIN_LAUNCH_SGD(T, true, true, false);   \
  DTRAIN_LAUNCH_SGD(T, true, true, true)
DTRAIN_LAUNCH_SGD_VARIANTS(float);
DTRAIN_LAUNCH_SGD_VARIANTS(double);
template void launch<kernels::MaxLines<int64_t>>(int64_t, const kernels::MaxLines<int64_t>&, int);
template void launch<kernels::MaxLines<int32_t>>(int64_t, const kernels::MaxLines<int32_t>&, int);
template void launch<kernels::WhereElements<int64_t>>(int64_t,
                                                      const kernels::WhereElements<int64_t>&, int);
template void launch<kernels::GatherElements<uint8_t>>(int64_t,
                                                       const kernels::GatherElements<uint8_t>&,
                                                       int);
template void launch<kernels::GatherElements<uint16_t>>(int64_t,
                                                        const kernels::GatherElements<uint16_t>&,
                                                        int);
template void launch<kernels::GatherElements<uint32_t>>(int64_t,
                                                        const kernels::GatherElements<uint32_t>&,
                                                        int);
template void launch<kernels::GatherElements<uint64_t>>(int64_t,
                                                        const kernels::GatherElements<uint64_t>&,
                                                        int);

void copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width,
             size_t rows) {
  if (width == 0 || rows == 0) return;
  DTRAIN_CUDA_CHECK(cudaMemcpy2D(dst, dst_pitch, src, src_pitch, width, rows, cudaMemcpyDefault));
}

bool available() { return device_count() > 0; }

int device_count() {
  int n = 0;
  // Without a driver this returns an error (cudaErrorInsufficientDriver, 35): no GPU.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::string unavailable_reason() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return "cudaGetDeviceCount failed with error " + std::to_string(static_cast<int>(err)) + " (" +
           cudaGetErrorString(err) + ")";
  }
  return n == 0 ? "no CUDA device present" : "";
}

Allocator& allocator(int device) {
  static std::mutex mu;
  static std::vector<CachingCudaAllocator*> allocators;  // leaked: outlives static tensors
  std::lock_guard lock(mu);
  const int count = device_count();
  if (count == 0) {
    DTRAIN_THROW(UnsupportedError, "cuda:", device, " is not available: no usable CUDA device (",
                 unavailable_reason(), ")");
  }
  if (device < 0 || device >= count) {
    DTRAIN_THROW(ValueError, "cuda:", device, " does not exist: this machine has ", count,
                 " CUDA device", count == 1 ? "" : "s", " (cuda:0 to cuda:", count - 1, ")");
  }
  if (static_cast<int>(allocators.size()) <= device) allocators.resize(device + 1, nullptr);
  if (allocators[device] == nullptr) allocators[device] = new CachingCudaAllocator(device);
  return *allocators[device];
}

void copy_bytes(void* dst, Device, const void* src, Device, size_t nbytes) {
  if (nbytes == 0) return;
  // Unified addressing tells cudaMemcpyDefault which side each pointer is on.
  DTRAIN_CUDA_CHECK(cudaMemcpy(dst, src, nbytes, cudaMemcpyDefault));
}

void fill(void* dst, DType dtype, int64_t n, double value, int device) {
  DeviceGuard guard(device);
  fill_kernel<<<blocks_for(n), kThreads>>>(dst, dtype, n, value);
  check_launch();
}

void convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n, int device) {
  DeviceGuard guard(device);
  convert_kernel<<<blocks_for(n), kThreads>>>(src, src_dtype, dst, dst_dtype, n);
  check_launch();
}

void unary(kernels::Unary op, DType dtype, const void* x, void* y, int64_t n,
           kernels::UnaryParams params, int device) {
  DeviceGuard guard(device);
  detail::dispatch_floating(dtype, "unary op", [&](auto tag) {
    using T = decltype(tag);
    unary_kernel<T>
        <<<blocks_for(n), kThreads>>>(op, static_cast<const T*>(x), static_cast<T*>(y), n, params);
  });
  check_launch();
}

void binary(kernels::Binary op, DType dtype, const void* a, const void* b, void* out, int64_t n,
            const kernels::BroadcastIndex& index, int device) {
  DeviceGuard guard(device);
  detail::dispatch_floating(dtype, "binary op", [&](auto tag) {
    using T = decltype(tag);
    if (kernels::is_comparison(op)) {
      binary_kernel<T, bool><<<blocks_for(n), kThreads>>>(op, static_cast<const T*>(a),
                                                          static_cast<const T*>(b),
                                                          static_cast<bool*>(out), n, index);
    } else {
      binary_kernel<T, T><<<blocks_for(n), kThreads>>>(
          op, static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(out), n, index);
    }
  });
  check_launch();
}

void sum_dim(DType dtype, const void* x, void* y, int64_t outer, int64_t r, int64_t inner,
             int device) {
  DeviceGuard guard(device);
  detail::dispatch_floating(dtype, "sum", [&](auto tag) {
    using T = decltype(tag);
    sum_dim_kernel<T><<<blocks_for(outer * inner), kThreads>>>(static_cast<const T*>(x),
                                                               static_cast<T*>(y), outer, r, inner);
  });
  check_launch();
}

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc, int device) {
  DeviceGuard guard(device);
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands, keep the
  // transpose flags, no copies.
  DTRAIN_CUBLAS_CHECK(cublasSgemm(cublas_handle(device), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                  trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n),
                                  static_cast<int>(m), static_cast<int>(k), &alpha, b,
                                  static_cast<int>(ldb), a, static_cast<int>(lda), &beta, c,
                                  static_cast<int>(ldc)));
}

}  // namespace dtrain::cuda
