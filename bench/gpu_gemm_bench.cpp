// GEMM throughput on one GPU: dtrain's ops::matmul on cuda tensors against cuBLAS called directly
// on the same memory, in float32 (cublasSgemm) and in bf16 (MatmulPrecisionGuard against
// cublasGemmEx on bf16 operands, float32 accumulation). scripts/gpu_check.sh reads its lines.
// Run: build/bench/gpu_gemm_bench [--n 4096] [--iters 20] [--warmup 3]
// Prints one line per case: `gemm dtype=fp32 impl=dtrain n=4096 ms=.. tflops=.. max_rel_diff=..`.
// Exits 2 (one line saying why) when no GPU can be used.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "dtrain/tensor/cuda/cuda_backend.h"
#include "dtrain/tensor/ops.h"
#include "dtrain/tensor/precision.h"
#include "dtrain/tensor/tensor.h"

using namespace dtrain;

namespace {

#define BENCH_CHECK(expr, what)                                              \
  do {                                                                       \
    if (!(expr)) {                                                           \
      std::fprintf(stderr, "gpu_gemm_bench: %s failed (%s)\n", what, #expr); \
      std::exit(1);                                                          \
    }                                                                        \
  } while (0)

struct Args {
  int64_t n = 4096;
  int iters = 20;
  int warmup = 3;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--n")) {
      a.n = std::atoll(argv[i + 1]);
    } else if (!std::strcmp(argv[i], "--iters")) {
      a.iters = std::atoi(argv[i + 1]);
    } else if (!std::strcmp(argv[i], "--warmup")) {
      a.warmup = std::atoi(argv[i + 1]);
    } else {
      std::fprintf(stderr, "usage: gpu_gemm_bench [--n 4096] [--iters 20] [--warmup 3]\n");
      std::exit(2);
    }
  }
  if (argc % 2 == 0 || a.n <= 0 || a.iters <= 0 || a.warmup < 0) {
    std::fprintf(stderr, "usage: gpu_gemm_bench [--n 4096] [--iters 20] [--warmup 3]\n");
    std::exit(2);
  }
  return a;
}

// bfloat16 bits of x, rounded to nearest even (as dtrain's rounding and the GPU's conversion do).
uint16_t to_bf16(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  bits += 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

// Milliseconds per call of `body`, after `warmup` calls; the device is drained before the clock
// starts and after the last call, so queued work is counted and nothing earlier is.
double time_ms(const Args& args, const std::function<void()>& body) {
  for (int i = 0; i < args.warmup; ++i) body();
  cuda::synchronize(0);
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < args.iters; ++i) body();
  cuda::synchronize(0);
  const std::chrono::duration<double, std::milli> total = std::chrono::steady_clock::now() - start;
  return total.count() / args.iters;
}

// Largest |x - y| over the largest |y|: dtrain and cuBLAS computed the same product.
double max_rel_diff(const Tensor& x, const Tensor& y) {
  const std::vector<float> a = x.to_vector<float>(), b = y.to_vector<float>();
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, static_cast<double>(std::fabs(a[i] - b[i])));
    scale = std::max(scale, static_cast<double>(std::fabs(b[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

void report(const char* dtype, const char* impl, const Args& args, double ms, double rel) {
  const double flops = 2.0 * static_cast<double>(args.n) * args.n * args.n;
  std::printf("gemm dtype=%s impl=%s n=%lld ms=%.4f tflops=%.2f max_rel_diff=%.2e\n", dtype, impl,
              static_cast<long long>(args.n), ms, flops / (ms * 1e-3) / 1e12, rel);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  if (!cuda::available()) {
    std::printf("gpu_gemm_bench: no GPU: %s\n", cuda::unavailable_reason().c_str());
    return 2;
  }
  const int64_t n = args.n;
  const Device gpu = Device::cuda(0);
  cuda::set_device(0);

  // Values in [-1, 1]; the same operands for every case.
  std::mt19937 rng(0);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  Tensor host_a({n, n}), host_b({n, n});
  for (float* p : {host_a.data<float>(), host_b.data<float>()}) {
    for (int64_t i = 0; i < n * n; ++i) p[i] = dist(rng);
  }
  Tensor a({n, n}, DType::kFloat32, gpu), b({n, n}, DType::kFloat32, gpu);
  a.copy_(host_a);
  b.copy_(host_b);

  // bf16 copies of the operands for the direct cublasGemmEx call (dtrain rounds its float32
  // operands itself under the guard, and that rounding is part of what its line measures).
  std::vector<uint16_t> a16(n * n), b16(n * n);
  const float* pa = host_a.data<float>();
  const float* pb = host_b.data<float>();
  for (int64_t i = 0; i < n * n; ++i) {
    a16[i] = to_bf16(pa[i]);
    b16[i] = to_bf16(pb[i]);
  }
  void *da16 = nullptr, *db16 = nullptr;
  BENCH_CHECK(cudaMalloc(&da16, n * n * 2) == cudaSuccess, "cudaMalloc");
  BENCH_CHECK(cudaMalloc(&db16, n * n * 2) == cudaSuccess, "cudaMalloc");
  BENCH_CHECK(cudaMemcpy(da16, a16.data(), n * n * 2, cudaMemcpyHostToDevice) == cudaSuccess,
              "cudaMemcpy");
  BENCH_CHECK(cudaMemcpy(db16, b16.data(), n * n * 2, cudaMemcpyHostToDevice) == cudaSuccess,
              "cudaMemcpy");

  // A handle of our own on the legacy default stream, default math mode, as dtrain's.
  cublasHandle_t handle;
  BENCH_CHECK(cublasCreate(&handle) == CUBLAS_STATUS_SUCCESS, "cublasCreate");
  Tensor c_raw({n, n}, DType::kFloat32, gpu);
  const float one = 1.f, zero = 0.f;
  const int ni = static_cast<int>(n);
  // Row-major C = A B is column-major C^T = B^T A^T: B first, as dtrain calls it.
  auto raw_fp32 = [&] {
    BENCH_CHECK(cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, ni, ni, ni, &one, b.data_ptr<float>(),
                            ni, a.data_ptr<float>(), ni, &zero, c_raw.data_ptr<float>(),
                            ni) == CUBLAS_STATUS_SUCCESS,
                "cublasSgemm");
  };
  auto raw_bf16 = [&] {
    BENCH_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, ni, ni, ni, &one, db16, CUDA_R_16BF,
                             ni, da16, CUDA_R_16BF, ni, &zero, c_raw.data_ptr<float>(), CUDA_R_32F,
                             ni, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS,
                "cublasGemmEx");
  };

  Tensor c;
  const double ours32 = time_ms(args, [&] { c = ops::matmul(a, b); });
  const double theirs32 = time_ms(args, raw_fp32);
  const double rel32 = max_rel_diff(c, c_raw);
  report("fp32", "dtrain", args, ours32, rel32);
  report("fp32", "cublas", args, theirs32, rel32);

  double ours16 = 0;
  {
    MatmulPrecisionGuard guard(DType::kBFloat16);
    ours16 = time_ms(args, [&] { c = ops::matmul(a, b); });
  }
  const double theirs16 = time_ms(args, raw_bf16);
  const double rel16 = max_rel_diff(c, c_raw);
  report("bf16", "dtrain", args, ours16, rel16);
  report("bf16", "cublas", args, theirs16, rel16);

  cublasDestroy(handle);
  cudaFree(da16);
  cudaFree(db16);
  return 0;
}
