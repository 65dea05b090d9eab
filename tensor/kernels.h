// Kernel bodies written once for the CPU loop and the CUDA grid-stride kernel: elementwise
// functors, optimiser update rules, float16/bfloat16 conversion and the Philox generator.
// Everything here is header-only and free of host-only calls so nvcc can compile it for devices.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "dtrain/tensor/dtype.h"

#if defined(__CUDACC__)
#define DTRAIN_HD __host__ __device__ __forceinline__
#else
#define DTRAIN_HD inline
#endif

namespace dtrain::kernels {

// ---- elementwise ----------------------------------------------------------------------------
enum class Unary : uint8_t {
  kNeg,
  kExp,
  kLog,
  kSqrt,
  kAbs,
  kRelu,
  kGelu,
  kTanh,
  kSigmoid,
  kPow,
  kClamp,
  kAddScalar,
  kMulScalar,
  kRsqrt,
  kSquare,
  kSign
};
enum class Binary : uint8_t {
  kAdd,
  kSub,
  kMul,
  kDiv,
  kPow,
  kMax,
  kMin,
  kEq,
  kNe,
  kLt,
  kLe,
  kGt,
  kGe,
  // backward helpers: a = forward input or output, b = incoming gradient
  kReluBackward,
  kGeluBackward,
  kTanhBackward,
  kSigmoidBackward
};

/// Parameters of the scalar-parameterised unary ops (kPow: p; kClamp: lo, hi; k*Scalar: p).
struct UnaryParams {
  double p = 0, lo = 0, hi = 0;
};

template <class T>
DTRAIN_HD T apply_unary(Unary op, T x, const UnaryParams& q) {
  using std::exp, std::log, std::sqrt, std::fabs, std::tanh, std::erf, std::pow;
  switch (op) {
    case Unary::kNeg:
      return -x;
    case Unary::kExp:
      return exp(x);
    case Unary::kLog:
      return log(x);
    case Unary::kSqrt:
      return sqrt(x);
    case Unary::kAbs:
      return fabs(x);
    case Unary::kRelu:
      return x > T(0) ? x : T(0);
    case Unary::kGelu:
      return T(0.5) * x * (T(1) + erf(x * T(0.70710678118654752440)));
    case Unary::kTanh:
      return tanh(x);
    case Unary::kSigmoid:
      return T(1) / (T(1) + exp(-x));
    case Unary::kPow:
      return pow(x, T(q.p));
    case Unary::kClamp:
      return x < T(q.lo) ? T(q.lo) : (x > T(q.hi) ? T(q.hi) : x);
    case Unary::kAddScalar:
      return x + T(q.p);
    case Unary::kMulScalar:
      return x * T(q.p);
    case Unary::kRsqrt:
      return T(1) / sqrt(x);
    case Unary::kSquare:
      return x * x;
    case Unary::kSign:
      return T((x > T(0)) - (x < T(0)));
  }
  return x;
}

template <class T>
DTRAIN_HD T apply_binary(Binary op, T a, T b) {
  using std::exp, std::erf, std::pow;
  switch (op) {
    case Binary::kAdd:
      return a + b;
    case Binary::kSub:
      return a - b;
    case Binary::kMul:
      return a * b;
    case Binary::kDiv:
      return a / b;
    case Binary::kPow:
      return pow(a, b);
    case Binary::kMax:
      return a > b ? a : b;
    case Binary::kMin:
      return a < b ? a : b;
    case Binary::kEq:
      return T(a == b);
    case Binary::kNe:
      return T(a != b);
    case Binary::kLt:
      return T(a < b);
    case Binary::kLe:
      return T(a <= b);
    case Binary::kGt:
      return T(a > b);
    case Binary::kGe:
      return T(a >= b);
    case Binary::kReluBackward:
      return a > T(0) ? b : T(0);
    case Binary::kGeluBackward: {
      // d/dx [x * Phi(x)] = Phi(x) + x * phi(x)
      const T cdf = T(0.5) * (T(1) + erf(a * T(0.70710678118654752440)));
      const T pdf = T(0.39894228040143267794) * exp(T(-0.5) * a * a);
      return b * (cdf + a * pdf);
    }
    case Binary::kTanhBackward:
      return b * (T(1) - a * a);  // a = tanh(x)
    case Binary::kSigmoidBackward:
      return b * a * (T(1) - a);  // a = sigmoid(x)
  }
  return a;
}

/// Comparisons produce 0/1; the CPU and CUDA runners store them as bool.
DTRAIN_HD bool is_comparison(Binary op) { return op >= Binary::kEq && op <= Binary::kGe; }

// ---- optimiser update rules (one element; PyTorch's formulas) and their *Step functors -------
struct SgdParams {
  float lr, momentum, dampening, weight_decay;
  bool nesterov, first_step;
};
/// p[i] -= lr * update, with momentum buffer buf (null without momentum). The variant flags are
/// template parameters so the CPU loop over one variant vectorises.
template <bool kMomentum, bool kNesterov, bool kFirstStep, class T>
DTRAIN_HD void sgd_update(T* p, const T* g, T* buf, int64_t i, const SgdParams& s) {
  T d = g[i] + T(s.weight_decay) * p[i];
  if constexpr (kMomentum) {
    const T b = kFirstStep ? d : T(s.momentum) * buf[i] + T(1 - s.dampening) * d;
    buf[i] = b;
    d = kNesterov ? d + T(s.momentum) * b : b;
  }
  p[i] -= T(s.lr) * d;
}

/// sgd_update over elements i, in the shape tensor/run.h runs (a variant per template flag set).
template <class T, bool kMomentum, bool kNesterov, bool kFirstStep>
struct SgdStep {
  T* p;
  const T* g;
  T* buf;  // null without momentum
  SgdParams s;
  DTRAIN_HD void operator()(int64_t i) const {
    sgd_update<kMomentum, kNesterov, kFirstStep>(p, g, buf, i, s);
  }
};

/// Calls f with std::integral_constant flags matching the SGD variant.
template <class F>
DTRAIN_HD void dispatch_sgd_variant(const SgdParams& s, F&& f) {
  using yes = std::true_type;
  using no = std::false_type;
  if (s.momentum == 0) return f(no{}, no{}, no{});
  if (s.nesterov) return s.first_step ? f(yes{}, yes{}, yes{}) : f(yes{}, yes{}, no{});
  return s.first_step ? f(yes{}, no{}, yes{}) : f(yes{}, no{}, no{});
}

struct AdamParams {
  float lr, beta1, beta2, eps, weight_decay;
  float bias_correction1, bias_correction2;  // 1 - beta^t
  bool decoupled;                            // AdamW: decay the weight, not the gradient
};
template <class T>
DTRAIN_HD void adam_update(T& p, T g, T& m, T& v, const AdamParams& s) {
  using std::sqrt;
  if (s.decoupled) {
    p = p * T(1 - s.lr * s.weight_decay);
  } else {
    g = g + T(s.weight_decay) * p;
  }
  m = T(s.beta1) * m + T(1 - s.beta1) * g;
  v = T(s.beta2) * v + T(1 - s.beta2) * g * g;
  const T denom = sqrt(v) / T(sqrt(s.bias_correction2)) + T(s.eps);
  p = p - T(s.lr / s.bias_correction1) * m / denom;
}

/// adam_update over elements i, in the shape tensor/run.h runs.
template <class T>
struct AdamStep {
  T* p;
  const T* g;
  T* m;
  T* v;
  AdamParams s;
  DTRAIN_HD void operator()(int64_t i) const { adam_update(p[i], g[i], m[i], v[i], s); }
};

struct RmspropParams {
  float lr, alpha, eps, weight_decay, momentum;
};
template <class T>
DTRAIN_HD void rmsprop_update(T& p, T g, T& sq, T& buf, const RmspropParams& s) {
  using std::sqrt;
  g = g + T(s.weight_decay) * p;
  sq = T(s.alpha) * sq + T(1 - s.alpha) * g * g;
  const T avg = sqrt(sq) + T(s.eps);
  if (s.momentum > 0) {
    buf = T(s.momentum) * buf + g / avg;
    p = p - T(s.lr) * buf;
  } else {
    p = p - T(s.lr) * g / avg;
  }
}

/// rmsprop_update over elements i, in the shape tensor/run.h runs.
template <class T>
struct RmspropStep {
  T* p;
  const T* g;
  T* sq;
  T* buf;  // read only when s.momentum > 0 (may be null otherwise)
  RmspropParams s;
  DTRAIN_HD void operator()(int64_t i) const {
    T scratch = 0;  // stands in for the momentum buffer, which rmsprop_update then leaves alone
    rmsprop_update(p[i], g[i], sq[i], s.momentum > 0 ? buf[i] : scratch, s);
  }
};

// ---- 16-bit floats (round to nearest even) ---------------------------------------------------
DTRAIN_HD uint32_t float_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
DTRAIN_HD float bits_float(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
DTRAIN_HD uint16_t float_to_bf16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
DTRAIN_HD float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

DTRAIN_HD float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (mant << 13));  // Inf/NaN
  if (exp == 0) {
    if (mant == 0) return bits_float(sign);
    // Subnormal: value = mant * 2^-24.
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 112) << 23) | (mant << 13));
}
DTRAIN_HD uint16_t float_to_half(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // overflow -> Inf
  if (abs < 0x38800000u) {                        // subnormal or zero in half
    const float af = bits_float(abs);
    // Round to nearest even multiple of 2^-24 (rint keeps ties to even).
    const float scaled = af * 16777216.0f;
    const uint32_t m = static_cast<uint32_t>(nearbyintf(scaled));
    return sign | static_cast<uint16_t>(m);
  }
  uint32_t mant = abs & 0x7fffffu;
  uint32_t exp = (abs >> 23) - 112;
  uint32_t half = (exp << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;
  return sign | static_cast<uint16_t>(half);
}

/// Element i of a buffer of any dtype, widened to double (int64 beyond 2^53 loses precision).
DTRAIN_HD double load_element(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kFloat32:
      return static_cast<const float*>(p)[i];
    case DType::kFloat64:
      return static_cast<const double*>(p)[i];
    case DType::kFloat16:
      return half_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::kBFloat16:
      return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::kInt64:
      return static_cast<double>(static_cast<const int64_t*>(p)[i]);
    case DType::kInt32:
      return static_cast<const int32_t*>(p)[i];
    case DType::kUInt8:
      return static_cast<const uint8_t*>(p)[i];
    case DType::kBool:
      return static_cast<const bool*>(p)[i] ? 1.0 : 0.0;
  }
  return 0;
}

/// Stores v as element i of a buffer of dtype t (16-bit floats round to nearest even).
DTRAIN_HD void store_element(void* p, DType t, int64_t i, double v) {
  switch (t) {
    case DType::kFloat32:
      static_cast<float*>(p)[i] = static_cast<float>(v);
      return;
    case DType::kFloat64:
      static_cast<double*>(p)[i] = v;
      return;
    case DType::kFloat16:
      static_cast<uint16_t*>(p)[i] = float_to_half(static_cast<float>(v));
      return;
    case DType::kBFloat16:
      static_cast<uint16_t*>(p)[i] = float_to_bf16(static_cast<float>(v));
      return;
    case DType::kInt64:
      static_cast<int64_t*>(p)[i] = static_cast<int64_t>(v);
      return;
    case DType::kInt32:
      static_cast<int32_t*>(p)[i] = static_cast<int32_t>(v);
      return;
    case DType::kUInt8:
      static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(v);
      return;
    case DType::kBool:
      static_cast<bool*>(p)[i] = v != 0;
      return;
  }
}

// ---- Philox4x32-10 ---------------------------------------------------------------------------
struct Philox4 {
  uint32_t v[4];
};
DTRAIN_HD uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t& hi) {
  const uint64_t prod = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(prod >> 32);
  return static_cast<uint32_t>(prod);
}
/// Four 32-bit random words for (seed, stream, counter).
DTRAIN_HD Philox4 philox(uint64_t seed, uint64_t stream, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = static_cast<uint32_t>(stream), c3 = static_cast<uint32_t>(stream >> 32);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo(0xD2511F53u, c0, hi0);
    const uint32_t lo1 = mulhilo(0xCD9E8D57u, c2, hi1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}
/// Uniform in [0, 1) with 24 random bits (exactly representable in float).
DTRAIN_HD float uint_to_unit_float(uint32_t x) { return (x >> 8) * (1.0f / 16777216.0f); }
DTRAIN_HD double uint_to_unit_double(uint32_t hi, uint32_t lo) {
  return ((static_cast<uint64_t>(hi) << 21) ^ (lo >> 11)) * (1.0 / 9007199254740992.0);
}

/// Element i of a uniform draw starting at block `offset`.
DTRAIN_HD double philox_uniform(uint64_t seed, uint64_t stream, uint64_t offset, uint64_t i) {
  const Philox4 r = philox(seed, stream, offset + i / 4);
  return uint_to_unit_float(r.v[i % 4]);
}
/// Element i of a standard-normal draw: Box-Muller on the pair (2k, 2k+1) of one block.
DTRAIN_HD double philox_normal(uint64_t seed, uint64_t stream, uint64_t offset, uint64_t i) {
  const Philox4 r = philox(seed, stream, offset + i / 2);
  const int lane = static_cast<int>(i % 2);
  const double u1 = 1.0 - uint_to_unit_double(r.v[0], r.v[1]);  // (0, 1]: log is finite
  const double u2 = uint_to_unit_double(r.v[2], r.v[3]);
  const double radius = std::sqrt(-2.0 * std::log(u1));
  const double angle = 6.283185307179586476925 * u2;
  return lane == 0 ? radius * std::cos(angle) : radius * std::sin(angle);
}

}  // namespace dtrain::kernels

namespace dtrain::kernels {

/// Maps a flat output index to the flat offsets of two broadcast operands (stride 0 on broadcast
/// dims). Plain data so it can be passed to a CUDA kernel by value.
struct BroadcastIndex {
  static constexpr int kMaxDims = 8;
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t a_stride[kMaxDims] = {};
  int64_t b_stride[kMaxDims] = {};

  DTRAIN_HD void offsets(int64_t i, int64_t& a, int64_t& b) const {
    a = 0;
    b = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      const int64_t idx = i % shape[d];
      i /= shape[d];
      a += idx * a_stride[d];
      b += idx * b_stride[d];
    }
  }
};

/// The same map with size-1 dims dropped and neighbouring dims merged where both operands step
/// through them alike (equal shapes become one dim of stride 1, a scalar operand stride 0): the
/// same offsets for every i with fewer divisions. Host-side; the CUDA binary and gather use it.
inline BroadcastIndex coalesce(const BroadcastIndex& in) {
  BroadcastIndex out;
  out.ndim = 0;
  for (int d = 0; d < in.ndim; ++d) {
    if (in.shape[d] == 1) continue;
    const int last = out.ndim - 1;
    if (last >= 0 && out.a_stride[last] == in.a_stride[d] * in.shape[d] &&
        out.b_stride[last] == in.b_stride[d] * in.shape[d]) {
      out.shape[last] *= in.shape[d];
      out.a_stride[last] = in.a_stride[d];
      out.b_stride[last] = in.b_stride[d];
      continue;
    }
    out.shape[out.ndim] = in.shape[d];
    out.a_stride[out.ndim] = in.a_stride[d];
    out.b_stride[out.ndim] = in.b_stride[d];
    ++out.ndim;
  }
  return out;
}

/// Whether every index and offset of a coalesced map over n elements fits in 31 bits.
inline bool fits_32_bits(const BroadcastIndex& index, int64_t n) {
  constexpr int64_t kLimit = int64_t{1} << 31;
  int64_t last_a = 0, last_b = 0;  // the largest offsets
  for (int d = 0; d < index.ndim; ++d) {
    last_a += index.a_stride[d] * (index.shape[d] - 1);
    last_b += index.b_stride[d] * (index.shape[d] - 1);
  }
  return n < kLimit && last_a < kLimit && last_b < kLimit;
}

}  // namespace dtrain::kernels
