// The CPU's float32 multiply-add peak: independent FMA chains in the widest vector registers this
// build targets (-march), on N threads at once. bench/train_vs_pytorch.py divides the achieved
// matrix GFLOP/s (the final line's gflops) by it. Prints one line:
//   fma_peak_gflops=<x> threads=<n> vector=<avx512|avx2|none> checksum=<the chains' sum>
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {

#if defined(__AVX512F__)
using Vec = __m512;
constexpr int kLanes = 16;
constexpr const char* kVector = "avx512";
Vec splat(float v) { return _mm512_set1_ps(v); }
Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
float first(Vec v) { return _mm512_cvtss_f32(v); }
#elif defined(__AVX2__) && defined(__FMA__)
using Vec = __m256;
constexpr int kLanes = 8;
constexpr const char* kVector = "avx2";
Vec splat(float v) { return _mm256_set1_ps(v); }
Vec fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
float first(Vec v) { return _mm256_cvtss_f32(v); }
#else
using Vec = float;
constexpr int kLanes = 1;
constexpr const char* kVector = "none";
Vec splat(float v) { return v; }
Vec fma(Vec a, Vec b, Vec c) { return a * b + c; }
float first(Vec v) { return v; }
#endif

// Enough chains to cover the FMA latency (4-5 cycles) on two ports, within 16 registers.
constexpr int kChains = 12;

/// FLOP/s of `iterations` rounds of kChains dependent-per-chain FMAs; `sink` keeps the result live.
double chains_flops_per_second(long iterations, float* sink) {
  Vec acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = splat(0.001f * static_cast<float>(c));
  const Vec a = splat(0.9999f), b = splat(1e-4f);
  const auto start = std::chrono::steady_clock::now();
  for (long i = 0; i < iterations; ++i) {
#pragma GCC unroll 12
    for (int c = 0; c < kChains; ++c) acc[c] = fma(acc[c], a, b);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  float total = 0;
  for (int c = 0; c < kChains; ++c) total += first(acc[c]);
  *sink = total;
  return 2.0 * kLanes * kChains * static_cast<double>(iterations) / seconds;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--threads N]\n", argv[0]);
      return 2;
    }
  }
  if (threads < 1) {
    std::fprintf(stderr, "fma_peak: --threads must be at least 1\n");
    return 2;
  }
  // Best of five rounds of ~0.2 s: the first ones also wait for the clock to ramp up.
  std::vector<double> best(threads, 0);
  std::vector<float> sinks(threads);
  for (int round = 0; round < 5; ++round) {
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        best[t] = std::max(best[t], chains_flops_per_second(800'000'000 / kLanes, &sinks[t]));
      });
    }
    for (auto& w : workers) w.join();
  }
  double sum = 0;
  for (double b : best) sum += b;
  // Printing the chains' results keeps the compiler from dropping the loop that made them.
  std::printf("fma_peak_gflops=%.1f threads=%d vector=%s checksum=%g\n", sum / 1e9, threads,
              kVector, static_cast<double>(sinks[0]));
  return 0;
}
