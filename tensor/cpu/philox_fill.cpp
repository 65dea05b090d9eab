#include "dtrain/tensor/cpu/philox_fill.h"

#include <cmath>
#include <cstring>

#include "dtrain/tensor/cpu/avx512.h"
#include "dtrain/tensor/cpu/parallel.h"
#include "dtrain/tensor/kernels.h"

namespace dtrain::cpu {
namespace {

// GCC vector extensions: AVX-512 or SSE code, whatever the build targets (AVX2 builds have their
// own philox_group below). Each 32-bit Philox word lives in the low half of a 64-bit lane, so that
// the 32x32->64 products are lane-wise multiplies.
typedef uint64_t U64x8 __attribute__((vector_size(64)));
typedef uint32_t U32x16 __attribute__((vector_size(64)));
constexpr int kChains = 4;  // independent vectors per round: the rounds are latency-bound
constexpr int kBlocksPerGroup = 8 * kChains;

#if defined(__AVX2__) && !defined(__AVX512F__)
/// hi and lo halves of the 32x32->64 products of a's eight u32 lanes with m's.
inline void mul_hi_lo(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);                        // lanes 0, 2, 4, 6
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);  // lanes 1, 3, 5, 7
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

/// philox_group below for AVX2, which has no 64-bit lane multiply (the generic code's products
/// become shift-and-add chains): each word of eight blocks in the u32 lanes of one register, the
/// rounds on vpmuludq, then a 4 x 8 transpose into the same element order.
void philox_group(uint64_t seed, uint64_t stream, uint64_t first, U32x16 (&words)[kChains][2]) {
  __m256i c0[kChains], c1[kChains], c2[kChains], c3[kChains];
  for (int c = 0; c < kChains; ++c) {
    alignas(32) uint32_t lo[8], hi[8];
    for (int l = 0; l < 8; ++l) {
      const uint64_t counter = first + static_cast<uint64_t>(8 * c + l);
      lo[l] = static_cast<uint32_t>(counter);
      hi[l] = static_cast<uint32_t>(counter >> 32);
    }
    c0[c] = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo));
    c1[c] = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi));
    c2[c] = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(stream)));
    c3[c] = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(stream >> 32)));
  }
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const __m256i key0 = _mm256_set1_epi32(static_cast<int>(k0));
    const __m256i key1 = _mm256_set1_epi32(static_cast<int>(k1));
    for (int c = 0; c < kChains; ++c) {
      __m256i hi0, lo0, hi1, lo1;
      mul_hi_lo(c0[c], m0, hi0, lo0);
      mul_hi_lo(c2[c], m1, hi1, lo1);
      c0[c] = _mm256_xor_si256(_mm256_xor_si256(hi1, c1[c]), key0);
      c1[c] = lo1;
      c2[c] = _mm256_xor_si256(_mm256_xor_si256(hi0, c3[c]), key1);
      c3[c] = lo0;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  for (int c = 0; c < kChains; ++c) {
    // Lanes hold blocks 0..7 of one word each; interleave into block order (w0 w1 w2 w3 of each).
    const __m256i t0 = _mm256_unpacklo_epi32(c0[c], c1[c]);  // b0 b1 | b4 b5, words 0-1
    const __m256i t1 = _mm256_unpackhi_epi32(c0[c], c1[c]);  // b2 b3 | b6 b7, words 0-1
    const __m256i t2 = _mm256_unpacklo_epi32(c2[c], c3[c]);  // b0 b1 | b4 b5, words 2-3
    const __m256i t3 = _mm256_unpackhi_epi32(c2[c], c3[c]);  // b2 b3 | b6 b7, words 2-3
    const __m256i b04 = _mm256_unpacklo_epi64(t0, t2), b15 = _mm256_unpackhi_epi64(t0, t2);
    const __m256i b26 = _mm256_unpacklo_epi64(t1, t3), b37 = _mm256_unpackhi_epi64(t1, t3);
    __m256i* out0 = reinterpret_cast<__m256i*>(&words[c][0]);
    __m256i* out1 = reinterpret_cast<__m256i*>(&words[c][1]);
    _mm256_storeu_si256(out0, _mm256_permute2x128_si256(b04, b15, 0x20));
    _mm256_storeu_si256(out0 + 1, _mm256_permute2x128_si256(b26, b37, 0x20));
    _mm256_storeu_si256(out1, _mm256_permute2x128_si256(b04, b15, 0x31));
    _mm256_storeu_si256(out1 + 1, _mm256_permute2x128_si256(b26, b37, 0x31));
  }
}
#else
/// Lane-wise product of the low 32 bits of `a` with `m`, as 64 bits. (Vectors pass by reference:
/// by value their ABI would depend on whether the build has AVX-512.)
inline void mul_32x32(const U64x8& a, uint32_t m, U64x8& product) {
#if defined(__AVX512F__)
  product = reinterpret_cast<U64x8>(
      _mm512_mul_epu32(reinterpret_cast<__m512i>(a), _mm512_set1_epi64(static_cast<int64_t>(m))));
#else
  product = (a & 0xFFFFFFFFu) * m;
#endif
}

/// Philox4x32-10 of the kBlocksPerGroup counters from `first`, the rounds of kernels::philox.
/// On return, words[c] holds block first + 8c + l's four words in element order: u32 lanes
/// 0..15 of words[c][0] are elements 0..15 of blocks 8c..8c+3, words[c][1] those of 8c+4..8c+7.
void philox_group(uint64_t seed, uint64_t stream, uint64_t first, U32x16 (&words)[kChains][2]) {
  constexpr uint64_t kLow = 0xFFFFFFFFu;
  U64x8 c0[kChains], c1[kChains], c2[kChains], c3[kChains];
  for (int c = 0; c < kChains; ++c) {
    for (int l = 0; l < 8; ++l) {
      const uint64_t counter = first + static_cast<uint64_t>(8 * c + l);
      c0[c][l] = counter & kLow;
      c1[c][l] = counter >> 32;
    }
    c2[c] = U64x8{} + (stream & kLow);
    c3[c] = U64x8{} + (stream >> 32);
  }
  uint64_t k0 = seed & kLow, k1 = seed >> 32;
  for (int round = 0; round < 10; ++round) {
    for (int c = 0; c < kChains; ++c) {
      U64x8 p0, p1;
      mul_32x32(c0[c], 0xD2511F53u, p0);
      mul_32x32(c2[c], 0xCD9E8D57u, p1);
      c0[c] = (p1 >> 32) ^ c1[c] ^ k0;
      c1[c] = p1 & kLow;
      c2[c] = (p0 >> 32) ^ c3[c] ^ k1;
      c3[c] = p0 & kLow;
    }
    k0 = (k0 + 0x9E3779B9u) & kLow;
    k1 = (k1 + 0xBB67AE85u) & kLow;
  }
  for (int c = 0; c < kChains; ++c) {
    // (w0, w1) and (w2, w3) of each block as one 64-bit lane each, then interleaved by block.
    const U64x8 lo = (c0[c] & kLow) | (c1[c] << 32);
    const U64x8 hi = (c2[c] & kLow) | (c3[c] << 32);
    words[c][0] =
        reinterpret_cast<U32x16>(__builtin_shufflevector(lo, hi, 0, 8, 1, 9, 2, 10, 3, 11));
    words[c][1] =
        reinterpret_cast<U32x16>(__builtin_shufflevector(lo, hi, 4, 12, 5, 13, 6, 14, 7, 15));
  }
}
#endif

template <class T>
T keep_value(double p) {
  return p < 1 ? static_cast<T>(1.0 / (1.0 - p)) : T(0);
}

/// philox_uniform is (word >> 8) / 2^24, so "u >= p" is "(word >> 8) >= ceil(p * 2^24)";
/// p * 2^24 is exact in double.
uint32_t keep_threshold(double p) {
  const double scaled = std::ceil(p * 16777216.0);
  if (scaled <= 0) return 0;
  return scaled >= 16777216.0 ? 16777216u : static_cast<uint32_t>(scaled);
}

void store_sixteen(float* dst, const U32x16& words, uint32_t threshold, float keep) {
  uint32_t keep_bits;
  std::memcpy(&keep_bits, &keep, sizeof keep_bits);
  const U32x16 kept = reinterpret_cast<U32x16>((words >> 8) >= threshold);  // all ones or zero
  const U32x16 bits = kept & keep_bits;
  std::memcpy(dst, &bits, sizeof bits);
}
void store_sixteen(double* dst, const U32x16& words, uint32_t threshold, double keep) {
  for (int i = 0; i < 16; ++i) dst[i] = (words[i] >> 8) >= threshold ? keep : 0.0;
}

}  // namespace

template <class T>
void dropout_mask_fill(T* out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset,
                       double p) {
  if (n <= 0) return;
  const T keep = keep_value<T>(p);
  const uint32_t threshold = keep_threshold(p);
  constexpr int64_t kElementsPerGroup = 4 * kBlocksPerGroup;
  const int64_t groups = (n + kElementsPerGroup - 1) / kElementsPerGroup;
  parallel_for(groups, 32, [&](int64_t g_begin, int64_t g_end) {
    U32x16 words[kChains][2];
    for (int64_t g = g_begin; g < g_end; ++g) {
      philox_group(seed, stream, offset + static_cast<uint64_t>(g * kBlocksPerGroup), words);
      const int64_t base = g * kElementsPerGroup;
      if (base + kElementsPerGroup <= n) {
        for (int c = 0; c < kChains; ++c)
          for (int h = 0; h < 2; ++h)
            store_sixteen(out + base + 32 * c + 16 * h, words[c][h], threshold, keep);
        continue;
      }
      for (int64_t i = base; i < n; ++i) {
        const int64_t local = i - base;
        const uint32_t word = words[local / 32][(local / 16) % 2][local % 16];
        out[i] = (word >> 8) >= threshold ? keep : T(0);
      }
    }
  });
}

template void dropout_mask_fill<float>(float*, int64_t, uint64_t, uint64_t, uint64_t, double);
template void dropout_mask_fill<double>(double*, int64_t, uint64_t, uint64_t, uint64_t, double);

}  // namespace dtrain::cpu
