// The CPU loop that runs kernel bodies: OpenMP over [0, n) in fixed contiguous chunks, serial
// below a grain size where threading costs more than it saves.
#pragma once

#include <omp.h>

#include <cstdint>

namespace dtrain::cpu {

constexpr int64_t kGrain = 32768;

/// Calls body(begin, end) on disjoint chunks covering [0, n). Chunks never share an output
/// element, so results do not depend on the thread count.
template <class Body>
void parallel_for(int64_t n, int64_t grain, Body&& body) {
  if (n <= 0) return;
  if (n <= grain || omp_get_max_threads() == 1 || omp_in_parallel()) {
    body(int64_t{0}, n);
    return;
  }
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads();
    const int64_t tid = omp_get_thread_num();
    const int64_t chunk = (n + threads - 1) / threads;
    const int64_t begin = tid * chunk;
    const int64_t end = begin + chunk < n ? begin + chunk : n;
    if (begin < end) body(begin, end);
  }
}

template <class Body>
void parallel_for(int64_t n, Body&& body) {
  parallel_for(n, kGrain, static_cast<Body&&>(body));
}

/// Kernel threads used by the CPU backend (and oneDNN, which shares OpenMP's pool).
void set_num_threads(int n);
int num_threads();

}  // namespace dtrain::cpu
