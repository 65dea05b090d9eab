// Softmax family, cross-entropy, layer/batch norm, embedding, shape ops and dropout masks against
// naive formulas; backward passes also against central differences in float64.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "dtrain/tensor/kernels_nn.h"
#include "dtrain/tensor/ops.h"
#include "reference.h"
#include "testutil.h"

namespace dtrain {
namespace {

using testref::random_tensor;
using testref::tensor_of;
using testutil::all_close;

constexpr DType kF64 = DType::kFloat64;
constexpr DType kF32 = DType::kFloat32;

/// Calls f(base, stride) for every line of x along dim, where element k of the line is at
/// base + k * stride.
void for_each_line(const Shape& shape, int64_t dim,
                   const std::function<void(int64_t, int64_t)>& f) {
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= shape[d];
  for (size_t d = dim + 1; d < shape.size(); ++d) inner *= shape[d];
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) f(o * shape[dim] * inner + i, inner);
}

Tensor naive_softmax(const Tensor& x, int64_t dim, bool log) {
  const auto v = x.to_vector<double>();
  std::vector<double> out(v.size());
  for_each_line(x.shape(), dim, [&](int64_t base, int64_t st) {
    double z = 0;
    for (int64_t k = 0; k < x.size(dim); ++k) z += std::exp(v[base + k * st]);
    for (int64_t k = 0; k < x.size(dim); ++k) {
      const int64_t i = base + k * st;
      out[i] = log ? v[i] - std::log(z) : std::exp(v[i]) / z;
    }
  });
  return tensor_of(out, x.shape(), x.dtype());
}

/// Central-difference gradient of the scalar function f at x (float64), one element at a time.
Tensor numeric_grad(const std::function<double(const Tensor&)>& f, const Tensor& x,
                    double h = 1e-6) {
  Tensor probe = x.clone();
  std::vector<double> g(x.numel());
  for (int64_t i = 0; i < x.numel(); ++i) {
    double* p = probe.data<double>() + i;
    const double saved = *p;
    *p = saved + h;
    const double up = f(probe);
    *p = saved - h;
    const double down = f(probe);
    *p = saved;
    g[i] = (up - down) / (2 * h);
  }
  return tensor_of(g, x.shape(), kF64);
}

double dot(const Tensor& a, const Tensor& b) {
  const auto va = a.to_vector<double>(), vb = b.to_vector<double>();
  double s = 0;
  for (size_t i = 0; i < va.size(); ++i) s += va[i] * vb[i];
  return s;
}

TEST(Softmax, MatchesNaiveAlongEveryDim) {
  Tensor x = random_tensor({3, 4, 5}, 1, -3, 3);
  for (int64_t dim : {0, 1, 2, -1}) {
    const int64_t d = dim < 0 ? dim + 3 : dim;
    EXPECT_TRUE(all_close(ops::softmax(x, dim), naive_softmax(x, d, false), 1e-5, 1e-7))
        << "dim " << dim;
    EXPECT_TRUE(all_close(ops::log_softmax(x, dim), naive_softmax(x, d, true), 1e-5, 1e-6))
        << "dim " << dim;
  }
}

TEST(Softmax, StableForLargeLogits) {
  Tensor x = tensor_of({1000, 1001, 1002, -1000}, {1, 4});
  // Shifting by the maximum gives the same result as for {-2, -1, 0, -2002}.
  Tensor shifted = tensor_of({-2, -1, 0, -2002}, {1, 4});
  EXPECT_TRUE(all_close(ops::softmax(x, 1), naive_softmax(shifted, 1, false), 1e-6, 1e-7));
  EXPECT_TRUE(all_close(ops::log_softmax(x, 1), naive_softmax(shifted, 1, true), 1e-6, 1e-5));
  EXPECT_TRUE(ops::all_finite(ops::log_softmax(x, 1)));
}

TEST(Softmax, BackwardMatchesCentralDifferences) {
  Tensor x = random_tensor({3, 4, 5}, 2, -2, 2, kF64);
  Tensor gy = random_tensor({3, 4, 5}, 3, -1, 1, kF64);
  for (int64_t dim : {0, 1, -1}) {
    for (bool log : {false, true}) {
      const auto forward = [&](const Tensor& t) {
        return log ? ops::log_softmax(t, dim) : ops::softmax(t, dim);
      };
      Tensor y = forward(x);
      Tensor dx = log ? ops::log_softmax_backward(y, gy, dim) : ops::softmax_backward(y, gy, dim);
      Tensor ref = numeric_grad([&](const Tensor& t) { return dot(forward(t), gy); }, x);
      EXPECT_TRUE(all_close(dx, ref, 1e-6, 1e-8)) << "dim " << dim << " log " << log;
    }
  }
}

/// Mean over rows of -(1 - eps) * logp[target] - eps / C * sum_j logp[j], computed in double.
double naive_cross_entropy(const Tensor& logits, const std::vector<int64_t>& targets, double eps) {
  const int64_t n = logits.size(0), c = logits.size(1);
  const auto lp = naive_softmax(to_dtype(logits, kF64), 1, true).to_vector<double>();
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {
    double all = 0;
    for (int64_t j = 0; j < c; ++j) all += lp[i * c + j];
    total += -(1 - eps) * lp[i * c + targets[i]] - eps / c * all;
  }
  return total / n;
}

TEST(CrossEntropy, LossAndProbabilitiesMatchNaive) {
  const std::vector<int64_t> t = {0, 4, 2, 2, 1, 3};
  Tensor targets = from_vector(t);
  for (double eps : {0.0, 0.1}) {
    Tensor logits = random_tensor({6, 5}, 10, -3, 3);
    auto [loss, probs] = ops::softmax_cross_entropy(logits, targets, eps);
    EXPECT_EQ(loss.shape(), Shape{});
    EXPECT_NEAR(loss.item<double>(), naive_cross_entropy(logits, t, eps), 1e-6) << "eps " << eps;
    EXPECT_TRUE(all_close(probs, naive_softmax(logits, 1, false), 1e-5, 1e-7)) << "eps " << eps;
  }
}

TEST(CrossEntropy, Float32RowsOfEveryWidthMatchTheFloat64Kernel) {
  // float32 on the CPU takes the vector exp (full vectors, a tail, both); float64 the shared body.
  for (int64_t c : {1, 8, 13, 95, 1000}) {
    std::vector<int64_t> t;
    for (int64_t i = 0; i < 7; ++i) t.push_back((i * 5 + 3) % c);
    const Tensor targets = from_vector(t);
    const Tensor logits = random_tensor({7, c}, 20 + c, -12, 12);
    for (double eps : {0.0, 0.1}) {
      auto [loss, probs] = ops::softmax_cross_entropy(logits, targets, eps);
      auto [loss64, probs64] = ops::softmax_cross_entropy(to_dtype(logits, kF64), targets, eps);
      const double want = loss64.item<double>();
      EXPECT_NEAR(loss.item<double>(), want, 1e-6 * std::max(1.0, std::abs(want)))
          << "classes " << c << " eps " << eps;
      EXPECT_TRUE(all_close(probs, probs64, 1e-5, 1e-7)) << "classes " << c << " eps " << eps;
    }
  }
}

TEST(CrossEntropy, BackwardMatchesCentralDifferences) {
  const std::vector<int64_t> t = {1, 0, 3, 3, 2};
  Tensor targets = from_vector(t);
  for (double eps : {0.0, 0.1}) {
    Tensor logits = random_tensor({5, 4}, 11, -2, 2, kF64);
    auto [loss, probs] = ops::softmax_cross_entropy(logits, targets, eps);
    const double grad_loss = 0.75;
    Tensor d = ops::softmax_cross_entropy_backward(probs, targets, grad_loss, eps);
    Tensor ref = numeric_grad(
        [&](const Tensor& z) { return grad_loss * naive_cross_entropy(z, t, eps); }, logits);
    EXPECT_TRUE(all_close(d, ref, 1e-6, 1e-8)) << "eps " << eps;
  }
}

// ---- layer norm -----------------------------------------------------------------------------
/// Rows of `group` elements normalised with the biased variance, then scaled and shifted.
Tensor naive_layer_norm(const Tensor& x, int64_t group, const Tensor& w, const Tensor& b,
                        double eps) {
  const auto v = x.to_vector<double>();
  const auto vw = w.defined() ? w.to_vector<double>() : std::vector<double>(group, 1.0);
  const auto vb = b.defined() ? b.to_vector<double>() : std::vector<double>(group, 0.0);
  std::vector<double> out(v.size());
  for (int64_t r = 0; r < x.numel() / group; ++r) {
    double mean = 0, var = 0;
    for (int64_t k = 0; k < group; ++k) mean += v[r * group + k] / group;
    for (int64_t k = 0; k < group; ++k) var += std::pow(v[r * group + k] - mean, 2) / group;
    for (int64_t k = 0; k < group; ++k)
      out[r * group + k] = (v[r * group + k] - mean) / std::sqrt(var + eps) * vw[k] + vb[k];
  }
  return tensor_of(out, x.shape(), x.dtype());
}

TEST(LayerNorm, ForwardMatchesNaive) {
  Tensor x = random_tensor({4, 6, 8}, 20, -2, 3);
  for (int64_t group : {8, 48}) {
    for (bool affine : {false, true}) {
      Tensor w = affine ? random_tensor({group}, 21, 0.5, 1.5) : Tensor();
      Tensor b = affine ? random_tensor({group}, 22) : Tensor();
      auto [y, stats] = ops::layer_norm(x, group, w, b, 1e-5);
      EXPECT_TRUE(all_close(y, naive_layer_norm(x, group, w, b, 1e-5), 1e-4, 1e-5))
          << "group " << group << " affine " << affine;
      EXPECT_EQ(stats.mean.numel(), x.numel() / group);
      // The saved mean is the row mean.
      const auto v = x.to_vector<double>();
      const auto m = stats.mean.to_vector<double>();
      for (int64_t r = 0; r < x.numel() / group; ++r) {
        double s = 0;
        for (int64_t k = 0; k < group; ++k) s += v[r * group + k];
        EXPECT_NEAR(m[r], s / group, 1e-6);
      }
    }
  }
}

TEST(LayerNorm, BackwardMatchesCentralDifferences) {
  const int64_t group = 6;
  Tensor x = random_tensor({5, group}, 23, -2, 2, kF64);
  Tensor w = random_tensor({group}, 24, 0.5, 1.5, kF64);
  Tensor b = random_tensor({group}, 25, -1, 1, kF64);
  Tensor gy = random_tensor({5, group}, 26, -1, 1, kF64);
  const double eps = 1e-5;
  auto [y, stats] = ops::layer_norm(x, group, w, b, eps);
  const auto grads = ops::layer_norm_backward(gy, x, stats, w, group);
  const auto loss = [&](const Tensor& xx, const Tensor& ww, const Tensor& bb) {
    return dot(naive_layer_norm(xx, group, ww, bb, eps), gy);
  };
  EXPECT_TRUE(all_close(grads[0], numeric_grad([&](const Tensor& t) { return loss(t, w, b); }, x),
                        1e-6, 1e-8))
      << "dx";
  EXPECT_TRUE(all_close(grads[1], numeric_grad([&](const Tensor& t) { return loss(x, t, b); }, w),
                        1e-6, 1e-8))
      << "dweight";
  EXPECT_TRUE(all_close(grads[2], numeric_grad([&](const Tensor& t) { return loss(x, w, t); }, b),
                        1e-6, 1e-8))
      << "dbias";
}

TEST(LayerNorm, Float32RowsAndParameterGradientsMatchFloat64) {
  // The CPU's float32 path (vectorised sums, gradients accumulated across columns) against the
  // float64 path, on widths with and without a vector tail and enough rows for several threads.
  for (int64_t group : {37, 128}) {
    for (bool affine : {false, true}) {
      const int64_t rows = 600;
      Tensor x = random_tensor({rows, group}, 27, -2, 3, kF64);
      Tensor w = affine ? random_tensor({group}, 28, 0.5, 1.5, kF64) : Tensor();
      Tensor b = affine ? random_tensor({group}, 29, -1, 1, kF64) : Tensor();
      Tensor gy = random_tensor({rows, group}, 30, -1, 1, kF64);
      const auto f32 = [](const Tensor& t) { return t.defined() ? to_dtype(t, kF32) : Tensor(); };
      auto [y64, st64] = ops::layer_norm(x, group, w, b, 1e-5);
      auto [y32, st32] = ops::layer_norm(f32(x), group, f32(w), f32(b), 1e-5);
      const std::string where =
          "group " + std::to_string(group) + (affine ? " affine" : " no affine");
      EXPECT_TRUE(all_close(to_dtype(y32, kF64), y64, 1e-5, 1e-5)) << where;
      EXPECT_TRUE(all_close(to_dtype(st32.rstd, kF64), st64.rstd, 1e-5, 1e-6)) << where;
      const auto g64 = ops::layer_norm_backward(gy, x, st64, w, group);
      const auto g32 = ops::layer_norm_backward(f32(gy), f32(x), st32, f32(w), group);
      EXPECT_TRUE(all_close(to_dtype(g32[0], kF64), g64[0], 1e-4, 1e-5)) << "dx, " << where;
      EXPECT_TRUE(all_close(to_dtype(g32[1], kF64), g64[1], 1e-4, 1e-3)) << "dw, " << where;
      EXPECT_TRUE(all_close(to_dtype(g32[2], kF64), g64[2], 1e-4, 1e-3)) << "db, " << where;
    }
  }
}

// ---- batch norm -----------------------------------------------------------------------------
struct ChannelStats {
  std::vector<double> mean, biased_var;
};
ChannelStats channel_stats(const Tensor& x) {
  const int64_t n = x.size(0), c = x.size(1), hw = x.numel() / (n * c);
  const auto v = x.to_vector<double>();
  ChannelStats s{std::vector<double>(c, 0.0), std::vector<double>(c, 0.0)};
  for (int64_t i = 0; i < x.numel(); ++i) s.mean[(i / hw) % c] += v[i] / (n * hw);
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t ch = (i / hw) % c;
    s.biased_var[ch] += std::pow(v[i] - s.mean[ch], 2) / (n * hw);
  }
  return s;
}

Tensor naive_batch_norm(const Tensor& x, const std::vector<double>& mean,
                        const std::vector<double>& var, const Tensor& w, const Tensor& b,
                        double eps) {
  const int64_t n = x.size(0), c = x.size(1), hw = x.numel() / (n * c);
  const auto v = x.to_vector<double>(), vw = w.to_vector<double>(), vb = b.to_vector<double>();
  std::vector<double> out(v.size());
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t ch = (i / hw) % c;
    out[i] = (v[i] - mean[ch]) / std::sqrt(var[ch] + eps) * vw[ch] + vb[ch];
  }
  return tensor_of(out, x.shape(), x.dtype());
}

TEST(BatchNorm, TrainingNormalisesWithBatchStatsAndUpdatesRunningStats) {
  for (const Shape& shape : {Shape{8, 3}, Shape{4, 3, 5, 6}}) {
    const int64_t c = 3, count = shape_numel(shape) / c;
    Tensor x = random_tensor(shape, 30, -1, 3);
    Tensor w = random_tensor({c}, 31, 0.5, 1.5), b = random_tensor({c}, 32);
    Tensor running_mean = random_tensor({c}, 33), running_var = random_tensor({c}, 34, 0.5, 2);
    const auto rm0 = running_mean.to_vector<double>(), rv0 = running_var.to_vector<double>();
    const double momentum = 0.1, eps = 1e-5;
    auto [y, stats] = ops::batch_norm(x, w, b, running_mean, running_var, true, momentum, eps);
    const ChannelStats s = channel_stats(x);
    EXPECT_TRUE(all_close(y, naive_batch_norm(x, s.mean, s.biased_var, w, b, eps), 1e-4, 1e-5))
        << shape_str(shape);
    // Running stats: exponential average with the unbiased variance.
    std::vector<double> rm(c), rv(c);
    for (int64_t ch = 0; ch < c; ++ch) {
      rm[ch] = (1 - momentum) * rm0[ch] + momentum * s.mean[ch];
      rv[ch] = (1 - momentum) * rv0[ch] + momentum * s.biased_var[ch] * count / (count - 1);
    }
    EXPECT_TRUE(all_close(running_mean, tensor_of(rm, {c}), 1e-5, 1e-6)) << shape_str(shape);
    EXPECT_TRUE(all_close(running_var, tensor_of(rv, {c}), 1e-5, 1e-6)) << shape_str(shape);
  }
}

TEST(BatchNorm, EvaluationUsesRunningStatsAndLeavesThemAlone) {
  Tensor x = random_tensor({4, 3, 2, 2}, 40, -1, 3);
  Tensor w = random_tensor({3}, 41, 0.5, 1.5), b = random_tensor({3}, 42);
  Tensor running_mean = random_tensor({3}, 43), running_var = random_tensor({3}, 44, 0.5, 2);
  Tensor rm_before = running_mean.clone(), rv_before = running_var.clone();
  auto [y, stats] = ops::batch_norm(x, w, b, running_mean, running_var, false, 0.1, 1e-5);
  EXPECT_TRUE(all_close(y,
                        naive_batch_norm(x, running_mean.to_vector<double>(),
                                         running_var.to_vector<double>(), w, b, 1e-5),
                        1e-5, 1e-6));
  EXPECT_TRUE(testutil::bit_equal(running_mean, rm_before));
  EXPECT_TRUE(testutil::bit_equal(running_var, rv_before));
}

TEST(BatchNorm, BackwardMatchesCentralDifferences) {
  const double eps = 1e-5;
  Tensor x = random_tensor({3, 2, 2, 3}, 50, -1, 2, kF64);
  Tensor w = random_tensor({2}, 51, 0.5, 1.5, kF64), b = random_tensor({2}, 52, -1, 1, kF64);
  Tensor gy = random_tensor(x.shape(), 53, -1, 1, kF64);
  Tensor rm = zeros({2}, kF64), rv = ones({2}, kF64);
  for (bool training : {true, false}) {
    // Evaluation normalises with the running stats (mean 0, variance 1 here).
    auto [y, stats] = training ? ops::batch_norm(x, w, b, Tensor(), Tensor(), true, 0.1, eps)
                               : ops::batch_norm(x, w, b, rm, rv, false, 0.1, eps);
    const auto grads = ops::batch_norm_backward(gy, x, stats, w, training);
    const auto loss = [&](const Tensor& xx, const Tensor& ww, const Tensor& bb) {
      if (!training) return dot(naive_batch_norm(xx, {0, 0}, {1, 1}, ww, bb, eps), gy);
      const ChannelStats s = channel_stats(xx);
      return dot(naive_batch_norm(xx, s.mean, s.biased_var, ww, bb, eps), gy);
    };
    EXPECT_TRUE(all_close(grads[0], numeric_grad([&](const Tensor& t) { return loss(t, w, b); }, x),
                          1e-5, 1e-7))
        << "dx training " << training;
    EXPECT_TRUE(all_close(grads[1], numeric_grad([&](const Tensor& t) { return loss(x, t, b); }, w),
                          1e-5, 1e-7))
        << "dweight training " << training;
    EXPECT_TRUE(all_close(grads[2], numeric_grad([&](const Tensor& t) { return loss(x, w, t); }, b),
                          1e-5, 1e-7))
        << "dbias training " << training;
  }
}

// ---- embedding ------------------------------------------------------------------------------
TEST(Embedding, GathersRowsAndScattersGradients) {
  const int64_t v = 7, d = 5;
  Tensor weight = random_tensor({v, d}, 60);
  const std::vector<int64_t> idx = {3, 0, 6, 3, 3, 1};  // repeats accumulate in backward
  Tensor indices = from_vector(idx, {2, 3});
  Tensor out = ops::embedding(weight, indices);
  ASSERT_EQ(out.shape(), (Shape{2, 3, d}));
  const auto vw = weight.to_vector<float>(), vo = out.to_vector<float>();
  for (size_t i = 0; i < idx.size(); ++i)
    for (int64_t k = 0; k < d; ++k) EXPECT_EQ(vo[i * d + k], vw[idx[i] * d + k]);

  Tensor gy = random_tensor({2, 3, d}, 61);
  Tensor dw = ops::embedding_backward(gy, indices, v);
  ASSERT_EQ(dw.shape(), (Shape{v, d}));
  std::vector<double> ref(v * d, 0.0);
  const auto vg = gy.to_vector<double>();
  for (size_t i = 0; i < idx.size(); ++i)
    for (int64_t k = 0; k < d; ++k) ref[idx[i] * d + k] += vg[i * d + k];
  EXPECT_TRUE(all_close(dw, tensor_of(ref, {v, d}), 1e-6, 1e-7));
}

TEST(Embedding, RejectsOutOfRangeIndex) {
  Tensor weight = random_tensor({4, 2}, 62);
  const std::string msg = testref::error_message([&] {
    ops::embedding(weight, from_vector(std::vector<int64_t>{1, 4}));
  });
  EXPECT_NE(msg.find("index 4"), std::string::npos) << msg;
}

// ---- shape ops ------------------------------------------------------------------------------
TEST(Slice, ContiguousSlicesAreViewsOthersAreCopies) {
  Tensor x = random_tensor({4, 5, 6}, 70);
  const auto vx = x.to_vector<float>();
  struct Case {
    int64_t dim, start, end;
    bool view;
  };
  const std::vector<Case> cases = {{0, 1, 3, true},  {0, -3, -1, true}, {0, 2, 100, true},
                                   {1, 1, 4, false}, {2, 0, 2, false},  {-1, 3, 6, false},
                                   {0, 2, 2, true}};
  for (const auto& c : cases) {
    Tensor s = ops::slice(x, c.dim, c.start, c.end);
    const int64_t d = c.dim < 0 ? c.dim + 3 : c.dim;
    const int64_t size = x.size(d);
    const int64_t start = c.start < 0 ? c.start + size : c.start;
    const int64_t end = std::min(c.end < 0 ? c.end + size : c.end, size);
    Shape shape = x.shape();
    shape[d] = end - start;
    ASSERT_EQ(s.shape(), shape) << "dim " << c.dim << " [" << c.start << ", " << c.end << ")";
    EXPECT_EQ(s.shares_storage(x), c.view) << "dim " << c.dim;
    const auto vs = s.to_vector<float>();
    for (int64_t i = 0; i < s.numel(); ++i) {
      auto idx = testref::unravel(i, shape);
      idx[d] += start;
      ASSERT_EQ(vs[i], vx[testref::ravel(idx, x.shape())]) << "dim " << c.dim << " at " << i;
    }
  }
  // A view writes through to the original.
  Tensor rows = ops::slice(x, 0, 1, 2);
  rows.fill_(7.0);
  EXPECT_EQ(x.to_vector<float>()[30], 7.f);
  EXPECT_EQ(x.to_vector<float>()[29], vx[29]);
  // Leading size-1 dims keep the slice contiguous.
  Tensor y = random_tensor({1, 6, 3}, 71);
  EXPECT_TRUE(ops::slice(y, 1, 2, 4).shares_storage(y));
}

TEST(Cat, ConcatenatesAlongEveryDim) {
  for (int64_t dim : {0, 1, 2, -1}) {
    const int64_t d = dim < 0 ? dim + 3 : dim;
    std::vector<Tensor> parts;
    for (int64_t i = 0; i < 3; ++i) {
      Shape s{2, 3, 4};
      s[d] = i + 1;
      parts.push_back(random_tensor(s, 80 + i));
    }
    Tensor out = ops::cat(parts, dim);
    Shape shape{2, 3, 4};
    shape[d] = 6;
    ASSERT_EQ(out.shape(), shape);
    const auto vo = out.to_vector<float>();
    int64_t offset = 0;
    for (const Tensor& p : parts) {
      const auto vp = p.to_vector<float>();
      for (int64_t i = 0; i < p.numel(); ++i) {
        auto idx = testref::unravel(i, p.shape());
        idx[d] += offset;
        ASSERT_EQ(vo[testref::ravel(idx, shape)], vp[i]) << "dim " << dim;
      }
      offset += p.size(d);
    }
  }
}

TEST(Stack, InsertsANewDim) {
  std::vector<Tensor> xs = {random_tensor({2, 3}, 90), random_tensor({2, 3}, 91),
                            random_tensor({2, 3}, 92), random_tensor({2, 3}, 93)};
  for (int64_t dim : {0, 1, 2, -1}) {
    const int64_t d = dim < 0 ? dim + 3 : dim;
    Tensor out = ops::stack(xs, dim);
    Shape shape{2, 3};
    shape.insert(shape.begin() + d, 4);
    ASSERT_EQ(out.shape(), shape) << "dim " << dim;
    const auto vo = out.to_vector<float>();
    for (int64_t i = 0; i < out.numel(); ++i) {
      auto idx = testref::unravel(i, shape);
      const int64_t which = idx[d];
      idx.erase(idx.begin() + d);
      ASSERT_EQ(vo[i], xs[which].to_vector<float>()[testref::ravel(idx, {2, 3})]) << "dim " << dim;
    }
  }
}

TEST(Permute, MovesDimsByIndexMath) {
  Tensor x = random_tensor({2, 3, 4, 5}, 100);
  const auto vx = x.to_vector<float>();
  for (const std::vector<int64_t>& perm :
       {std::vector<int64_t>{3, 0, 2, 1}, {0, 1, 2, 3}, {1, 0, 3, 2}, {-1, -2, -3, -4}}) {
    Tensor p = ops::permute(x, perm);
    Shape shape(4);
    std::vector<int64_t> norm(4);
    for (int i = 0; i < 4; ++i) {
      norm[i] = perm[i] < 0 ? perm[i] + 4 : perm[i];
      shape[i] = x.size(norm[i]);
    }
    ASSERT_EQ(p.shape(), shape);
    const auto vp = p.to_vector<float>();
    for (int64_t i = 0; i < p.numel(); ++i) {
      const auto out_idx = testref::unravel(i, shape);
      std::vector<int64_t> in_idx(4);
      for (int k = 0; k < 4; ++k) in_idx[norm[k]] = out_idx[k];  // out dim k is input dim perm[k]
      ASSERT_EQ(vp[i], vx[testref::ravel(in_idx, x.shape())]) << shape_str(perm);
    }
  }
  // Large enough for the threaded loop; permuting back restores the input.
  Tensor big = random_tensor({64, 32, 40}, 101);
  EXPECT_TRUE(testutil::bit_equal(ops::permute(ops::permute(big, {2, 0, 1}), {1, 2, 0}), big));
}

TEST(Permute, RunsTransposesAndMergedDimsMatchIndexMathForEveryElementSize) {
  // Runs of the innermost dim (attention's head split and merge), tiled transposes larger and
  // smaller than a tile, the contiguous dim landing in the middle, and size-1 dims anywhere.
  const std::vector<std::pair<Shape, std::vector<int64_t>>> cases = {
      {{2, 5, 3, 4, 6}, {2, 0, 3, 1, 4}},
      {{2, 4, 5, 6}, {0, 2, 1, 3}},
      {{3, 37, 21}, {0, 2, 1}},
      {{2, 3, 5, 7}, {0, 1, 3, 2}},
      {{4, 5, 6}, {2, 0, 1}},
      {{5, 1, 7, 3}, {3, 1, 2, 0}},
      {{1, 9, 1}, {2, 1, 0}},
      {{6, 4, 3}, {1, 2, 0}},
      {{33, 17}, {1, 0}},
      {{2, 3, 4}, {0, 1, 2}},
      {{7}, {0}},
      {{3, 0, 2}, {2, 1, 0}}};
  for (const auto& [shape, perm] : cases) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    std::vector<int64_t> values(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) values[i] = (i * 7919) % 251;  // fits every dtype exactly
    const Tensor x = from_vector<int64_t>(values, shape);
    const int64_t nd = static_cast<int64_t>(shape.size());
    Shape out_shape(nd);
    for (int64_t k = 0; k < nd; ++k) out_shape[k] = shape[perm[k]];
    std::vector<int64_t> want(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      const auto out_idx = testref::unravel(i, out_shape);
      std::vector<int64_t> in_idx(nd);
      for (int64_t k = 0; k < nd; ++k) in_idx[perm[k]] = out_idx[k];
      want[i] = values[testref::ravel(in_idx, shape)];
    }
    for (DType dtype : {DType::kUInt8, DType::kFloat16, DType::kFloat32, DType::kInt64}) {
      const Tensor got = ops::permute(to_dtype(x, dtype), perm);
      ASSERT_EQ(got.shape(), out_shape);
      EXPECT_TRUE(testutil::bit_equal(got, to_dtype(from_vector<int64_t>(want, out_shape), dtype)))
          << shape_str(shape) << " permuted by " << shape_str(perm) << " as " << dtype_name(dtype);
    }
  }
}

TEST(Transpose, SwapsTwoDims) {
  Tensor x = random_tensor({3, 4, 5}, 110);
  const auto vx = x.to_vector<float>();
  for (const auto& [d0, d1] : std::vector<std::pair<int64_t, int64_t>>{{0, 2}, {-1, -2}, {1, 1}}) {
    Tensor t = ops::transpose(x, d0, d1);
    const int64_t a = d0 < 0 ? d0 + 3 : d0, b = d1 < 0 ? d1 + 3 : d1;
    Shape shape = x.shape();
    std::swap(shape[a], shape[b]);
    ASSERT_EQ(t.shape(), shape);
    const auto vt = t.to_vector<float>();
    for (int64_t i = 0; i < t.numel(); ++i) {
      auto idx = testref::unravel(i, shape);
      std::swap(idx[a], idx[b]);
      ASSERT_EQ(vt[i], vx[testref::ravel(idx, x.shape())]);
    }
  }
}

TEST(ShapeOps, ZeroDimensionalInputs) {
  Tensor s = scalar_tensor(2.0);
  Tensor t = ops::transpose(s, 0, 0);
  EXPECT_EQ(t.shape(), Shape{});
  EXPECT_EQ(t.item<float>(), 2.f);
  EXPECT_THROW(ops::transpose(s, 0, 1), ValueError);
  // Scalars cannot be concatenated or sliced (as in PyTorch), but they can be stacked.
  EXPECT_THROW(ops::cat({s, s}, 0), ValueError);
  EXPECT_THROW(ops::slice(s, 0, 0, 1), ValueError);
  Tensor st = ops::stack({s, scalar_tensor(3.0)}, 0);
  EXPECT_EQ(st.shape(), (Shape{2}));
  EXPECT_EQ(st.to_vector<float>(), (std::vector<float>{2.f, 3.f}));
}

// ---- dropout --------------------------------------------------------------------------------
TEST(DropoutMask, KeepsAboutOneMinusPScaledByItsInverse) {
  const double p = 0.3;
  const int64_t n = 1 << 20;
  Generator gen(123, 4);
  Tensor mask = ops::dropout_mask({n}, p, gen);
  const float keep = static_cast<float>(1.0 / (1.0 - p));
  int64_t kept = 0;
  for (float v : mask.to_vector<float>()) {
    ASSERT_TRUE(v == 0.f || v == keep) << v;
    kept += v != 0.f;
  }
  // Binomial(n, 0.7): standard deviation sqrt(n p (1-p)) / n ~ 4.5e-4; allow 6 sigma.
  EXPECT_NEAR(static_cast<double>(kept) / n, 1 - p, 6 * std::sqrt(p * (1 - p) / n));
}

TEST(DropoutMask, SameGeneratorStateSameMask) {
  Generator a(5, 1), b(5, 1), c(6, 1);
  Tensor ma = ops::dropout_mask({1000}, 0.5, a);
  Tensor mb = ops::dropout_mask({1000}, 0.5, b);
  Tensor mc = ops::dropout_mask({1000}, 0.5, c);
  EXPECT_TRUE(testutil::bit_equal(ma, mb));
  EXPECT_FALSE(testutil::bit_equal(ma, mc));
  // The generator advanced: the next mask from it differs.
  EXPECT_FALSE(testutil::bit_equal(ma, ops::dropout_mask({1000}, 0.5, a)));
}

// The CPU fills 32 Philox blocks at a time; the CUDA path runs kernels::DropoutMaskFill per
// element. Both must give the same bits, at every length (tails), offset and probability.
TEST(DropoutMask, CpuBlockFillMatchesTheShared4ElementBody) {
  for (const double p : {0.0, 0.1, 0.3, 0.5, 1.0 / 3.0, 0.999, 1.0}) {
    for (const int64_t n : {int64_t{1}, int64_t{3}, int64_t{4}, int64_t{63}, int64_t{64},
                            int64_t{65}, int64_t{1000}, int64_t{4099}, int64_t{100003}}) {
      const uint64_t offset = 5;  // not a multiple of the 32-block group
      Generator gen(11, 3);
      gen.set_offset(offset);
      Tensor mask = ops::dropout_mask({n}, p, gen);
      Tensor expected = zeros({n});
      float* e = expected.data<float>();
      const kernels::DropoutMaskFill<float> body{e, 11, 3, offset, p};
      for (int64_t i = 0; i < n; ++i) body(i);
      ASSERT_TRUE(testutil::bit_equal(mask, expected)) << "p=" << p << " n=" << n;
    }
  }
}

TEST(DropoutMask, EdgeProbabilitiesAndFloat64) {
  Generator gen(7);
  EXPECT_TRUE(testutil::bit_equal(ops::dropout_mask({100}, 0.0, gen), ones({100})));
  EXPECT_TRUE(testutil::bit_equal(ops::dropout_mask({100}, 1.0, gen), zeros({100})));
  Tensor m = ops::dropout_mask({1000}, 0.2, gen, kF64);
  EXPECT_EQ(m.dtype(), kF64);
  for (double v : m.to_vector<double>()) ASSERT_TRUE(v == 0.0 || v == 1.0 / 0.8) << v;
}

}  // namespace
}  // namespace dtrain
