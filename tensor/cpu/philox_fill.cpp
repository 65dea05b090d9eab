#include "dtrain/tensor/cpu/philox_fill.h"

#include <cmath>

#include "dtrain/tensor/cpu/parallel.h"
#include "dtrain/tensor/kernels.h"

namespace dtrain::cpu {
namespace {

constexpr int kLanes = 16;
// Each 32-bit Philox word lives in the low half of a 64-bit lane, so that the 32x32->64 products
// are lane-wise multiplies (GCC vector extensions: AVX-512, AVX2 or SSE, whatever the build has).
typedef uint64_t Lanes __attribute__((vector_size(kLanes * sizeof(uint64_t))));

/// Philox4x32-10 of counters first .. first + kLanes - 1, the same rounds as kernels::philox,
/// written lane-wise: words[w][lane].
void philox_lanes(uint64_t seed, uint64_t stream, uint64_t first, uint32_t (&words)[4][kLanes]) {
  constexpr uint64_t kLow = 0xFFFFFFFFu;
  Lanes c0, c1;
  for (int l = 0; l < kLanes; ++l) {
    const uint64_t counter = first + static_cast<uint64_t>(l);
    c0[l] = counter & kLow;
    c1[l] = counter >> 32;
  }
  Lanes c2 = Lanes{} + (stream & kLow);
  Lanes c3 = Lanes{} + (stream >> 32);
  uint64_t k0 = seed & kLow, k1 = seed >> 32;
  for (int round = 0; round < 10; ++round) {
    const Lanes p0 = c0 * 0xD2511F53u;
    const Lanes p1 = c2 * 0xCD9E8D57u;
    c0 = (p1 >> 32) ^ c1 ^ k0;
    c1 = p1 & kLow;
    c2 = (p0 >> 32) ^ c3 ^ k1;
    c3 = p0 & kLow;
    k0 = (k0 + 0x9E3779B9u) & kLow;
    k1 = (k1 + 0xBB67AE85u) & kLow;
  }
  for (int l = 0; l < kLanes; ++l) {
    words[0][l] = static_cast<uint32_t>(c0[l]);
    words[1][l] = static_cast<uint32_t>(c1[l]);
    words[2][l] = static_cast<uint32_t>(c2[l]);
    words[3][l] = static_cast<uint32_t>(c3[l]);
  }
}

}  // namespace

template <class T>
void dropout_mask_fill(T* out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset,
                       double p) {
  if (n <= 0) return;
  const T keep = p < 1 ? static_cast<T>(1.0 / (1.0 - p)) : T(0);
  // philox_uniform is (word >> 8) / 2^24, so "u >= p" is "(word >> 8) >= ceil(p * 2^24)";
  // p * 2^24 is exact in double.
  const double scaled = std::ceil(p * 16777216.0);
  const uint32_t threshold = scaled <= 0            ? 0u
                             : scaled >= 16777216.0 ? 16777216u
                                                    : static_cast<uint32_t>(scaled);
  const int64_t blocks = (n + 3) / 4;
  const int64_t groups = (blocks + kLanes - 1) / kLanes;
  parallel_for(groups, 64, [&](int64_t g_begin, int64_t g_end) {
    uint32_t words[4][kLanes];
    for (int64_t g = g_begin; g < g_end; ++g) {
      const int64_t first_block = g * kLanes;
      philox_lanes(seed, stream, offset + static_cast<uint64_t>(first_block), words);
      const int64_t base = first_block * 4;
      if (base + 4 * kLanes <= n) {
        T* dst = out + base;
        for (int l = 0; l < kLanes; ++l)
          for (int w = 0; w < 4; ++w)
            dst[4 * l + w] = (words[w][l] >> 8) >= threshold ? keep : T(0);
      } else {
        for (int64_t i = base; i < n; ++i) {
          const int64_t local = i - base;
          const uint32_t word = words[local % 4][local / 4];
          out[i] = (word >> 8) >= threshold ? keep : T(0);
        }
      }
    }
  });
}

template void dropout_mask_fill<float>(float*, int64_t, uint64_t, uint64_t, uint64_t, double);
template void dropout_mask_fill<double>(double*, int64_t, uint64_t, uint64_t, uint64_t, double);

}  // namespace dtrain::cpu
