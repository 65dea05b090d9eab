// Float32 vector math: AVX-512 exp and erf from range reduction and polynomials fitted at
// Chebyshev nodes, and the GELU and softmax loops built on them; std:: functions otherwise.
#include "dtrain/tensor/cpu/vec_math.h"

#include <cmath>

#include "dtrain/tensor/cpu/avx512.h"

namespace dtrain::cpu {
namespace {

constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;  // 1 / sqrt(2 pi)

#if defined(__AVX512F__)

inline __m512 splat(float v) { return _mm512_set1_ps(v); }

/// Lanes [0, n) of a 16-lane mask, for the tail of a loop (0 < n < 16).
inline __mmask16 tail_mask(int64_t n) { return static_cast<__mmask16>((1u << n) - 1u); }

/// exp(x) = 2^n exp(r) with n = round(x / ln2) and |r| <= ln2 / 2; exp(r) = 1 + r + r^2 q(r),
/// q of degree 4 (relative error 7e-8 over the range). scalef applies 2^n with IEEE overflow to
/// inf and gradual underflow to 0, which exponent-bit arithmetic would not.
inline __m512 exp_v(__m512 x) {
  // Clamping keeps -inf from becoming -inf - (-inf) = NaN in the reduction; exp(-110) and
  // exp(89) are already 0 and inf in float. max/min return their second operand when either is
  // NaN, so a NaN x passes through.
  x = _mm512_min_ps(splat(89.f), _mm512_max_ps(splat(-110.f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, splat(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // ln2 split into its float value and the remainder, so that x - n ln2 keeps its low bits.
  __m512 r = _mm512_fnmadd_ps(n, splat(0.693147182464599609f), x);
  r = _mm512_fnmadd_ps(n, splat(-1.9046542e-9f), r);
  __m512 q = splat(0.0013926175888627768f);
  q = _mm512_fmadd_ps(q, r, splat(0.008363173343241215f));
  q = _mm512_fmadd_ps(q, r, splat(0.041666556149721146f));
  q = _mm512_fmadd_ps(q, r, splat(0.16666577756404877f));
  q = _mm512_fmadd_ps(q, r, splat(0.5f));
  const __m512 p = _mm512_add_ps(_mm512_fmadd_ps(q, _mm512_mul_ps(r, r), r), splat(1.f));
  return _mm512_scalef_ps(p, n);
}

/// erf(z) / z for |z| < 1, as a polynomial in s = z^2 (relative error 2e-7 in float).
inline __m512 erf_small_v(__m512 s) {
  __m512 p = splat(-0.0005648059886880219f);
  p = _mm512_fmadd_ps(p, s, splat(0.004921761807054281f));
  p = _mm512_fmadd_ps(p, s, splat(-0.026715055108070374f));
  p = _mm512_fmadd_ps(p, s, splat(0.11280316859483719f));
  p = _mm512_fmadd_ps(p, s, splat(-0.37612342834472656f));
  return _mm512_fmadd_ps(p, s, splat(1.1283791065216064f));
}

/// erfc(t) for t >= 1 (NaN for NaN): exp(h(t) - t^2), h(t) = log erfc(t) + t^2 a polynomial in
/// t - 2.5 over [1, 4] (absolute error of erfc 1e-8). 0 beyond t = 4, where erfc(t) < 1.6e-8 is
/// below what 1 - erfc or x * erfc can show within the callers' 1e-7.
inline __m512 erfc_big_v(__m512 t) {
  const __m512 tc = _mm512_min_ps(splat(4.f), t);
  const __m512 u = _mm512_sub_ps(tc, splat(2.5f));
  __m512 h = splat(1.6371513993362896e-06f);
  h = _mm512_fmadd_ps(h, u, splat(-1.3315014257386792e-05f));
  h = _mm512_fmadd_ps(h, u, splat(7.729137723799795e-05f));
  h = _mm512_fmadd_ps(h, u, splat(-0.00042012252379208803f));
  h = _mm512_fmadd_ps(h, u, splat(0.0021653035655617714f));
  h = _mm512_fmadd_ps(h, u, splat(-0.01085854135453701f));
  h = _mm512_fmadd_ps(h, u, splat(0.05610629543662071f));
  h = _mm512_fmadd_ps(h, u, splat(-0.35268068313598633f));
  h = _mm512_fmadd_ps(h, u, splat(-1.556815266609192f));
  const __m512 e = exp_v(_mm512_fnmadd_ps(tc, tc, h));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(t, splat(4.f), _CMP_GT_OQ), e, splat(0.f));
}

inline __m512 erf_v(__m512 z) {
  const __m512 t = _mm512_abs_ps(z);
  const __m512 small = _mm512_mul_ps(z, erf_small_v(_mm512_mul_ps(z, z)));
  const __m512i sign = _mm512_and_si512(_mm512_castps_si512(z), _mm512_set1_epi32(INT32_MIN));
  const __m512 big = _mm512_castsi512_ps(
      _mm512_or_si512(_mm512_castps_si512(_mm512_sub_ps(splat(1.f), erfc_big_v(t))), sign));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(t, splat(1.f), _CMP_LT_OQ), big, small);
}

/// The standard normal CDF Phi(x) = (1 + erf(x / sqrt 2)) / 2, taken for x < 0 from erfc
/// directly so that the left tail keeps its relative accuracy (1 + erf would cancel).
inline __m512 normal_cdf_v(__m512 x) {
  const __m512 z = _mm512_mul_ps(x, splat(kInvSqrt2));
  const __m512 t = _mm512_abs_ps(z);
  const __m512 small =
      _mm512_fmadd_ps(_mm512_mul_ps(z, erf_small_v(_mm512_mul_ps(z, z))), splat(0.5f), splat(0.5f));
  const __m512 half_erfc = _mm512_mul_ps(erfc_big_v(t), splat(0.5f));
  const __m512 big = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(z, splat(0.f), _CMP_GT_OQ), half_erfc,
                                          _mm512_sub_ps(splat(1.f), half_erfc));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(t, splat(1.f), _CMP_LT_OQ), big, small);
}

inline __m512 gelu_v(__m512 x) { return _mm512_mul_ps(x, normal_cdf_v(x)); }

inline __m512 gelu_backward_v(__m512 x, __m512 g) {
  const __m512 pdf =
      _mm512_mul_ps(splat(kInvSqrt2Pi), exp_v(_mm512_mul_ps(splat(-0.5f), _mm512_mul_ps(x, x))));
  return _mm512_mul_ps(g, _mm512_fmadd_ps(x, pdf, normal_cdf_v(x)));
}

/// y[i] = f(x[i]) in vectors of 16, the tail through masked loads and stores.
template <class F>
void map1(const float* x, float* y, int64_t n, F f) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, f(_mm512_loadu_ps(x + i)));
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(y + i, m, f(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

void softmax_row(const float* x, float* y, int64_t n, bool log) {
  const __m512 neg_inf = splat(-INFINITY);
  const int64_t full = n - n % 16;
  const __mmask16 m = tail_mask(n % 16);
  __m512 vmax = neg_inf;
  for (int64_t i = 0; i < full; i += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(x + i));
  if (full < n) vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(neg_inf, m, x + full));
  const float mx = _mm512_reduce_max_ps(vmax);
  const __m512 vmx = splat(mx);
  __m512 vsum = _mm512_setzero_ps();
  // Softmax writes exp(x - max) once and rescales it in place; log-softmax only needs the sum.
  for (int64_t i = 0; i < full; i += 16) {
    const __m512 e = exp_v(_mm512_sub_ps(_mm512_loadu_ps(x + i), vmx));
    if (!log) _mm512_storeu_ps(y + i, e);
    vsum = _mm512_add_ps(vsum, e);
  }
  if (full < n) {
    const __m512 e = exp_v(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + full), vmx));
    if (!log) _mm512_mask_storeu_ps(y + full, m, e);
    vsum = _mm512_mask_add_ps(vsum, m, vsum, e);
  }
  const float sum = _mm512_reduce_add_ps(vsum);
  if (log) {
    const __m512 lse = splat(std::log(sum));
    map1(x, y, n, [&](__m512 v) { return _mm512_sub_ps(_mm512_sub_ps(v, vmx), lse); });
  } else {
    const __m512 inv = splat(1.f / sum);
    map1(y, y, n, [&](__m512 v) { return _mm512_mul_ps(v, inv); });
  }
}

void softmax_backward_row(const float* y, const float* gy, float* dx, int64_t n, bool log) {
  const int64_t full = n - n % 16;
  const __mmask16 m = tail_mask(n % 16);
  __m512 vdot = _mm512_setzero_ps();
  for (int64_t i = 0; i < full; i += 16) {
    const __m512 g = _mm512_loadu_ps(gy + i);
    vdot = log ? _mm512_add_ps(vdot, g) : _mm512_fmadd_ps(g, _mm512_loadu_ps(y + i), vdot);
  }
  if (full < n) {  // masked-off lanes load 0 and add nothing
    const __m512 g = _mm512_maskz_loadu_ps(m, gy + full);
    vdot =
        log ? _mm512_add_ps(vdot, g) : _mm512_fmadd_ps(g, _mm512_maskz_loadu_ps(m, y + full), vdot);
  }
  const __m512 dot = splat(_mm512_reduce_add_ps(vdot));
  const auto row = [&](__m512 vy, __m512 g) {
    return log ? _mm512_fnmadd_ps(exp_v(vy), dot, g) : _mm512_mul_ps(vy, _mm512_sub_ps(g, dot));
  };
  for (int64_t i = 0; i < full; i += 16) {
    _mm512_storeu_ps(dx + i, row(_mm512_loadu_ps(y + i), _mm512_loadu_ps(gy + i)));
  }
  if (full < n) {
    _mm512_mask_storeu_ps(
        dx + full, m, row(_mm512_maskz_loadu_ps(m, y + full), _mm512_maskz_loadu_ps(m, gy + full)));
  }
}

#else  // no AVX-512: the formulas of the shared kernel bodies

void softmax_row(const float* x, float* y, int64_t n, bool log) {
  float mx = x[0];
  for (int64_t k = 1; k < n; ++k) mx = x[k] > mx ? x[k] : mx;
  float sum = 0;
  for (int64_t k = 0; k < n; ++k) sum += std::exp(x[k] - mx);
  if (log) {
    const float lse = std::log(sum);
    for (int64_t k = 0; k < n; ++k) y[k] = x[k] - mx - lse;
  } else {
    const float inv = 1.f / sum;
    for (int64_t k = 0; k < n; ++k) y[k] = std::exp(x[k] - mx) * inv;
  }
}

void softmax_backward_row(const float* y, const float* gy, float* dx, int64_t n, bool log) {
  float dot = 0;
  for (int64_t k = 0; k < n; ++k) dot += log ? gy[k] : gy[k] * y[k];
  for (int64_t k = 0; k < n; ++k) dx[k] = log ? gy[k] - std::exp(y[k]) * dot : y[k] * (gy[k] - dot);
}

#endif

}  // namespace

#if defined(__AVX512F__)

void exp_f32(const float* x, float* y, int64_t n) { map1(x, y, n, exp_v); }
void erf_f32(const float* x, float* y, int64_t n) { map1(x, y, n, erf_v); }
void gelu_f32(const float* x, float* y, int64_t n) { map1(x, y, n, gelu_v); }

void gelu_backward_f32(const float* x, const float* gy, float* dx, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(dx + i, gelu_backward_v(_mm512_loadu_ps(x + i), _mm512_loadu_ps(gy + i)));
  }
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(
        dx + i, m,
        gelu_backward_v(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, gy + i)));
  }
}

#else

void exp_f32(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::exp(x[i]);
}
void erf_f32(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::erf(x[i]);
}
void gelu_f32(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = 0.5f * x[i] * (1.f + std::erf(x[i] * kInvSqrt2));
}
void gelu_backward_f32(const float* x, const float* gy, float* dx, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float cdf = 0.5f * (1.f + std::erf(x[i] * kInvSqrt2));
    const float pdf = kInvSqrt2Pi * std::exp(-0.5f * x[i] * x[i]);
    dx[i] = gy[i] * (cdf + x[i] * pdf);
  }
}

#endif

void softmax_rows_f32(const float* x, float* y, int64_t rows, int64_t cols, bool log) {
  if (cols <= 0) return;
  for (int64_t r = 0; r < rows; ++r) softmax_row(x + r * cols, y + r * cols, cols, log);
}

void softmax_backward_rows_f32(const float* y, const float* gy, float* dx, int64_t rows,
                               int64_t cols, bool log) {
  for (int64_t r = 0; r < rows; ++r) {
    softmax_backward_row(y + r * cols, gy + r * cols, dx + r * cols, cols, log);
  }
}

}  // namespace dtrain::cpu
