// Elementwise ops (ops::unary, binary, binary_, where, axpy_, scale_, expand) against std::
// formulas evaluated in double, including NumPy broadcasting worked out by index math.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <random>

#include "dtrain/tensor/cpu/vec_math.h"
#include "dtrain/tensor/ops.h"
#include "reference.h"
#include "testutil.h"

namespace dtrain {
namespace {

using kernels::Binary;
using kernels::Unary;
using testref::random_tensor;
using testref::tensor_of;
using testutil::all_close;

/// Applies f to every element of x in double and returns a tensor of x's shape and dtype.
Tensor map_ref(const Tensor& x, const std::function<double(double)>& f) {
  std::vector<double> v = x.to_vector<double>();
  for (double& e : v) e = f(e);
  return tensor_of(v, x.shape(), x.dtype());
}

/// out[i] = f(a[.], b[.]) under broadcasting, computed in double; shape given by the caller.
std::vector<double> broadcast_ref(const Tensor& a, const Tensor& b, const Shape& out_shape,
                                  const std::function<double(double, double)>& f) {
  const auto va = a.to_vector<double>(), vb = b.to_vector<double>();
  std::vector<double> out(shape_numel(out_shape));
  for (int64_t i = 0; i < static_cast<int64_t>(out.size()); ++i) {
    const auto idx = testref::unravel(i, out_shape);
    out[i] = f(va[testref::broadcast_source(idx, a.shape())],
               vb[testref::broadcast_source(idx, b.shape())]);
  }
  return out;
}

double gelu(double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }
double sigmoid(double x) { return 1 / (1 + std::exp(-x)); }

struct UnaryCase {
  const char* name;
  Unary op;
  kernels::UnaryParams params;
  double lo, hi;  // input domain
  std::function<double(double)> ref;
};

std::vector<UnaryCase> unary_cases() {
  return {
      {"neg", Unary::kNeg, {}, -3, 3, [](double x) { return -x; }},
      {"exp", Unary::kExp, {}, -5, 5, [](double x) { return std::exp(x); }},
      {"log", Unary::kLog, {}, 0.01, 10, [](double x) { return std::log(x); }},
      {"sqrt", Unary::kSqrt, {}, 0, 10, [](double x) { return std::sqrt(x); }},
      {"abs", Unary::kAbs, {}, -3, 3, [](double x) { return std::fabs(x); }},
      {"relu", Unary::kRelu, {}, -3, 3, [](double x) { return x > 0 ? x : 0.0; }},
      {"gelu", Unary::kGelu, {}, -4, 4, gelu},
      {"tanh", Unary::kTanh, {}, -4, 4, [](double x) { return std::tanh(x); }},
      {"sigmoid", Unary::kSigmoid, {}, -8, 8, sigmoid},
      {"pow 2.5", Unary::kPow, {2.5, 0, 0}, 0, 4, [](double x) { return std::pow(x, 2.5); }},
      {"pow 3", Unary::kPow, {3, 0, 0}, -2, 2, [](double x) { return x * x * x; }},
      {"clamp",
       Unary::kClamp,
       {0, -0.5, 0.25},
       -1,
       1,
       [](double x) { return std::min(std::max(x, -0.5), 0.25); }},
      {"add scalar", Unary::kAddScalar, {1.75, 0, 0}, -3, 3, [](double x) { return x + 1.75; }},
      {"mul scalar", Unary::kMulScalar, {-2.5, 0, 0}, -3, 3, [](double x) { return x * -2.5; }},
      {"rsqrt", Unary::kRsqrt, {}, 0.01, 10, [](double x) { return 1 / std::sqrt(x); }},
      {"square", Unary::kSquare, {}, -3, 3, [](double x) { return x * x; }},
      {"sign", Unary::kSign, {}, -3, 3, [](double x) { return double((x > 0) - (x < 0)); }},
  };
}

TEST(Unary, EveryOpMatchesStdFormulaFloat32) {
  uint64_t seed = 1;
  for (const auto& c : unary_cases()) {
    // 40000 elements: above the parallel grain, so the threaded loop runs too.
    Tensor x = random_tensor({200, 200}, seed++, c.lo, c.hi);
    Tensor y = ops::unary(c.op, x, c.params);
    EXPECT_EQ(y.dtype(), DType::kFloat32) << c.name;
    EXPECT_TRUE(all_close(y, map_ref(x, c.ref), 1e-5, 1e-6)) << c.name;
  }
}

TEST(Unary, EveryOpMatchesStdFormulaFloat64) {
  uint64_t seed = 100;
  for (const auto& c : unary_cases()) {
    Tensor x = random_tensor({3, 37}, seed++, c.lo, c.hi, DType::kFloat64);
    Tensor y = ops::unary(c.op, x, c.params);
    EXPECT_EQ(y.dtype(), DType::kFloat64) << c.name;
    EXPECT_TRUE(all_close(y, map_ref(x, c.ref), 1e-13, 1e-14)) << c.name;
  }
}

TEST(Unary, SignAndReluAtZeroAndIntegerInputs) {
  Tensor x = tensor_of({-2, 0, 3}, {3});
  EXPECT_EQ(ops::unary(Unary::kSign, x).to_vector<float>(), (std::vector<float>{-1, 0, 1}));
  EXPECT_EQ(ops::unary(Unary::kRelu, x).to_vector<float>(), (std::vector<float>{0, 0, 3}));
  // Sign-like ops also run on integers.
  Tensor xi = from_vector(std::vector<int64_t>{-5, 0, 7});
  EXPECT_EQ(ops::unary(Unary::kAbs, xi).to_vector<int64_t>(), (std::vector<int64_t>{5, 0, 7}));
  EXPECT_EQ(ops::unary(Unary::kNeg, xi).to_vector<int64_t>(), (std::vector<int64_t>{5, 0, -7}));
  EXPECT_EQ(ops::unary(Unary::kSquare, xi).to_vector<int64_t>(), (std::vector<int64_t>{25, 0, 49}));
  EXPECT_EQ(ops::unary(Unary::kNeg, xi).dtype(), DType::kInt64);
}

struct BinaryCase {
  const char* name;
  Binary op;
  std::function<double(double, double)> ref;
};

std::vector<BinaryCase> arithmetic_cases() {
  return {
      {"add", Binary::kAdd, [](double a, double b) { return a + b; }},
      {"sub", Binary::kSub, [](double a, double b) { return a - b; }},
      {"mul", Binary::kMul, [](double a, double b) { return a * b; }},
      {"div", Binary::kDiv, [](double a, double b) { return a / b; }},
      {"pow", Binary::kPow, [](double a, double b) { return std::pow(a, b); }},
      {"max", Binary::kMax, [](double a, double b) { return std::max(a, b); }},
      {"min", Binary::kMin, [](double a, double b) { return std::min(a, b); }},
  };
}

std::vector<BinaryCase> comparison_cases() {
  return {
      {"eq", Binary::kEq, [](double a, double b) { return double(a == b); }},
      {"ne", Binary::kNe, [](double a, double b) { return double(a != b); }},
      {"lt", Binary::kLt, [](double a, double b) { return double(a < b); }},
      {"le", Binary::kLe, [](double a, double b) { return double(a <= b); }},
      {"gt", Binary::kGt, [](double a, double b) { return double(a > b); }},
      {"ge", Binary::kGe, [](double a, double b) { return double(a >= b); }},
  };
}

TEST(Binary, ArithmeticMatchesStdFormulaOnEqualShapes) {
  for (DType dtype : {DType::kFloat32, DType::kFloat64}) {
    // Positive operands keep pow real; 50000 elements exercise the threaded loop.
    Tensor a = random_tensor({250, 200}, 11, 0.1, 3, dtype);
    Tensor b = random_tensor({250, 200}, 12, 0.1, 3, dtype);
    const double rtol = dtype == DType::kFloat32 ? 1e-5 : 1e-13;
    for (const auto& c : arithmetic_cases()) {
      Tensor out = ops::binary(c.op, a, b);
      EXPECT_EQ(out.dtype(), dtype) << c.name;
      EXPECT_TRUE(all_close(out, tensor_of(broadcast_ref(a, b, a.shape(), c.ref), a.shape(), dtype),
                            rtol, 0))
          << c.name << " " << dtype_name(dtype);
    }
  }
}

TEST(Binary, ComparisonsReturnBoolAndHandleEquality) {
  // Small integer values make equal pairs common, so eq/le/ge see both outcomes.
  Tensor a = ops::unary(Unary::kClamp, random_tensor({6, 50}, 21, -3, 3), {0, -2, 2});
  Tensor b = ops::unary(Unary::kClamp, random_tensor({6, 50}, 22, -3, 3), {0, -2, 2});
  a = to_dtype(to_dtype(a, DType::kInt64), DType::kFloat32);  // truncate to integers
  b = to_dtype(to_dtype(b, DType::kInt64), DType::kFloat32);
  int64_t equal_pairs = 0;
  const auto va = a.to_vector<float>(), vb = b.to_vector<float>();
  for (size_t i = 0; i < va.size(); ++i) equal_pairs += va[i] == vb[i];
  ASSERT_GT(equal_pairs, 10);
  for (const auto& c : comparison_cases()) {
    Tensor out = ops::binary(c.op, a, b);
    EXPECT_EQ(out.dtype(), DType::kBool) << c.name;
    const auto expected = broadcast_ref(a, b, a.shape(), c.ref);
    EXPECT_EQ(out.to_vector<double>(), expected) << c.name;
  }
  // Broadcast comparison: row against column.
  Tensor row = tensor_of({1, 2, 3}, {1, 3}), col = tensor_of({2, 3}, {2, 1});
  Tensor lt = ops::binary(Binary::kLt, row, col);
  EXPECT_EQ(lt.dtype(), DType::kBool);
  EXPECT_EQ(lt.shape(), (Shape{2, 3}));
  EXPECT_EQ(lt.to_vector<double>(), (std::vector<double>{1, 0, 0, 1, 1, 0}));
}

TEST(Binary, BackwardHelpersMatchDerivatives) {
  Tensor x = random_tensor({4, 33}, 31, -3, 3, DType::kFloat64);
  Tensor g = random_tensor({4, 33}, 32, -2, 2, DType::kFloat64);
  const auto check = [&](Binary op, const Tensor& a, const std::function<double(double, double)>& f,
                         const char* name, double tol = 1e-12) {
    Tensor out = ops::binary(op, a, g);
    EXPECT_TRUE(all_close(
        out, tensor_of(broadcast_ref(a, g, a.shape(), f), a.shape(), DType::kFloat64), tol, tol))
        << name;
  };
  check(
      Binary::kReluBackward, x, [](double a, double b) { return a > 0 ? b : 0.0; }, "relu");
  // GELU derivative by central differences of the double formula.
  check(
      Binary::kGeluBackward, x,
      [](double a, double b) {
        const double h = 1e-5;
        return b * (gelu(a + h) - gelu(a - h)) / (2 * h);
      },
      "gelu", /*tol=*/1e-8);  // central differences are accurate to ~h^2
  // The tanh and sigmoid helpers take the forward output.
  Tensor t = ops::unary(Unary::kTanh, x);
  check(
      Binary::kTanhBackward, t, [](double y, double b) { return b * (1 - y * y); }, "tanh");
  Tensor s = ops::unary(Unary::kSigmoid, x);
  check(
      Binary::kSigmoidBackward, s, [](double y, double b) { return b * y * (1 - y); }, "sigmoid");
}

struct BroadcastCase {
  Shape a, b, out;
};

TEST(Binary, BroadcastingMatchesIndexMath) {
  const std::vector<BroadcastCase> cases = {
      {{3, 1, 4}, {1, 5, 4}, {3, 5, 4}},
      {{1, 5, 4}, {3, 1, 4}, {3, 5, 4}},
      {{}, {2, 3}, {2, 3}},  // scalar on the left
      {{2, 3}, {}, {2, 3}},  // scalar on the right
      {{6, 7}, {1}, {6, 7}},
      {{6, 7}, {1, 1}, {6, 7}},
      {{8, 5}, {5}, {8, 5}},  // row bias [N, C] + [C]
      {{5}, {8, 5}, {8, 5}},
      {{8, 5}, {8, 1}, {8, 5}},     // column
      {{4}, {2, 3, 4}, {2, 3, 4}},  // rank mismatch
      {{2, 3, 1}, {3, 5}, {2, 3, 5}},
      {{1}, {7}, {7}},
      {{2, 1, 3, 1}, {1, 4, 1, 5}, {2, 4, 3, 5}},
      {{8, 1, 1024}, {1, 8, 1024}, {8, 8, 1024}},  // large: threaded row loop
      {{3, 0, 2}, {1, 2}, {3, 0, 2}},              // empty
  };
  uint64_t seed = 40;
  for (const auto& c : cases) {
    Tensor a = random_tensor(c.a, seed++, 0.5, 2);
    Tensor b = random_tensor(c.b, seed++, 0.5, 2);
    for (const auto& bc : arithmetic_cases()) {
      Tensor out = ops::binary(bc.op, a, b);
      ASSERT_EQ(out.shape(), c.out) << bc.name << " " << shape_str(c.a) << " " << shape_str(c.b);
      EXPECT_TRUE(all_close(out, tensor_of(broadcast_ref(a, b, c.out, bc.ref), c.out), 1e-5, 0))
          << bc.name << " " << shape_str(c.a) << " with " << shape_str(c.b);
    }
    EXPECT_EQ(ops::broadcast_shapes(c.a, c.b, "test"), c.out);
  }
}

TEST(Binary, IntegerArithmeticIsExact) {
  Tensor a = from_vector(std::vector<int64_t>{1LL << 40, -7, 9, 100}, {2, 2});
  Tensor b = from_vector(std::vector<int64_t>{3, 2}, {2});
  EXPECT_EQ(ops::binary(Binary::kAdd, a, b).to_vector<int64_t>(),
            (std::vector<int64_t>{(1LL << 40) + 3, -5, 12, 102}));
  EXPECT_EQ(ops::binary(Binary::kMul, a, b).to_vector<int64_t>(),
            (std::vector<int64_t>{3LL << 40, -14, 27, 200}));
  EXPECT_EQ(ops::binary(Binary::kDiv, a, b).to_vector<int64_t>(),
            (std::vector<int64_t>{(1LL << 40) / 3, -3, 3, 50}));
}

TEST(Binary, InPlaceMatchesOutOfPlace) {
  for (const auto& c : arithmetic_cases()) {
    for (const Shape& bs : {Shape{4, 5}, Shape{5}, Shape{4, 1}, Shape{}, Shape{1, 1}}) {
      Tensor a = random_tensor({4, 5}, 50, 0.5, 2);
      Tensor b = random_tensor(bs, 51, 0.5, 2);
      Tensor expected = tensor_of(broadcast_ref(a, b, a.shape(), c.ref), a.shape());
      Tensor out = a.clone();
      void* before = out.data_ptr();
      ops::binary_(c.op, out, b);
      EXPECT_EQ(out.data_ptr(), before);
      EXPECT_TRUE(all_close(out, expected, 1e-5, 0)) << c.name << " with " << shape_str(bs);
    }
  }
  // The operand may alias the destination.
  Tensor t = tensor_of({1, 2, 3}, {3});
  ops::binary_(Binary::kMul, t, t);
  EXPECT_EQ(t.to_vector<float>(), (std::vector<float>{1, 4, 9}));
}

TEST(Where, SelectsWithBroadcasting) {
  Tensor cond = from_vector(std::vector<bool>{true, false, true}, {3, 1});
  Tensor a = random_tensor({1, 4}, 60);
  Tensor b = scalar_tensor(-9.0);
  Tensor out = ops::where(cond, a, b);
  ASSERT_EQ(out.shape(), (Shape{3, 4}));
  const auto va = a.to_vector<float>();
  const auto vo = out.to_vector<float>();
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 4; ++j)
      EXPECT_EQ(vo[i * 4 + j], i == 1 ? -9.f : va[j]) << i << "," << j;

  // Full-size operands and a condition computed by a comparison.
  Tensor x = random_tensor({300, 200}, 61), y = random_tensor({300, 200}, 62);
  Tensor m = ops::where(ops::binary(Binary::kGt, x, y), x, y);
  EXPECT_TRUE(testutil::bit_equal(m, ops::binary(Binary::kMax, x, y)));
}

TEST(Axpy, AddsScaledInPlace) {
  for (DType dtype : {DType::kFloat32, DType::kFloat64}) {
    Tensor y = random_tensor({300, 150}, 70, -1, 1, dtype);
    Tensor x = random_tensor({300, 150}, 71, -1, 1, dtype);
    const auto vy = y.to_vector<double>(), vx = x.to_vector<double>();
    std::vector<double> expected(vy.size());
    for (size_t i = 0; i < vy.size(); ++i) expected[i] = vy[i] - 0.375 * vx[i];
    ops::axpy_(y, -0.375, x);
    EXPECT_TRUE(all_close(y, tensor_of(expected, y.shape(), dtype), 1e-6, 1e-7));
  }
}

TEST(Scale, MultipliesInPlace) {
  for (DType dtype : {DType::kFloat32, DType::kFloat64}) {
    Tensor t = random_tensor({100, 500}, 80, -1, 1, dtype);
    Tensor expected = map_ref(t, [](double v) { return v * 1.5; });  // exact in binary
    ops::scale_(t, 1.5);
    EXPECT_TRUE(testutil::bit_equal(t, expected)) << dtype_name(dtype);
  }
}

TEST(Expand, CopiesBroadcastValues) {
  const std::vector<std::pair<Shape, Shape>> cases = {
      {{3, 1}, {2, 3, 4}},
      {{4}, {3, 4}},
      {{}, {2, 2}},
      {{1}, {3}},
      {{2, 1, 3}, {2, 5, 3}},
      {{1, 1}, {4, 1}},
      {{5, 1}, {5, 7000}},  // last: threaded
      {{2, 3}, {2, 3}},
      // trailing broadcast dims (the backward of global average pooling): runs filled per element
      {{2, 3, 1, 1}, {2, 3, 4, 5}},
      {{128, 64, 1, 1}, {128, 64, 7, 7}},
      {{1, 1}, {3, 2}},
      {{3, 1}, {3, 4}},
      {{1, 3, 1}, {2, 3, 4}}};
  uint64_t seed = 90;
  for (const auto& [in, out] : cases) {
    for (DType dtype : {DType::kFloat32, DType::kFloat64, DType::kInt64}) {
      Tensor x = to_dtype(random_tensor(in, seed++, -100, 100), dtype);
      Tensor e = ops::expand(x, out);
      ASSERT_EQ(e.shape(), out);
      EXPECT_EQ(e.dtype(), dtype);
      EXPECT_FALSE(e.shares_storage(x));
      const auto vx = x.to_vector<double>(), ve = e.to_vector<double>();
      for (int64_t i = 0; i < e.numel(); ++i) {
        ASSERT_EQ(ve[i], vx[testref::broadcast_source(testref::unravel(i, out), in)])
            << shape_str(in) << " -> " << shape_str(out) << " at " << i;
      }
    }
  }
}

TEST(AllFinite, DetectsNanAndInf) {
  Tensor t = random_tensor({1000}, 95);
  EXPECT_TRUE(ops::all_finite(t));
  t.data<float>()[500] = std::numeric_limits<float>::infinity();
  EXPECT_FALSE(ops::all_finite(t));
  t.data<float>()[500] = std::nanf("");
  EXPECT_FALSE(ops::all_finite(t));
  EXPECT_TRUE(ops::all_finite(from_vector(std::vector<int64_t>{1, 2})));
}

// The float32 fast paths (tensor/cpu/vec_math.h) against double-precision std:: references.

constexpr float kInf = std::numeric_limits<float>::infinity();

/// Counts the entries outside |got - ref| <= abs_tol + rel_tol |ref| (NaN must match NaN, an
/// infinite reference the same infinity) and describes the worst one.
struct Mismatches {
  int64_t count = 0;
  double worst = 0;
  std::string where;
  void check(double x, double got, double ref, double rel_tol, double abs_tol) {
    bool ok;
    double excess = 0;
    if (std::isnan(ref) || std::isinf(ref)) {
      ok = std::isnan(ref) ? std::isnan(got) : got == ref;
      excess = ok ? 0 : 1;
    } else {
      const double tol = abs_tol + rel_tol * std::fabs(ref);
      excess = std::isnan(got) ? 1e300 : std::fabs(got - ref) / tol;
      ok = excess <= 1;
    }
    if (ok) return;
    ++count;
    if (excess > worst || where.empty()) {
      worst = excess;
      where = "x " + std::to_string(x) + ": got " + std::to_string(got) + ", want " +
              std::to_string(ref);
    }
  }
};

/// A dense grid over [lo, hi] with a length that is not a multiple of 16, then `extra`.
std::vector<float> grid_with(double lo, double hi, int64_t n, const std::vector<float>& extra) {
  std::vector<float> v;
  for (int64_t i = 0; i < n; ++i) v.push_back(static_cast<float>(lo + (hi - lo) * i / (n - 1)));
  v.insert(v.end(), extra.begin(), extra.end());
  return v;
}

TEST(VecMath, ExpMatchesDoubleOverWideRange) {
  const std::vector<float> x =
      grid_with(-120, 100, 30011,
                {-kInf, kInf, std::nanf(""), 0.f, -0.f, 1e-30f, -1e-30f, 88.7f, 88.75f, 89.f, 1e30f,
                 -87.3f, -100.f, -103.9f, -104.f, -1e30f, 0.34657359f, -0.34657359f, 0.3466f});
  std::vector<float> y(x.size());
  cpu::exp_f32(x.data(), y.data(), static_cast<int64_t>(x.size()));
  Mismatches bad;
  for (size_t i = 0; i < x.size(); ++i) {
    double ref = std::exp(static_cast<double>(x[i]));
    // Beyond the largest float the result must be inf; skip the one-ulp band where the rounding
    // of a double reference just below FLT_MAX is not decided within 2e-6.
    if (ref > std::numeric_limits<float>::max() * (1 + 2e-6)) ref = kInf;
    if (!std::isinf(ref) && ref > std::numeric_limits<float>::max() * (1 - 2e-6)) continue;
    // 2e-6 relative; 3e-45 absolute is two float denormal steps, for results below 1.2e-38.
    bad.check(x[i], y[i], ref, 2e-6, 3e-45);
  }
  EXPECT_EQ(bad.count, 0) << bad.where;
  EXPECT_EQ(y[x.size() - 19], 0.f);  // exp(-inf) is exactly 0
  EXPECT_EQ(y[x.size() - 4], 0.f);   // and so is exp(-1e30)
}

TEST(VecMath, ErfMatchesDoubleAndIsOdd) {
  const std::vector<float> x =
      grid_with(-12, 12, 40009,
                {-kInf, kInf, std::nanf(""), 0.f, 1e-38f, 1e-20f, 1e-3f, -1e-3f, 0.99999994f, 1.f,
                 1.0000001f, 3.9999998f, 4.f, 4.0000005f, 1e30f});
  std::vector<float> neg(x.size()), y(x.size()), y_neg(x.size());
  for (size_t i = 0; i < x.size(); ++i) neg[i] = -x[i];
  cpu::erf_f32(x.data(), y.data(), static_cast<int64_t>(x.size()));
  cpu::erf_f32(neg.data(), y_neg.data(), static_cast<int64_t>(x.size()));
  Mismatches bad;
  int64_t not_odd = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    bad.check(x[i], y[i], std::erf(static_cast<double>(x[i])), 2e-6, 1e-7);
    if (!std::isnan(x[i]) && y_neg[i] != -y[i]) ++not_odd;
    if (!std::isnan(x[i])) {
      EXPECT_LE(std::fabs(y[i]), 1.f) << x[i];
    }
  }
  EXPECT_EQ(bad.count, 0) << bad.where;
  EXPECT_EQ(not_odd, 0);
  EXPECT_EQ(y[x.size() - 15], -1.f);  // saturates at -inf and inf
  EXPECT_EQ(y[x.size() - 14], 1.f);
}

double normal_cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }
double normal_pdf(double x) { return std::exp(-0.5 * x * x) / std::sqrt(2 * M_PI); }

TEST(Unary, GeluFloat32MatchesDoubleOverWideRange) {
  // 60013 elements: above the parallel grain and not a multiple of 16.
  const std::vector<float> x = grid_with(-30, 30, 60000,
                                         {0.f, -0.f, 1e-30f, -1e-30f, 1e30f, -1e30f, -5.6f, -5.7f,
                                          1.4142135f, -1.4142135f, 5.6568542f, -5.6568542f, 1e-3f});
  Tensor t = tensor_of(std::vector<double>(x.begin(), x.end()), {static_cast<int64_t>(x.size())});
  const std::vector<float> y = ops::unary(Unary::kGelu, t).to_vector<float>();
  Mismatches bad;
  for (size_t i = 0; i < x.size(); ++i) {
    const double xd = x[i];
    bad.check(xd, y[i], xd * normal_cdf(xd), 2e-6, 1e-7);
  }
  EXPECT_EQ(bad.count, 0) << bad.where;
}

TEST(Binary, GeluBackwardFloat32MatchesDoubleOverWideRange) {
  const std::vector<float> x = grid_with(-30, 30, 50000,
                                         {0.f, 1e-30f, -1e-30f, -0.7518f, 1.4142135f, -1.4142135f,
                                          5.6568542f, -5.6568542f, 1e30f, -1e30f, 3.f});
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> unit(-1.f, 1.f);
  std::vector<double> xv(x.begin(), x.end()), gv(x.size());
  for (double& g : gv) g = unit(rng);
  const Shape shape{static_cast<int64_t>(x.size())};
  const std::vector<float> dx =
      ops::binary(Binary::kGeluBackward, tensor_of(xv, shape), tensor_of(gv, shape))
          .to_vector<float>();
  Mismatches bad;
  for (size_t i = 0; i < x.size(); ++i) {
    const double a = xv[i];
    const double pdf_term = std::isinf(a * a) ? 0 : a * normal_pdf(a);  // x phi(x) -> 0
    bad.check(a, dx[i], gv[i] * (normal_cdf(a) + pdf_term), 2e-6, 1e-7);
  }
  EXPECT_EQ(bad.count, 0) << bad.where;
}

/// Rows of scale * uniform(-1, 1) with a causal mask (-inf after column r % cols) on every other
/// row and row 2 shifted by 1e4.
std::vector<double> masked_rows(int64_t rows, int64_t cols, double scale, uint64_t seed) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::uniform_real_distribution<double> unit(-1, 1);
  std::vector<double> v(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      double e = static_cast<float>(scale * unit(rng));
      if (r % 2 == 1 && c > r % cols) e = -kInf;
      if (r == 2) e = static_cast<float>(e + 1e4);  // the float input the op sees
      v[r * cols + c] = e;
    }
  }
  return v;
}

TEST(Softmax, Float32LastDimMatchesDoubleWithMaskedEntries) {
  for (const int64_t cols : {1, 5, 16, 17, 33, 100, 257}) {
    const int64_t rows = 150;  // above the 64-line grain, so the threaded split runs
    const std::vector<double> xv = masked_rows(rows, cols, 20, cols);
    Tensor x = tensor_of(xv, {rows, cols});
    const std::vector<float> y = ops::softmax(x, -1).to_vector<float>();
    const std::vector<float> ly = ops::log_softmax(x, 1).to_vector<float>();
    Mismatches bad, bad_log;
    int64_t masked_nonzero = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const double* row = xv.data() + r * cols;
      double mx = row[0];
      for (int64_t c = 1; c < cols; ++c) mx = std::max(mx, row[c]);
      double sum = 0;
      for (int64_t c = 0; c < cols; ++c) sum += std::exp(row[c] - mx);
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t i = r * cols + c;
        if (std::isinf(row[c])) {
          masked_nonzero += y[i] != 0.f || ly[i] != -kInf;
          continue;
        }
        bad.check(row[c], y[i], std::exp(row[c] - mx) / sum, 2e-6, 1e-7);
        // log(sum) of a float sum near 1 is good to its ulp, 1.2e-7: absolute 3e-7.
        bad_log.check(row[c], ly[i], row[c] - mx - std::log(sum), 2e-6, 3e-7);
      }
    }
    EXPECT_EQ(bad.count, 0) << "cols " << cols << ": " << bad.where;
    EXPECT_EQ(bad_log.count, 0) << "cols " << cols << ": " << bad_log.where;
    EXPECT_EQ(masked_nonzero, 0) << "cols " << cols;
  }
}

TEST(Softmax, Float32RowOfAllMinusInfGivesNanLikeFloat64) {
  for (const int64_t cols : {3, 16, 21}) {
    std::vector<double> xv(2 * cols, -kInf);
    for (int64_t c = 0; c < cols; ++c) xv[cols + c] = 0.5 * c;
    for (const DType dtype : {DType::kFloat32, DType::kFloat64}) {
      Tensor x = tensor_of(xv, {2, cols}, dtype);
      const std::vector<double> y = ops::softmax(x, 1).to_vector<double>();
      const std::vector<double> ly = ops::log_softmax(x, 1).to_vector<double>();
      for (int64_t c = 0; c < cols; ++c) {
        EXPECT_TRUE(std::isnan(y[c]) && std::isnan(ly[c])) << cols << " " << c;
        EXPECT_TRUE(std::isfinite(y[cols + c]) && std::isfinite(ly[cols + c])) << cols << " " << c;
      }
    }
  }
}

TEST(Softmax, Float32LastDimBackwardMatchesDouble) {
  for (const int64_t cols : {1, 7, 16, 31, 129}) {
    const int64_t rows = 130;
    const std::vector<double> xv = masked_rows(rows, cols, 5, 100 + cols);
    std::mt19937 rng(static_cast<uint32_t>(cols));
    std::uniform_real_distribution<float> unit(-1.f, 1.f);
    std::vector<double> gv(rows * cols);
    for (double& g : gv) g = unit(rng);
    Tensor x = tensor_of(xv, {rows, cols}), gy = tensor_of(gv, {rows, cols});
    Tensor y = ops::softmax(x, 1), ly = ops::log_softmax(x, 1);
    const std::vector<double> yv = y.to_vector<double>(), lyv = ly.to_vector<double>();
    const std::vector<float> dx = ops::softmax_backward(y, gy, 1).to_vector<float>();
    const std::vector<float> ldx = ops::log_softmax_backward(ly, gy, 1).to_vector<float>();
    Mismatches bad, bad_log;
    for (int64_t r = 0; r < rows; ++r) {
      double dot = 0, gsum = 0;
      for (int64_t c = 0; c < cols; ++c) {
        dot += gv[r * cols + c] * yv[r * cols + c];
        gsum += gv[r * cols + c];
      }
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t i = r * cols + c;
        bad.check(yv[i], dx[i], yv[i] * (gv[i] - dot), 2e-6, 1e-7);
        // gsum of up to 129 float gradients carries ~1e-6 of rounding; exp(ly) <= 1 scales it.
        bad_log.check(lyv[i], ldx[i], gv[i] - std::exp(lyv[i]) * gsum, 2e-6, 2e-6);
      }
    }
    EXPECT_EQ(bad.count, 0) << "cols " << cols << ": " << bad.where;
    EXPECT_EQ(bad_log.count, 0) << "cols " << cols << ": " << bad_log.where;
  }
}

}  // namespace
}  // namespace dtrain
