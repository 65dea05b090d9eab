// Elementwise ops (ops::unary, binary, binary_, where, axpy_, scale_, expand) against std::
// formulas evaluated in double, including NumPy broadcasting worked out by index math.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

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

}  // namespace
}  // namespace dtrain
