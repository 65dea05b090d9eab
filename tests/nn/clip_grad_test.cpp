// Gradient clipping by global norm: against PyTorch's clip_grad_norm_ (golden_optim_extras.txt)
// and its contract (exact max_norm, small gradients untouched, parameters without gradients).
#include "dtrain/nn/clip_grad.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "dtrain/tensor/cuda/cuda_backend.h"
#include "testutil.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;
using testutil::all_close;
using testutil::bit_equal;
using testutil::Fixture;

Tensor param_with_grad(const Tensor& grad) {
  Tensor p = zeros(grad.shape(), grad.dtype(), grad.device());
  p.set_requires_grad();
  p.set_grad(grad.clone());
  return p;
}

double l2(const std::vector<Tensor>& ts) {
  double s = 0;
  for (const Tensor& t : ts)
    for (double v : t.to_vector<double>()) s += v * v;
  return std::sqrt(s);
}

struct GoldenClip {
  std::string name;
  int count;
  int without_grad;  // index of the parameter without a gradient, or -1
};

class GoldenClipGradNorm : public ::testing::TestWithParam<GoldenClip> {};

TEST_P(GoldenClipGradNorm, MatchesPyTorch) {
  const Fixture f("golden_optim_extras.txt");
  const GoldenClip& c = GetParam();
  std::vector<Tensor> params;
  for (int i = 0; i < c.count; ++i) {
    const Tensor g = f[c.name + ".g" + std::to_string(i)];
    if (i == c.without_grad) {
      params.push_back(zeros(g.shape()).set_requires_grad());
      continue;
    }
    params.push_back(param_with_grad(g));
  }
  const double norm = nn::clip_grad_norm_(params, f[c.name + ".max_norm"].item<double>());
  const double expected = f[c.name + ".norm"].item<double>();
  EXPECT_NEAR(norm, expected, 1e-6 * expected);
  for (int i = 0; i < c.count; ++i) {
    if (i == c.without_grad) {
      EXPECT_FALSE(params[i].grad().defined());
      continue;
    }
    EXPECT_TRUE(all_close(params[i].grad(), f[c.name + ".out" + std::to_string(i)], 1e-5, 1e-8))
        << c.name << " parameter " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(All, GoldenClipGradNorm,
                         ::testing::Values(GoldenClip{"clip", 3, -1},
                                           GoldenClip{"clip_small", 2, -1},
                                           GoldenClip{"clip_skip", 3, 1},
                                           GoldenClip{"clip_large", 3, -1}),
                         [](const auto& info) { return info.param.name; });

TEST(ClipGradNorm, ScalesToMaxNormAndReturnsThePreClipNorm) {
  Generator gen(11);
  // 2500 elements: more than one 1024-wide block plus a remainder.
  std::vector<Tensor> grads{randn({4, 5}, gen), randn({2500}, gen), randn({3}, gen)};
  std::vector<Tensor> params;
  for (const Tensor& g : grads) params.push_back(param_with_grad(g));
  const double before = l2(grads);
  ASSERT_GT(before, 3.0);
  EXPECT_NEAR(nn::grad_norm(params), before, 1e-9 * before);

  const double max_norm = 3.0;
  const double returned = nn::clip_grad_norm_(params, max_norm);
  EXPECT_NEAR(returned, before, 1e-9 * before);
  std::vector<Tensor> after;
  for (const Tensor& p : params) after.push_back(p.grad());
  EXPECT_NEAR(l2(after), max_norm, 1e-5 * max_norm);
  EXPECT_NEAR(nn::grad_norm(params), max_norm, 1e-5 * max_norm);
  // Every gradient is scaled by the same factor, so directions are kept.
  const double coef = max_norm / (before + 1e-6);
  for (size_t i = 0; i < grads.size(); ++i) {
    std::vector<float> expected = grads[i].to_vector<float>();
    for (float& v : expected) v = static_cast<float>(v * coef);
    EXPECT_TRUE(all_close(after[i], from_vector(expected, grads[i].shape()), 1e-6, 1e-9))
        << "parameter " << i;
  }
}

TEST(ClipGradNorm, NormAddsGradientsOfEveryDtypeInFloat64) {
  // float32 and float64 are summed in place on the CPU, bfloat16 through the tensor ops: one norm.
  Generator gen(13);
  const Tensor f32 = randn({3000}, gen), f64 = to_dtype(randn({1500}, gen), DType::kFloat64);
  const Tensor bf16 = to_dtype(randn({700}, gen), DType::kBFloat16);
  std::vector<Tensor> params{param_with_grad(f32), param_with_grad(f64), param_with_grad(bf16)};
  const double expected = l2({f32, f64, bf16});
  EXPECT_NEAR(nn::grad_norm(params), expected, 1e-12 * expected);
  EXPECT_NEAR(nn::sum_of_squares({f64}), l2({f64}) * l2({f64}), 1e-12 * l2({f64}) * l2({f64}));
}

TEST(ClipGradNorm, LeavesGradientsBelowMaxNormUntouched) {
  Generator gen(12);
  const Tensor g0 = randn({3, 4}, gen), g1 = randn({7}, gen);
  std::vector<Tensor> params{param_with_grad(g0), param_with_grad(g1)};
  const double norm = l2({g0, g1});
  EXPECT_NEAR(nn::clip_grad_norm_(params, norm * 1.01), norm, 1e-9 * norm);
  EXPECT_TRUE(bit_equal(params[0].grad(), g0));
  EXPECT_TRUE(bit_equal(params[1].grad(), g1));
}

TEST(ClipGradNorm, SkipsParametersWithoutGradients) {
  const Tensor g = from_vector<float>({3.f, 4.f});
  Tensor without = zeros({5}).set_requires_grad();
  std::vector<Tensor> params{without, param_with_grad(g)};
  EXPECT_DOUBLE_EQ(nn::grad_norm(params), 5.0);
  EXPECT_NEAR(nn::clip_grad_norm_(params, 1.0), 5.0, 1e-12);
  EXPECT_FALSE(params[0].grad().defined());
  EXPECT_TRUE(all_close(params[1].grad(), from_vector<float>({0.6f, 0.8f}), 1e-6, 1e-7));

  // No gradient at all: the norm is 0 and nothing happens.
  std::vector<Tensor> none{zeros({2}).set_requires_grad()};
  EXPECT_EQ(nn::clip_grad_norm_(none, 1.0), 0.0);
  EXPECT_EQ(nn::grad_norm({}), 0.0);
}

TEST(ClipGradNorm, Float64GradientsAreClippedInFloat64) {
  const Tensor g = from_vector<double>({1e-3, 2.0, -2.0, 1.0});  // norm 3.0000001666...
  std::vector<Tensor> params{param_with_grad(g)};
  const double norm = std::sqrt(1e-6 + 9.0);
  EXPECT_NEAR(nn::clip_grad_norm_(params, 0.5), norm, 1e-15);
  ASSERT_EQ(params[0].grad().dtype(), DType::kFloat64);
  const std::vector<double> out = params[0].grad().to_vector<double>();
  const std::vector<double> in = g.to_vector<double>();
  for (size_t k = 0; k < in.size(); ++k) EXPECT_NEAR(out[k], in[k] * 0.5 / (norm + 1e-6), 1e-15);
}

TEST(ClipGradNorm, RejectsANonPositiveMaxNormNamingIt) {
  std::vector<Tensor> params{param_with_grad(from_vector<float>({1.f}))};
  const std::vector<std::pair<double, std::string>> bad{
      {0.0, "got 0"}, {-2.5, "got -2.5"}, {std::numeric_limits<double>::quiet_NaN(), "got nan"}};
  for (const auto& [max_norm, text] : bad) {
    try {
      nn::clip_grad_norm_(params, max_norm);
      FAIL() << "max_norm " << max_norm << " was accepted";
    } catch (const ValueError& e) {
      EXPECT_THAT(std::string(e.what()), HasSubstr("max_norm must be > 0"));
      EXPECT_THAT(std::string(e.what()), HasSubstr(text));
    }
  }
  EXPECT_EQ(params[0].grad().item<float>(), 1.f);
}

TEST(ClipGradNorm, CudaGradientsMatchTheCpu) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  Generator gen(13);
  std::vector<Tensor> grads{randn({64, 50}, gen), randn({17}, gen)};
  std::vector<Tensor> cpu, gpu;
  for (const Tensor& g : grads) {
    cpu.push_back(param_with_grad(g));
    gpu.push_back(param_with_grad(to_device(g, Device::cuda(0))));
  }
  const double n_cpu = nn::clip_grad_norm_(cpu, 1.0), n_gpu = nn::clip_grad_norm_(gpu, 1.0);
  EXPECT_NEAR(n_gpu, n_cpu, 1e-12 * n_cpu);
  for (size_t i = 0; i < grads.size(); ++i) {
    ASSERT_EQ(gpu[i].grad().device(), Device::cuda(0));
    EXPECT_TRUE(all_close(to_device(gpu[i].grad(), Device::cpu()), cpu[i].grad(), 1e-6, 1e-9));
  }
}

}  // namespace
}  // namespace dtrain
