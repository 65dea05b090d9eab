// Float32 vector math: exp and erf from range reduction and polynomials fitted at Chebyshev
// nodes, and the GELU and softmax loops built on them, written once over a small set of vector
// operations that AVX-512 and AVX2 + FMA both provide; std:: functions otherwise.
#include "dtrain/tensor/cpu/vec_math.h"

#include <cmath>

#include "dtrain/tensor/cpu/avx512.h"

namespace dtrain::cpu {
namespace {

constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;  // 1 / sqrt(2 pi)

#if defined(__AVX512F__)
#define DTRAIN_VEC_MATH_SIMD 1

/// The vector operations the math below is written in: 16 lanes of AVX-512.
struct Simd {
  using V = __m512;
  static constexpr int64_t kLanes = 16;
  static V splat(float v) { return _mm512_set1_ps(v); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  /// Lanes [0, n) of p, the others `fill` (0 < n < kLanes); store_tail writes lanes [0, n).
  static __mmask16 tail_mask(int64_t n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static V load_tail(const float* p, int64_t n, float fill) {
    return _mm512_mask_loadu_ps(splat(fill), tail_mask(n), p);
  }
  static void store_tail(float* p, int64_t n, V v) { _mm512_mask_storeu_ps(p, tail_mask(n), v); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }    // a b + c
  static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a b
  /// min and max return b when either is NaN.
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V round(V a) {
    return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  /// p 2^n for integral n, rounded once: IEEE overflow to inf and gradual underflow to 0.
  static V scale_by_pow2(V p, V n) { return _mm512_scalef_ps(p, n); }
  static V abs(V a) { return _mm512_abs_ps(a); }
  /// |magnitude| with the sign bit of `sign`; magnitude is not negative.
  static V with_sign_of(V magnitude, V sign) {
    const __m512i bit = _mm512_and_si512(_mm512_castps_si512(sign), _mm512_set1_epi32(INT32_MIN));
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(magnitude), bit));
  }
  /// a > b ? then : otherwise, and a < b ? then : otherwise (false where either is NaN).
  static V if_greater(V a, V b, V then, V otherwise) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_GT_OQ), otherwise, then);
  }
  static V if_less(V a, V b, V then, V otherwise) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_LT_OQ), otherwise, then);
  }
  /// p 2^n for integral n where the result is a normal float: scalef is already one instruction.
  static V scale_by_pow2_normal(V p, V n) { return _mm512_scalef_ps(p, n); }
  /// Bit i set where lane i of a is below b (false for NaN).
  static int lanes_less(V a, V b) { return static_cast<int>(_mm512_cmp_ps_mask(a, b, _CMP_LT_OQ)); }
  static constexpr int kAllLanes = 0xffff;
  static float sum(V a) { return _mm512_reduce_add_ps(a); }
  static float maximum(V a) { return _mm512_reduce_max_ps(a); }
};

#elif defined(__AVX2__) && defined(__FMA__)
#define DTRAIN_VEC_MATH_SIMD 1

/// The same operations in 8 lanes of AVX2 and FMA.
struct Simd {
  using V = __m256;
  static constexpr int64_t kLanes = 8;
  static V splat(float v) { return _mm256_set1_ps(v); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static __m256i tail_mask(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static V load_tail(const float* p, int64_t n, float fill) {
    const __m256i m = tail_mask(n);
    return _mm256_blendv_ps(splat(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
  }
  static void store_tail(float* p, int64_t n, V v) { _mm256_maskstore_ps(p, tail_mask(n), v); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V round(V a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  /// No scalef: 2^n as two factors built from exponent bits, 2^floor(n/2) 2^ceil(n/2), each a
  /// normal float for the |n| <= 159 that exp gives. The first product stays normal, so it is
  /// exact, and only the second rounds (gradual underflow, overflow to inf) as scalef would.
  static V scale_by_pow2(V p, V n) {
    const __m256i k = _mm256_cvtps_epi32(n);
    const __m256i half = _mm256_srai_epi32(k, 1);
    const auto pow2 = [](__m256i e) {
      return _mm256_castsi256_ps(
          _mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23));
    };
    return _mm256_mul_ps(_mm256_mul_ps(p, pow2(half)), pow2(_mm256_sub_epi32(k, half)));
  }
  /// p 2^n where the result is a normal float (p normal): n added to p's exponent bits.
  static V scale_by_pow2_normal(V p, V n) {
    const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
  }
  static int lanes_less(V a, V b) { return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_LT_OQ)); }
  static constexpr int kAllLanes = 0xff;
  static V abs(V a) { return _mm256_andnot_ps(splat(-0.f), a); }
  static V with_sign_of(V magnitude, V sign) {
    return _mm256_or_ps(magnitude, _mm256_and_ps(sign, splat(-0.f)));
  }
  static V if_greater(V a, V b, V then, V otherwise) {
    return _mm256_blendv_ps(otherwise, then, _mm256_cmp_ps(a, b, _CMP_GT_OQ));
  }
  static V if_less(V a, V b, V then, V otherwise) {
    return _mm256_blendv_ps(otherwise, then, _mm256_cmp_ps(a, b, _CMP_LT_OQ));
  }
  static float sum(V a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  static float maximum(V a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
  }
};

#endif

#if defined(DTRAIN_VEC_MATH_SIMD)

using V = Simd::V;
constexpr int64_t kLanes = Simd::kLanes;
inline V splat(float v) { return Simd::splat(v); }

/// exp(x) = 2^n exp(r) with n = round(x / ln2) and |r| <= ln2 / 2; exp(r) = 1 + r + r^2 q(r),
/// q of degree 4 (relative error 7e-8 over the range). The 2^n scaling overflows to inf and
/// underflows gradually to 0, which adding n to the exponent bits would not.
/// exp(r) 2^n for x = n ln2 + r, |r| <= ln2 / 2, scaled by `scale(p, n)`.
template <class Scale>
inline V exp_reduced_v(V x, Scale scale) {
  const V n = Simd::round(Simd::mul(x, splat(1.44269504088896341f)));
  // ln2 split into its float value and the remainder, so that x - n ln2 keeps its low bits.
  V r = Simd::fnmadd(n, splat(0.693147182464599609f), x);
  r = Simd::fnmadd(n, splat(-1.9046542e-9f), r);
  V q = splat(0.0013926175888627768f);
  q = Simd::fmadd(q, r, splat(0.008363173343241215f));
  q = Simd::fmadd(q, r, splat(0.041666556149721146f));
  q = Simd::fmadd(q, r, splat(0.16666577756404877f));
  q = Simd::fmadd(q, r, splat(0.5f));
  const V p = Simd::add(Simd::fmadd(q, Simd::mul(r, r), r), splat(1.f));
  return scale(p, n);
}

inline V exp_v(V x) {
  // Clamping keeps -inf from becoming -inf - (-inf) = NaN in the reduction; exp(-110) and
  // exp(89) are already 0 and inf in float. min/max return their second operand when either is
  // NaN, so a NaN x passes through.
  x = Simd::min(splat(89.f), Simd::max(splat(-110.f), x));
  return exp_reduced_v(x, [](V p, V n) { return Simd::scale_by_pow2(p, n); });
}

/// exp(x) for x in [-87, 88], where the result is a normal float: no clamping, and 2^n goes
/// straight into the exponent bits (the same value as exp_v there, at fewer instructions).
inline V exp_normal_v(V x) {
  return exp_reduced_v(x, [](V p, V n) { return Simd::scale_by_pow2_normal(p, n); });
}

/// erf(z) / z for |z| < 1, as a polynomial in s = z^2 (relative error 2e-7 in float).
inline V erf_small_v(V s) {
  V p = splat(-0.0005648059886880219f);
  p = Simd::fmadd(p, s, splat(0.004921761807054281f));
  p = Simd::fmadd(p, s, splat(-0.026715055108070374f));
  p = Simd::fmadd(p, s, splat(0.11280316859483719f));
  p = Simd::fmadd(p, s, splat(-0.37612342834472656f));
  return Simd::fmadd(p, s, splat(1.1283791065216064f));
}

/// erfc(t) for t >= 1 (NaN for NaN): exp(h(t) - t^2), h(t) = log erfc(t) + t^2 a polynomial in
/// t - 2.5 over [1, 4] (absolute error of erfc 1e-8). 0 beyond t = 4, where erfc(t) < 1.6e-8 is
/// below what 1 - erfc or x * erfc can show within the callers' 1e-7.
inline V erfc_big_v(V t) {
  const V tc = Simd::min(splat(4.f), t);
  const V u = Simd::sub(tc, splat(2.5f));
  V h = splat(1.6371513993362896e-06f);
  h = Simd::fmadd(h, u, splat(-1.3315014257386792e-05f));
  h = Simd::fmadd(h, u, splat(7.729137723799795e-05f));
  h = Simd::fmadd(h, u, splat(-0.00042012252379208803f));
  h = Simd::fmadd(h, u, splat(0.0021653035655617714f));
  h = Simd::fmadd(h, u, splat(-0.01085854135453701f));
  h = Simd::fmadd(h, u, splat(0.05610629543662071f));
  h = Simd::fmadd(h, u, splat(-0.35268068313598633f));
  h = Simd::fmadd(h, u, splat(-1.556815266609192f));
  const V e = exp_normal_v(Simd::fnmadd(tc, tc, h));  // h - tc^2 lies in [-17.6, -0.4]
  return Simd::if_greater(t, splat(4.f), splat(0.f), e);
}

inline V erf_v(V z) {
  const V t = Simd::abs(z);
  const V small = Simd::mul(z, erf_small_v(Simd::mul(z, z)));
  const V big = Simd::with_sign_of(Simd::sub(splat(1.f), erfc_big_v(t)), z);
  return Simd::if_less(t, splat(1.f), small, big);
}

/// The standard normal CDF Phi(x) = (1 + erf(x / sqrt 2)) / 2, taken for x < 0 from erfc
/// directly so that the left tail keeps its relative accuracy (1 + erf would cancel).
/// Only the branch that some lane needs is evaluated: activations mostly lie within |x| < sqrt 2,
/// where the series alone serves a whole vector.
inline V normal_cdf_v(V x) {
  const V z = Simd::mul(x, splat(kInvSqrt2));
  const V t = Simd::abs(z);
  const int small_lanes = Simd::lanes_less(t, splat(1.f));
  V small = splat(0.f);
  if (small_lanes != 0) {
    small = Simd::fmadd(Simd::mul(z, erf_small_v(Simd::mul(z, z))), splat(0.5f), splat(0.5f));
    if (small_lanes == Simd::kAllLanes) return small;
  }
  const V half_erfc = Simd::mul(erfc_big_v(t), splat(0.5f));
  const V big = Simd::if_greater(z, splat(0.f), Simd::sub(splat(1.f), half_erfc), half_erfc);
  return small_lanes == 0 ? big : Simd::if_less(t, splat(1.f), small, big);
}

inline V gelu_v(V x) { return Simd::mul(x, normal_cdf_v(x)); }

inline V gelu_backward_v(V x, V g) {
  const V arg = Simd::mul(splat(-0.5f), Simd::mul(x, x));
  // Within |x| < 13 exp(-x^2 / 2) is a normal float, where the short exp serves.
  const V e = Simd::lanes_less(arg, splat(-87.f)) == 0 ? exp_normal_v(arg) : exp_v(arg);
  const V pdf = Simd::mul(splat(kInvSqrt2Pi), e);
  return Simd::mul(g, Simd::fmadd(x, pdf, normal_cdf_v(x)));
}

/// y[i] = f(x[i]) a vector at a time, the tail through masked loads and stores.
template <class F>
void map1(const float* x, float* y, int64_t n, F f) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) Simd::store(y + i, f(Simd::load(x + i)));
  if (i < n) Simd::store_tail(y + i, n - i, f(Simd::load_tail(x + i, n - i, 0.f)));
}

/// dx[i] = f(x[i], g[i]), likewise.
template <class F>
void map2(const float* x, const float* g, float* dx, int64_t n, F f) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) Simd::store(dx + i, f(Simd::load(x + i), Simd::load(g + i)));
  if (i < n) {
    Simd::store_tail(dx + i, n - i,
                     f(Simd::load_tail(x + i, n - i, 0.f), Simd::load_tail(g + i, n - i, 0.f)));
  }
}

/// Softmax or log-softmax of one row; returns the sum of exp(x - max) and the max in *max_out.
float softmax_row(const float* x, float* y, int64_t n, bool log, float* max_out = nullptr) {
  const int64_t full = n - n % kLanes;
  V vmax = splat(-INFINITY);
  for (int64_t i = 0; i < full; i += kLanes) vmax = Simd::max(vmax, Simd::load(x + i));
  if (full < n) vmax = Simd::max(vmax, Simd::load_tail(x + full, n - full, -INFINITY));
  const float mx = Simd::maximum(vmax);
  const V vmx = splat(mx);
  V vsum = splat(0.f);
  // Softmax writes exp(x - max) once and rescales it in place; log-softmax only needs the sum.
  // Lanes past the end hold -inf, whose exp adds 0 (or NaN to a row that is all -inf, which is
  // NaN anyway).
  for (int64_t i = 0; i < full; i += kLanes) {
    const V e = exp_v(Simd::sub(Simd::load(x + i), vmx));
    if (!log) Simd::store(y + i, e);
    vsum = Simd::add(vsum, e);
  }
  if (full < n) {
    const V e = exp_v(Simd::sub(Simd::load_tail(x + full, n - full, -INFINITY), vmx));
    if (!log) Simd::store_tail(y + full, n - full, e);
    vsum = Simd::add(vsum, e);
  }
  const float sum = Simd::sum(vsum);
  if (log) {
    const V lse = splat(std::log(sum));
    map1(x, y, n, [&](V v) { return Simd::sub(Simd::sub(v, vmx), lse); });
  } else {
    const V inv = splat(1.f / sum);
    map1(y, y, n, [&](V v) { return Simd::mul(v, inv); });
  }
  if (max_out != nullptr) *max_out = mx;
  return sum;
}

void softmax_backward_row(const float* y, const float* gy, float* dx, int64_t n, bool log) {
  const int64_t full = n - n % kLanes;
  V vdot = splat(0.f);
  const auto accumulate = [&](V vy, V g) {
    vdot = log ? Simd::add(vdot, g) : Simd::fmadd(g, vy, vdot);
  };
  for (int64_t i = 0; i < full; i += kLanes) accumulate(Simd::load(y + i), Simd::load(gy + i));
  if (full < n) {  // lanes past the end load 0 and add nothing
    accumulate(Simd::load_tail(y + full, n - full, 0.f), Simd::load_tail(gy + full, n - full, 0.f));
  }
  const V dot = splat(Simd::sum(vdot));
  map2(y, gy, dx, n, [&](V vy, V g) {
    return log ? Simd::fnmadd(exp_v(vy), dot, g) : Simd::mul(vy, Simd::sub(g, dot));
  });
}

#else  // no AVX-512 or AVX2: the formulas of the shared kernel bodies

float softmax_row(const float* x, float* y, int64_t n, bool log, float* max_out = nullptr) {
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
  if (max_out != nullptr) *max_out = mx;
  return sum;
}

void softmax_backward_row(const float* y, const float* gy, float* dx, int64_t n, bool log) {
  float dot = 0;
  for (int64_t k = 0; k < n; ++k) dot += log ? gy[k] : gy[k] * y[k];
  for (int64_t k = 0; k < n; ++k) dx[k] = log ? gy[k] - std::exp(y[k]) * dot : y[k] * (gy[k] - dot);
}

#endif

}  // namespace

#if defined(DTRAIN_VEC_MATH_SIMD)

void exp_f32(const float* x, float* y, int64_t n) { map1(x, y, n, exp_v); }
void erf_f32(const float* x, float* y, int64_t n) { map1(x, y, n, erf_v); }
void gelu_f32(const float* x, float* y, int64_t n) { map1(x, y, n, gelu_v); }
void gelu_backward_f32(const float* x, const float* gy, float* dx, int64_t n) {
  map2(x, gy, dx, n, gelu_backward_v);
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

void cross_entropy_rows_f32(const float* logits, const int64_t* targets, float* probs,
                            float* row_loss, int64_t rows, int64_t classes, double smoothing) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = logits + r * classes;
    float mx = 0;
    const float sum = softmax_row(x, probs + r * classes, classes, false, &mx);
    const double lse = std::log(static_cast<double>(sum)) + static_cast<double>(mx);
    double all = 0;  // the sum of the row's log-probabilities, which smoothing spreads over
    if (smoothing != 0) {
      for (int64_t j = 0; j < classes; ++j) all += static_cast<double>(x[j]);
      all -= static_cast<double>(classes) * lse;
    }
    const double target_logp = static_cast<double>(x[targets[r]]) - lse;
    row_loss[r] = static_cast<float>(-(1 - smoothing) * target_logp - smoothing * all / classes);
  }
}

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
