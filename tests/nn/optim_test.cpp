// Optimisers: update rules against hand-computed values, argument checks, bit-exact resume from
// state dicts, and allocation-free steady-state training steps.
#include "nn/optim.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nn/layers.h"
#include "tensor/allocator.h"
#include "testutil.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;
using testutil::all_close;
using testutil::bit_equal;

Tensor param(const std::vector<float>& values) {
  Tensor p = from_vector<float>(values);
  p.set_requires_grad();
  return p;
}

Tensor values(const std::vector<double>& v) {
  std::vector<float> f(v.begin(), v.end());
  return from_vector<float>(f);
}

// ---- SGD ------------------------------------------------------------------------------------
TEST(SGD, PlainUpdateIsParamMinusLrTimesGrad) {
  Tensor p = param({1.0f, -2.0f, 0.5f, 3.0f});
  p.set_grad(from_vector<float>({0.1f, -0.4f, 2.0f, 0.0f}));
  nn::SGD opt({p}, {.lr = 0.5});
  opt.step();
  EXPECT_TRUE(all_close(p, values({1.0 - 0.05, -2.0 + 0.2, 0.5 - 1.0, 3.0}), 1e-6, 1e-7));
  EXPECT_EQ(opt.steps(), 1);
  EXPECT_EQ(opt.name(), "sgd");
}

TEST(SGD, MomentumDampeningAndWeightDecayForTwoSteps) {
  const double lr = 0.1, mom = 0.9, damp = 0.2, wd = 0.05;
  const std::vector<double> p0{1.0, -2.0, 0.5};
  const std::vector<std::vector<double>> grads{{0.3, -0.1, 1.0}, {-0.2, 0.4, 0.5}};
  Tensor p = param({1.0f, -2.0f, 0.5f});
  nn::SGD opt({p}, {.lr = lr, .momentum = mom, .dampening = damp, .weight_decay = wd});
  std::vector<double> ref = p0, buf(3);
  for (size_t step = 0; step < grads.size(); ++step) {
    p.set_grad(values(grads[step]));
    opt.step();
    for (size_t k = 0; k < 3; ++k) {
      const double g = grads[step][k] + wd * ref[k];
      // PyTorch: the first step initialises the buffer to the gradient (no dampening).
      buf[k] = step == 0 ? g : mom * buf[k] + (1 - damp) * g;
      ref[k] -= lr * buf[k];
    }
    EXPECT_TRUE(all_close(p, values(ref), 1e-6, 1e-7)) << "step " << step + 1;
  }
  const auto state = opt.state_dict();
  ASSERT_EQ(state.tensors.count("0.momentum_buffer"), 1u);
  EXPECT_TRUE(all_close(state.tensors.at("0.momentum_buffer"), values(buf), 1e-6, 1e-7));
}

TEST(SGD, NesterovForTwoSteps) {
  const double lr = 0.1, mom = 0.9;
  const std::vector<std::vector<double>> grads{{0.3, -0.1}, {-0.2, 0.4}};
  Tensor p = param({1.0f, -2.0f});
  nn::SGD opt({p}, {.lr = lr, .momentum = mom, .nesterov = true});
  std::vector<double> ref{1.0, -2.0}, buf(2);
  for (size_t step = 0; step < grads.size(); ++step) {
    p.set_grad(values(grads[step]));
    opt.step();
    for (size_t k = 0; k < 2; ++k) {
      const double g = grads[step][k];
      buf[k] = step == 0 ? g : mom * buf[k] + g;
      ref[k] -= lr * (g + mom * buf[k]);
    }
    EXPECT_TRUE(all_close(p, values(ref), 1e-6, 1e-7)) << "step " << step + 1;
  }
}

TEST(SGD, ConstructorRejectsBadOptions) {
  Tensor p = param({1.0f});
  EXPECT_THROW(nn::SGD({p}, {.lr = 0.1, .nesterov = true}), ValueError);
  EXPECT_THROW(nn::SGD({p}, {.lr = 0.1, .momentum = 0.9, .dampening = 0.1, .nesterov = true}),
               ValueError);
  EXPECT_THROW(nn::SGD({p}, {.lr = -0.1}), ValueError);
  EXPECT_THROW(nn::SGD({p}, {.lr = 0.1, .momentum = -0.5}), ValueError);
  EXPECT_NO_THROW(nn::SGD({p}, {.lr = 0.1, .momentum = 0.9, .nesterov = true}));
  // Parameters must require grad.
  EXPECT_THROW(nn::SGD({from_vector<float>({1.0f})}, {.lr = 0.1}), ValueError);
}

// ---- Adam / AdamW ---------------------------------------------------------------------------
TEST(Adam, FirstStepIsBiasCorrectedToAboutLr) {
  // After bias correction m_hat = g and v_hat = g^2, so each element moves by lr * sign(g)
  // whatever the gradient's size.
  const double lr = 0.01;
  Tensor p = param({1.0f, 1.0f, 1.0f, 1.0f});
  p.set_grad(from_vector<float>({1e-3f, -0.5f, 100.0f, -4.0f}));
  nn::Adam opt({p}, {.lr = lr});
  opt.step();
  EXPECT_TRUE(all_close(p, values({1 - lr, 1 + lr, 1 - lr, 1 + lr}), 0, 5e-7));
  EXPECT_EQ(opt.name(), "adam");
}

// PyTorch counts Adam's steps per parameter: a parameter whose first gradient arrives at the
// optimiser's second step gets the first-step bias correction (a move of about lr).
TEST(Adam, BiasCorrectionCountsEachParametersOwnSteps) {
  Tensor early = from_vector<float>({1.f}).set_requires_grad();
  Tensor late = from_vector<float>({1.f}).set_requires_grad();
  nn::Adam opt({early, late}, nn::AdamOptions{0.1});
  early.set_grad(from_vector<float>({1.f}));
  opt.step();  // `late` has no gradient yet
  EXPECT_FLOAT_EQ(late.item<float>(), 1.f);
  late.set_grad(from_vector<float>({1.f}));
  opt.step();
  EXPECT_NEAR(late.item<float>(), 0.9f, 1e-6);
  // The per-parameter count survives a state round trip.
  nn::OptimizerState state = opt.state_dict();
  EXPECT_EQ(state.scalars.at("0.step"), 2);
  EXPECT_EQ(state.scalars.at("1.step"), 1);
}

TEST(Adam, TwoStepsByHand) {
  const double lr = 0.05, b1 = 0.8, b2 = 0.9, eps = 1e-6, wd = 0.1;
  const std::vector<std::vector<double>> grads{{0.3, -0.1, 2.0}, {-0.2, 0.4, 1.0}};
  Tensor p = param({1.0f, -2.0f, 0.5f});
  nn::Adam opt({p}, {.lr = lr, .beta1 = b1, .beta2 = b2, .eps = eps, .weight_decay = wd});
  std::vector<double> ref{1.0, -2.0, 0.5}, m(3), v(3);
  for (size_t step = 0; step < grads.size(); ++step) {
    p.set_grad(values(grads[step]));
    opt.step();
    const double t = static_cast<double>(step + 1);
    for (size_t k = 0; k < 3; ++k) {
      const double g = grads[step][k] + wd * ref[k];
      m[k] = b1 * m[k] + (1 - b1) * g;
      v[k] = b2 * v[k] + (1 - b2) * g * g;
      const double denom = std::sqrt(v[k]) / std::sqrt(1 - std::pow(b2, t)) + eps;
      ref[k] -= lr / (1 - std::pow(b1, t)) * m[k] / denom;
    }
    EXPECT_TRUE(all_close(p, values(ref), 1e-5, 1e-6)) << "step " << step + 1;
  }
  const auto state = opt.state_dict();
  EXPECT_TRUE(all_close(state.tensors.at("0.exp_avg"), values(m), 1e-5, 1e-7));
  EXPECT_TRUE(all_close(state.tensors.at("0.exp_avg_sq"), values(v), 1e-5, 1e-7));
  EXPECT_EQ(state.scalars.at("step"), 2.0);
}

TEST(AdamW, DecoupledDecayDiffersFromAdamWeightDecay) {
  const double lr = 0.1, wd = 0.1;
  const std::vector<float> p0{1.0f, -2.0f, 0.5f};
  const std::vector<float> g{0.1f, 0.1f, -0.1f};
  Tensor pa = param(p0), pw = param(p0);
  pa.set_grad(from_vector<float>(g));
  pw.set_grad(from_vector<float>(g));
  nn::Adam adam({pa}, {.lr = lr, .weight_decay = wd});
  nn::AdamW adamw({pw}, {.lr = lr, .weight_decay = wd});
  EXPECT_EQ(adamw.name(), "adamw");
  adam.step();
  adamw.step();
  // Adam folds the decay into the gradient, so the first step is lr * sign(g + wd * p).
  // AdamW shrinks the weight by (1 - lr * wd) and then steps lr * sign(g).
  std::vector<double> ref_adam(3), ref_adamw(3);
  for (size_t k = 0; k < 3; ++k) {
    const double gd = g[k] + wd * p0[k];
    ref_adam[k] = p0[k] - lr * gd / std::fabs(gd);
    ref_adamw[k] = p0[k] * (1 - lr * wd) - lr * g[k] / std::fabs(g[k]);
  }
  EXPECT_TRUE(all_close(pa, values(ref_adam), 1e-5, 1e-6));
  EXPECT_TRUE(all_close(pw, values(ref_adamw), 1e-5, 1e-6));
  EXPECT_FALSE(all_close(pa, pw, 1e-3, 1e-3));
}

TEST(Adam, ConstructorRejectsBadOptions) {
  Tensor p = param({1.0f});
  EXPECT_THROW(nn::Adam({p}, {.beta1 = 1.0}), ValueError);
  EXPECT_THROW(nn::Adam({p}, {.beta2 = -0.1}), ValueError);
  EXPECT_THROW(nn::Adam({p}, {.eps = -1.0}), ValueError);
  EXPECT_THROW(nn::AdamW({p}, {.weight_decay = -0.01}), ValueError);
}

// ---- RMSprop --------------------------------------------------------------------------------
TEST(RMSprop, MomentumAndWeightDecayForTwoSteps) {
  const double lr = 0.01, alpha = 0.9, eps = 1e-8, mom = 0.5, wd = 0.1;
  const std::vector<std::vector<double>> grads{{0.3, -0.1, 2.0}, {-0.2, 0.4, 1.0}};
  Tensor p = param({1.0f, -2.0f, 0.5f});
  nn::RMSprop opt({p}, {.lr = lr, .alpha = alpha, .eps = eps, .weight_decay = wd, .momentum = mom});
  EXPECT_EQ(opt.name(), "rmsprop");
  std::vector<double> ref{1.0, -2.0, 0.5}, sq(3), buf(3);
  for (size_t step = 0; step < grads.size(); ++step) {
    p.set_grad(values(grads[step]));
    opt.step();
    for (size_t k = 0; k < 3; ++k) {
      const double g = grads[step][k] + wd * ref[k];
      sq[k] = alpha * sq[k] + (1 - alpha) * g * g;
      buf[k] = mom * buf[k] + g / (std::sqrt(sq[k]) + eps);
      ref[k] -= lr * buf[k];
    }
    EXPECT_TRUE(all_close(p, values(ref), 1e-5, 1e-6)) << "step " << step + 1;
  }
  const auto state = opt.state_dict();
  EXPECT_TRUE(all_close(state.tensors.at("0.square_avg"), values(sq), 1e-5, 1e-8));
  EXPECT_TRUE(all_close(state.tensors.at("0.momentum_buffer"), values(buf), 1e-5, 1e-7));
}

TEST(RMSprop, WithoutMomentumByHand) {
  const double lr = 0.01, alpha = 0.99, eps = 1e-8;
  Tensor p = param({1.0f, -2.0f});
  p.set_grad(from_vector<float>({0.5f, -3.0f}));
  nn::RMSprop opt({p}, {.lr = lr, .alpha = alpha, .eps = eps});
  opt.step();
  std::vector<double> ref{1.0, -2.0};
  const std::vector<double> g{0.5, -3.0};
  for (size_t k = 0; k < 2; ++k) ref[k] -= lr * g[k] / (std::sqrt((1 - alpha) * g[k] * g[k]) + eps);
  EXPECT_TRUE(all_close(p, values(ref), 1e-5, 1e-6));
  EXPECT_EQ(opt.state_dict().tensors.count("0.momentum_buffer"), 0u);
}

// ---- shared behaviour -----------------------------------------------------------------------
TEST(Optimizer, ParametersWithoutGradAreSkipped) {
  Tensor with = param({1.0f, 2.0f}), without = param({3.0f, 4.0f});
  with.set_grad(from_vector<float>({1.0f, 1.0f}));
  nn::SGD sgd({with, without}, {.lr = 0.1, .momentum = 0.9});
  sgd.step();
  EXPECT_TRUE(all_close(with, values({0.9, 1.9})));
  EXPECT_EQ(without.to_vector<float>(), (std::vector<float>{3.0f, 4.0f}));
  EXPECT_EQ(sgd.state_dict().tensors.count("1.momentum_buffer"), 0u);

  Tensor a = param({1.0f}), b = param({5.0f});
  a.set_grad(from_vector<float>({0.5f}));
  nn::Adam adam({a, b}, {.lr = 0.1});
  adam.step();
  EXPECT_EQ(b.to_vector<float>(), std::vector<float>{5.0f});
  const auto state = adam.state_dict();
  EXPECT_EQ(state.tensors.count("0.exp_avg"), 1u);
  EXPECT_EQ(state.tensors.count("1.exp_avg"), 0u);
  EXPECT_EQ(state.tensors.count("1.exp_avg_sq"), 0u);
}

TEST(Optimizer, ZeroGradInPlaceOrToNone) {
  Tensor p = param({1.0f, 2.0f});
  p.set_grad(from_vector<float>({3.0f, 4.0f}));
  const void* ptr = p.grad().data_ptr();
  nn::SGD opt({p}, {.lr = 0.1});
  opt.zero_grad();
  ASSERT_TRUE(p.grad().defined());
  EXPECT_EQ(p.grad().data_ptr(), ptr);
  EXPECT_EQ(p.grad().to_vector<float>(), (std::vector<float>{0.0f, 0.0f}));
  opt.zero_grad(/*set_to_none=*/true);
  EXPECT_FALSE(p.grad().defined());
  opt.step();  // no gradients: nothing changes
  EXPECT_EQ(p.to_vector<float>(), (std::vector<float>{1.0f, 2.0f}));
}

TEST(Optimizer, LoadStateDictRejectsMisshapedBufferNamingIt) {
  Tensor w = param({1.0f, 2.0f, 3.0f, 4.0f}), b = param({0.5f});
  w.set_grad(from_vector<float>({1.0f, 1.0f, 1.0f, 1.0f}));
  b.set_grad(from_vector<float>({1.0f}));
  nn::Adam opt({w, b}, {});
  opt.step();
  auto state = opt.state_dict();
  state.tensors["1.exp_avg_sq"] = zeros({2, 2});
  try {
    opt.load_state_dict(state);
    FAIL() << "a mis-shaped buffer was accepted";
  } catch (const ValueError& e) {
    EXPECT_THAT(std::string(e.what()), HasSubstr("1.exp_avg_sq"));
    EXPECT_THAT(std::string(e.what()), HasSubstr("[2, 2]"));
  }
  auto extra = opt.state_dict();
  extra.tensors["5.exp_avg"] = zeros({1});
  try {
    opt.load_state_dict(extra);
    FAIL() << "a buffer for a missing parameter was accepted";
  } catch (const ValueError& e) {
    EXPECT_THAT(std::string(e.what()), HasSubstr("5.exp_avg"));
  }
}

// ---- resume and allocation, for every optimiser ---------------------------------------------
struct OptimizerCase {
  std::string name;
  std::function<std::unique_ptr<nn::Optimizer>(std::vector<Tensor>)> make;
};

std::vector<OptimizerCase> optimizer_cases() {
  return {
      {"SgdMomentum",
       [](std::vector<Tensor> ps) -> std::unique_ptr<nn::Optimizer> {
         return std::make_unique<nn::SGD>(
             std::move(ps), nn::SgdOptions{.lr = 0.05, .momentum = 0.9, .weight_decay = 1e-3});
       }},
      {"Adam",
       [](std::vector<Tensor> ps) -> std::unique_ptr<nn::Optimizer> {
         return std::make_unique<nn::Adam>(std::move(ps), nn::AdamOptions{.lr = 0.01});
       }},
      {"AdamW",
       [](std::vector<Tensor> ps) -> std::unique_ptr<nn::Optimizer> {
         return std::make_unique<nn::AdamW>(std::move(ps),
                                            nn::AdamOptions{.lr = 0.01, .weight_decay = 0.01});
       }},
      {"RmspropMomentum",
       [](std::vector<Tensor> ps) -> std::unique_ptr<nn::Optimizer> {
         return std::make_unique<nn::RMSprop>(std::move(ps),
                                              nn::RmspropOptions{.lr = 0.01, .momentum = 0.9});
       }},
  };
}

class EveryOptimizer : public ::testing::TestWithParam<OptimizerCase> {};

std::shared_ptr<nn::Sequential> small_mlp(uint64_t seed) {
  Generator gen(seed);
  return std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::Linear>(6, 5, true, gen), std::make_shared<nn::Tanh>(),
      std::make_shared<nn::Linear>(5, 3, true, gen)});
}

struct Batch {
  Tensor x, y;
};

std::vector<Batch> batches(int n) {
  Generator gen(2024);
  std::vector<Batch> out;
  for (int i = 0; i < n; ++i) out.push_back({randn({8, 6}, gen), randint(0, 3, {8}, gen)});
  return out;
}

void train_step(nn::Module& model, nn::Optimizer& opt, const Batch& b) {
  opt.zero_grad();
  cross_entropy(model.forward(b.x), b.y).backward();
  opt.step();
}

TEST_P(EveryOptimizer, ResumeFromStateDictsIsBitExact) {
  const auto data = batches(6);

  auto straight = small_mlp(1);
  auto opt_straight = GetParam().make(straight->parameters());
  for (int s = 0; s < 6; ++s) train_step(*straight, *opt_straight, data[s]);

  auto first = small_mlp(1);
  auto opt_first = GetParam().make(first->parameters());
  for (int s = 0; s < 3; ++s) train_step(*first, *opt_first, data[s]);
  const nn::NamedTensors model_state = first->state_dict();
  const nn::OptimizerState opt_state = opt_first->state_dict();

  auto resumed = small_mlp(77);  // a different initialisation, overwritten by the load
  auto opt_resumed = GetParam().make(resumed->parameters());
  resumed->load_state_dict(model_state);
  opt_resumed->load_state_dict(opt_state);
  EXPECT_EQ(opt_resumed->steps(), 3);
  for (int s = 3; s < 6; ++s) train_step(*resumed, *opt_resumed, data[s]);

  const auto ps = straight->named_parameters(), pr = resumed->named_parameters();
  ASSERT_EQ(ps.size(), pr.size());
  for (size_t i = 0; i < ps.size(); ++i) {
    EXPECT_TRUE(bit_equal(pr[i].second, ps[i].second)) << ps[i].first;
  }
  const auto ss = opt_straight->state_dict(), sr = opt_resumed->state_dict();
  EXPECT_EQ(sr.scalars, ss.scalars);
  ASSERT_EQ(sr.tensors.size(), ss.tensors.size());
  for (const auto& [key, t] : ss.tensors) {
    ASSERT_EQ(sr.tensors.count(key), 1u) << key;
    EXPECT_TRUE(bit_equal(sr.tensors.at(key), t)) << key;
  }

  // Control: resuming the model alone, with a fresh optimiser, does not reproduce the run, so
  // the comparison above really depends on the optimiser state.
  auto model_only = small_mlp(77);
  auto opt_fresh = GetParam().make(model_only->parameters());
  model_only->load_state_dict(model_state);
  for (int s = 3; s < 6; ++s) train_step(*model_only, *opt_fresh, data[s]);
  bool all_same = true;
  const auto pm = model_only->named_parameters();
  for (size_t i = 0; i < ps.size(); ++i)
    all_same = all_same && bit_equal(pm[i].second, ps[i].second);
  EXPECT_FALSE(all_same);
}

TEST_P(EveryOptimizer, SteadyStateStepsMakeNoSystemAllocations) {
  Generator gen(5);
  nn::Sequential model{std::make_shared<nn::Linear>(20, 32, true, gen),
                       std::make_shared<nn::ReLU>(),
                       std::make_shared<nn::Linear>(32, 10, true, gen)};
  auto opt = GetParam().make(model.parameters());
  const Batch b{randn({16, 20}, gen), randint(0, 10, {16}, gen)};
  for (int s = 0; s < 3; ++s) train_step(model, *opt, b);
  const uint64_t before = cpu_allocator().stats().system_allocs;
  const uint64_t allocs_before = cpu_allocator().stats().allocs;
  for (int s = 0; s < 10; ++s) train_step(model, *opt, b);
  EXPECT_EQ(cpu_allocator().stats().system_allocs, before);
  // The loop does allocate (from the cache), so the counter above is meaningful.
  EXPECT_GT(cpu_allocator().stats().allocs, allocs_before);
}

INSTANTIATE_TEST_SUITE_P(Optimizers, EveryOptimizer, ::testing::ValuesIn(optimizer_cases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace dtrain
