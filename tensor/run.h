// Runs a kernel functor (tensor/kernels_nn.h) over [0, n) on a tensor's device: the CPU loop or
// a CUDA grid-stride kernel.
#pragma once

#include "dtrain/tensor/cpu/parallel.h"
#include "dtrain/tensor/cuda/cuda_backend.h"

namespace dtrain {

/// `grain`: items below which the CPU runs serially (items are lines or planes for heavy
/// functors, so callers pass a smaller grain for them).
template <class Kernel>
void run_kernel(Device device, int64_t n, const Kernel& k, int64_t grain = cpu::kGrain) {
  if (n <= 0) return;
  if (device.is_cuda()) {
    cuda::launch(n, k, device.index);
    return;
  }
  cpu::parallel_for(n, grain, [&](int64_t b, int64_t e) {
    const Kernel local = k;  // a private copy: stores through its pointers cannot alias it
    for (int64_t i = b; i < e; ++i) local(i);
  });
}

/// run_kernel for elementwise functors whose items the compiler may compute side by side in vector
/// registers (straight-line arithmetic on item i's own elements, no inner loops): the CPU loop is
/// an OpenMP SIMD loop, which vectorises it without proving that the functor's arrays do not
/// alias. Vector square roots and divisions round as the scalar ones do.
template <class Kernel>
void run_elementwise_simd(Device device, int64_t n, const Kernel& k) {
  if (n <= 0) return;
  if (device.is_cuda()) {
    cuda::launch(n, k, device.index);
    return;
  }
  cpu::parallel_for(n, cpu::kGrain, [&](int64_t b, int64_t e) {
    const Kernel local = k;
#pragma omp simd
    for (int64_t i = b; i < e; ++i) local(i);
  });
}

}  // namespace dtrain
