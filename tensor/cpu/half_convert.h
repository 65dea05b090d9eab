// Bulk float32 <-> float16 on the CPU (gradient compression, 16-bit collectives): F16C
// instructions where the build targets them (-march=native on x86-64 since 2012), else the scalar
// conversions of tensor/kernels.h. The bits are the same either way: round to nearest even, and
// every NaN becomes the canonical quiet NaN with its sign, as kernels::float_to_half makes it.
#pragma once

#include <cstdint>

#include "dtrain/tensor/kernels.h"

#if defined(__F16C__) && defined(__AVX2__)
#include <immintrin.h>
#define DTRAIN_F16C 1
#endif

namespace dtrain::cpu {

#if defined(DTRAIN_F16C)
/// Eight floats to halves, NaN lanes canonicalised.
inline __m128i halves_of(__m256 v) {
  const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m128i exp = _mm_and_si128(h, _mm_set1_epi16(0x7c00));
  const __m128i mant = _mm_and_si128(h, _mm_set1_epi16(0x03ff));
  const __m128i nan = _mm_andnot_si128(_mm_cmpeq_epi16(mant, _mm_setzero_si128()),
                                       _mm_cmpeq_epi16(exp, _mm_set1_epi16(0x7c00)));
  const __m128i canonical = _mm_or_si128(
      _mm_and_si128(h, _mm_set1_epi16(static_cast<int16_t>(0x8000))), _mm_set1_epi16(0x7e00));
  return _mm_blendv_epi8(h, canonical, nan);
}
inline __m256 floats_of(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
/// True when one of the eight halves at p is a NaN (the instruction quiets signalling NaNs, which
/// half_to_float keeps as they are).
inline bool any_nan(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i magnitude = _mm_and_si128(h, _mm_set1_epi16(0x7fff));
  return _mm_movemask_epi8(_mm_cmpgt_epi16(magnitude, _mm_set1_epi16(0x7c00))) != 0;
}
#endif

inline void float_to_half_n(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
#if defined(DTRAIN_F16C)
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), halves_of(_mm256_loadu_ps(src + i)));
  }
#endif
  for (; i < n; ++i) dst[i] = kernels::float_to_half(src[i]);
}

inline void half_to_float_n(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
#if defined(DTRAIN_F16C)
  for (; i + 8 <= n; i += 8) {
    if (any_nan(src + i)) {
      for (int64_t k = i; k < i + 8; ++k) dst[k] = kernels::half_to_float(src[k]);
    } else {
      _mm256_storeu_ps(dst + i, floats_of(src + i));
    }
  }
#endif
  for (; i < n; ++i) dst[i] = kernels::half_to_float(src[i]);
}

/// dst[i] = half(float(dst[i]) + float(src[i])).
inline void add_halves_n(uint16_t* dst, const uint16_t* src, int64_t n) {
  int64_t i = 0;
#if defined(DTRAIN_F16C)
  for (; i + 8 <= n; i += 8) {
    const __m256 sum = _mm256_add_ps(floats_of(dst + i), floats_of(src + i));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), halves_of(sum));
  }
#endif
  for (; i < n; ++i) {
    dst[i] =
        kernels::float_to_half(kernels::half_to_float(dst[i]) + kernels::half_to_float(src[i]));
  }
}

}  // namespace dtrain::cpu
