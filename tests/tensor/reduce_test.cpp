// Reductions (sum, mean, max/argmax, sum_to) against naive double loops, and their promise of
// bit-identical results whatever the thread count.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "dtrain/tensor/ops.h"
#include "reference.h"
#include "testutil.h"

namespace dtrain {
namespace {

using testref::random_tensor;
using testref::tensor_of;
using testutil::all_close;
using testutil::bit_equal;

struct Reduced {
  std::vector<double> values;
  Shape shape;
};

/// Sum over `dims` (already non-negative) of x, accumulated in double, in the layout that
/// keepdim asks for.
Reduced naive_sum(const Tensor& x, const std::set<int64_t>& dims, bool keepdim) {
  const Shape& in = x.shape();
  Shape kept;  // keepdim layout
  for (int64_t d = 0; d < x.dim(); ++d) kept.push_back(dims.count(d) ? 1 : in[d]);
  std::vector<double> out(shape_numel(kept), 0.0);
  const auto v = x.to_vector<double>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    auto idx = testref::unravel(i, in);
    for (int64_t d : dims) idx[d] = 0;
    out[testref::ravel(idx, kept)] += v[i];
  }
  Shape shape;
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (!dims.count(d))
      shape.push_back(in[d]);
    else if (keepdim)
      shape.push_back(1);
  }
  return {out, shape};
}

struct DimsCase {
  std::vector<int64_t> dims;  // as passed to the op
  std::set<int64_t> norm;     // the same dims, non-negative
};

std::vector<DimsCase> dims_cases_4d() {
  return {{{0}, {0}},
          {{1}, {1}},
          {{2}, {2}},
          {{3}, {3}},
          {{-1}, {3}},
          {{-3}, {1}},
          {{0, 2}, {0, 2}},
          {{1, 3}, {1, 3}},
          {{-1, 0}, {0, 3}},
          {{0, 1, 2}, {0, 1, 2}},
          {{1, 2, 3}, {1, 2, 3}},
          {{0, 1, 2, 3}, {0, 1, 2, 3}},
          {{}, {0, 1, 2, 3}}};
}

TEST(Sum, MatchesNaiveLoopsForEveryDimSet) {
  Tensor x = random_tensor({3, 4, 5, 6}, 1);
  for (const auto& c : dims_cases_4d()) {
    for (bool keepdim : {false, true}) {
      const Reduced ref = naive_sum(x, c.norm, keepdim);
      Tensor s = ops::sum(x, c.dims, keepdim);
      EXPECT_TRUE(all_close(s, tensor_of(ref.values, ref.shape), 1e-5, 1e-6))
          << "dims " << shape_str(c.dims) << " keepdim " << keepdim;
    }
  }
}

TEST(Sum, Float64AndIntegersAreExactOrNearlySo) {
  Tensor x = random_tensor({5, 7, 9}, 2, -1, 1, DType::kFloat64);
  for (std::vector<int64_t> dims : {std::vector<int64_t>{0}, {1}, {2}, {0, 2}, {}}) {
    std::set<int64_t> norm(dims.begin(), dims.end());
    if (dims.empty()) norm = {0, 1, 2};
    const Reduced ref = naive_sum(x, norm, false);
    EXPECT_TRUE(all_close(ops::sum(x, dims), tensor_of(ref.values, ref.shape, DType::kFloat64),
                          1e-13, 1e-14))
        << shape_str(dims);
  }
  Tensor xi = to_dtype(random_tensor({4, 6}, 3, -1000, 1000), DType::kInt64);
  for (int64_t d : {0, 1}) {
    const Reduced ref = naive_sum(xi, {d}, false);
    Tensor s = ops::sum(xi, {d});
    EXPECT_EQ(s.dtype(), DType::kInt64);
    EXPECT_EQ(s.to_vector<double>(), ref.values) << "dim " << d;
  }
}

TEST(Sum, AllElementsOfALargeTensorAccumulateAccurately) {
  // float32 values summed by a float32 accumulator would be off by ~1e-3 relative here.
  Tensor x = random_tensor({1 << 20}, 4, 0, 1);
  const auto v = x.to_vector<double>();
  double ref = 0;
  for (double e : v) ref += e;
  Tensor s = ops::sum(x);
  EXPECT_EQ(s.shape(), Shape{});
  EXPECT_NEAR(s.item<double>(), ref, 1e-6 * ref);
}

TEST(Sum, ScalarAndSizeOneDims) {
  Tensor s = scalar_tensor(2.5);
  EXPECT_EQ(ops::sum(s).item<float>(), 2.5f);
  EXPECT_EQ(ops::sum(s).shape(), Shape{});
  Tensor x = random_tensor({1, 5, 1}, 5);
  Tensor r = ops::sum(x, {1}, true);
  EXPECT_EQ(r.shape(), (Shape{1, 1, 1}));
  const auto v = x.to_vector<double>();
  double ref = 0;
  for (double e : v) ref += e;
  EXPECT_NEAR(r.item<double>(), ref, 1e-6);
}

TEST(Mean, MatchesNaiveLoopsForEveryDimSet) {
  Tensor x = random_tensor({3, 4, 5, 6}, 6);
  for (const auto& c : dims_cases_4d()) {
    for (bool keepdim : {false, true}) {
      Reduced ref = naive_sum(x, c.norm, keepdim);
      int64_t count = 1;
      for (int64_t d : c.norm) count *= x.shape()[d];
      for (double& e : ref.values) e /= count;
      Tensor m = ops::mean(x, c.dims, keepdim);
      EXPECT_TRUE(all_close(m, tensor_of(ref.values, ref.shape), 1e-5, 1e-6))
          << "dims " << shape_str(c.dims) << " keepdim " << keepdim;
    }
  }
}

/// Naive max over one dim: values and the first index reaching the maximum.
std::pair<std::vector<double>, std::vector<double>> naive_max(const Tensor& x, int64_t dim) {
  const Shape& in = x.shape();
  Shape kept = in;
  kept[dim] = 1;
  std::vector<double> best(shape_numel(kept), -INFINITY), arg(shape_numel(kept), -1);
  const auto v = x.to_vector<double>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    auto idx = testref::unravel(i, in);
    const int64_t k = idx[dim];
    idx[dim] = 0;
    const int64_t o = testref::ravel(idx, kept);
    if (arg[o] < 0 || v[i] > best[o]) {
      best[o] = v[i];
      arg[o] = static_cast<double>(k);
    }
  }
  return {best, arg};
}

TEST(Max, ValuesAndFirstArgmaxOnTies) {
  // Values from {-2, ..., 2}: most lines hold several copies of their maximum.
  Tensor x =
      to_dtype(to_dtype(random_tensor({4, 5, 6}, 7, -2.99, 2.99), DType::kInt64), DType::kFloat32);
  for (int64_t dim : {0, 1, 2, -1, -2}) {
    const int64_t d = dim < 0 ? dim + 3 : dim;
    const auto [vals, args] = naive_max(x, d);
    for (bool keepdim : {false, true}) {
      Shape shape = x.shape();
      if (keepdim)
        shape[d] = 1;
      else
        shape.erase(shape.begin() + d);
      auto [values, indices] = ops::max(x, dim, keepdim);
      EXPECT_EQ(values.shape(), shape);
      EXPECT_EQ(indices.dtype(), DType::kInt64);
      EXPECT_EQ(values.to_vector<double>(), vals) << "dim " << dim;
      EXPECT_EQ(indices.to_vector<double>(), args) << "dim " << dim;
      EXPECT_EQ(ops::argmax(x, dim, keepdim).to_vector<double>(), args) << "dim " << dim;
    }
  }
}

TEST(Max, LargeTensorAndIntegerDtype) {
  Tensor x = random_tensor({300, 400}, 8);
  for (int64_t dim : {0, 1}) {
    const auto [vals, args] = naive_max(x, dim);
    auto [values, indices] = ops::max(x, dim);
    EXPECT_EQ(values.to_vector<double>(), vals);
    EXPECT_EQ(indices.to_vector<double>(), args);
  }
  const auto v = x.to_vector<float>();
  EXPECT_EQ(ops::max_all(x).item<float>(), *std::max_element(v.begin(), v.end()));
  Tensor xi = from_vector(std::vector<int64_t>{3, 9, 9, -1, 4, 2}, {2, 3});
  EXPECT_EQ(ops::max(xi, 1).first.to_vector<int64_t>(), (std::vector<int64_t>{9, 4}));
  EXPECT_EQ(ops::max(xi, 1).second.to_vector<int64_t>(), (std::vector<int64_t>{1, 1}));
}

TEST(Max, NanPropagates) {
  Tensor x = tensor_of({1, NAN, 3, 2}, {4});
  auto [value, index] = ops::max(x, 0);
  EXPECT_TRUE(std::isnan(value.item<double>()));
  EXPECT_EQ(index.item<int64_t>(), 1);
}

TEST(Max, ScalarIsItsOwnMaximum) {
  Tensor s = scalar_tensor(-3.5);
  for (bool keepdim : {false, true}) {
    auto [value, index] = ops::max(s, 0, keepdim);
    EXPECT_EQ(value.shape(), Shape{});
    EXPECT_EQ(value.item<float>(), -3.5f);
    EXPECT_EQ(index.item<int64_t>(), 0);
  }
  EXPECT_EQ(ops::argmax(s, 0).item<int64_t>(), 0);
  EXPECT_EQ(ops::max_all(s).item<float>(), -3.5f);
}

TEST(Mean, ScalarOverItsOnlyDim) {
  Tensor s = scalar_tensor(6.0);
  EXPECT_EQ(ops::mean(s, {0}).item<float>(), 6.f);
  EXPECT_EQ(ops::mean(s, {0}, true).shape(), Shape{});
  EXPECT_EQ(ops::mean(s).item<float>(), 6.f);
}

TEST(SumTo, ReversesBroadcasting) {
  Tensor g = random_tensor({2, 3, 4}, 9);
  const std::vector<Shape> targets = {{2, 3, 4}, {3, 4},    {4}, {3, 1}, {1, 4},
                                      {2, 1, 4}, {1, 1, 1}, {1}, {}};
  for (const Shape& target : targets) {
    // sum_to(g, s) is the adjoint of broadcasting s to g's shape: every element of g is added to
    // the element of s it was broadcast from.
    std::vector<double> ref(shape_numel(target), 0.0);
    const auto v = g.to_vector<double>();
    for (int64_t i = 0; i < g.numel(); ++i)
      ref[testref::broadcast_source(testref::unravel(i, g.shape()), target)] += v[i];
    Tensor s = ops::sum_to(g, target);
    EXPECT_TRUE(all_close(s, tensor_of(ref, target), 1e-5, 1e-6)) << shape_str(target);
  }
}

TEST(Reductions, BitIdenticalAcrossThreadCounts) {
  Tensor flat = random_tensor({1 << 20}, 10);
  Tensor mat = random_tensor({1024, 1024}, 11);
  const auto run = [&] {
    return std::vector<Tensor>{ops::sum(flat),         ops::mean(flat),
                               ops::sum(mat, {0}),     ops::sum(mat, {1}),
                               ops::mean(mat, {0}),    ops::sum(mat.view({64, 16, 1024}), {0, 2}),
                               ops::max(mat, 0).first, ops::argmax(mat, 1)};
  };
  std::vector<Tensor> one, two;
  {
    testref::ThreadCountGuard threads(1);
    one = run();
  }
  {
    testref::ThreadCountGuard threads(2);
    two = run();
  }
  ASSERT_EQ(one.size(), two.size());
  for (size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(bit_equal(one[i], two[i])) << "result " << i;
  // And repeated runs agree with themselves.
  const auto again = run();
  for (size_t i = 0; i < one.size(); ++i)
    EXPECT_TRUE(bit_equal(one[i], again[i])) << "result " << i;
}

}  // namespace
}  // namespace dtrain
