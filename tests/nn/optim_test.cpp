// Optimisers: update rules against hand-computed values, argument checks, bit-exact resume from
// state dicts, allocation-free steady-state training steps, and weight-decay masks (against
// PyTorch param groups with weight_decay=0, golden_optim_extras.txt).
#include "dtrain/nn/optim.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "dtrain/nn/layers.h"
#include "dtrain/tensor/allocator.h"
#include "dtrain/tensor/printable.h"
#include "testutil.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;
using testutil::all_close;
using testutil::bit_equal;
using testutil::Fixture;

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

TEST(Optimizer, LoadStateDictPrintsKeysWithControlCharactersEscaped) {
  Tensor w = param({1.0f, 2.0f});
  nn::Adam opt({w}, {});
  for (const std::string& key : {std::string("\x1b[2J.exp_avg"), std::string("7.\x1b[2J")}) {
    SCOPED_TRACE(printable(key));
    nn::OptimizerState bad;
    bad.tensors[key] = zeros({2});
    try {
      opt.load_state_dict(bad);
      ADD_FAILURE() << "accepted";
    } catch (const ValueError& e) {
      EXPECT_THAT(e.message(), HasSubstr("\\x1b[2J"));
      EXPECT_EQ(e.message().find('\x1b'), std::string::npos) << "a raw escape reached the message";
    }
  }
}

TEST(Optimizer, LoadStateDictRejectsKeysWithoutAParameterIndexNamingThem) {
  Tensor w = param({1.0f, 2.0f, 3.0f, 4.0f}), b = param({0.5f});
  w.set_grad(from_vector<float>({1.0f, 1.0f, 1.0f, 1.0f}));
  b.set_grad(from_vector<float>({1.0f}));
  nn::Adam opt({w, b}, {});
  opt.step();
  const nn::OptimizerState good = opt.state_dict();
  ASSERT_EQ(good.tensors.count("0.exp_avg"), 1u);
  ASSERT_EQ(good.scalars.count("0.step"), 1u);
  const std::string big = "99999999999999999999999";  // does not fit size_t
  for (const std::string& key :
       {std::string("abc.exp_avg"), std::string(".exp_avg"), std::string("1x.exp_avg"),
        std::string("-1.exp_avg"), std::string("+0.exp_avg"), std::string(" 0.exp_avg"),
        std::string("0x0.exp_avg"), big + ".exp_avg"}) {
    for (const bool as_scalar : {false, true}) {
      SCOPED_TRACE((as_scalar ? "scalar " : "tensor ") + key);
      nn::OptimizerState bad = good;
      if (as_scalar) {
        bad.scalars[key] = 1.0;
      } else {
        bad.tensors[key] = zeros({4});
      }
      try {
        opt.load_state_dict(bad);
        ADD_FAILURE() << "accepted";
      } catch (const ValueError& e) {
        EXPECT_THAT(e.message(), HasSubstr("'" + key + "'"));
        EXPECT_THAT(e.message(), Not(HasSubstr("stoul")));
      } catch (const std::exception& e) {
        ADD_FAILURE() << "not a ValueError: " << e.what();
      }
      // A refused state leaves the optimiser as it was.
      const nn::OptimizerState after = opt.state_dict();
      EXPECT_EQ(after.scalars, good.scalars);
      ASSERT_EQ(after.tensors.size(), good.tensors.size());
      for (const auto& [k, t] : good.tensors) {
        ASSERT_EQ(after.tensors.count(k), 1u) << k;
        EXPECT_TRUE(bit_equal(after.tensors.at(k), t)) << k;
      }
    }
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

// ---- weight-decay masks ---------------------------------------------------------------------
struct DecayCase {
  std::string name;
  // Makes the optimiser with the given weight decay.
  std::function<std::unique_ptr<nn::Optimizer>(std::vector<Tensor>, double)> make;
};

std::vector<DecayCase> decay_cases() {
  return {
      {"SgdMomentum",
       [](std::vector<Tensor> ps, double wd) -> std::unique_ptr<nn::Optimizer> {
         return std::make_unique<nn::SGD>(
             std::move(ps), nn::SgdOptions{.lr = 0.1, .momentum = 0.9, .weight_decay = wd});
       }},
      {"Adam",
       [](std::vector<Tensor> ps, double wd) -> std::unique_ptr<nn::Optimizer> {
         return std::make_unique<nn::Adam>(std::move(ps),
                                           nn::AdamOptions{.lr = 0.05, .weight_decay = wd});
       }},
      {"AdamW",
       [](std::vector<Tensor> ps, double wd) -> std::unique_ptr<nn::Optimizer> {
         return std::make_unique<nn::AdamW>(std::move(ps),
                                            nn::AdamOptions{.lr = 0.05, .weight_decay = wd});
       }},
      {"RmspropMomentum",
       [](std::vector<Tensor> ps, double wd) -> std::unique_ptr<nn::Optimizer> {
         return std::make_unique<nn::RMSprop>(
             std::move(ps), nn::RmspropOptions{.lr = 0.01, .weight_decay = wd, .momentum = 0.5});
       }},
  };
}

class EveryOptimizerMask : public ::testing::TestWithParam<DecayCase> {};

// A masked parameter moves exactly as under the same optimiser with weight_decay=0 (PyTorch's
// no-decay param group); an unmasked one as under the decaying optimiser.
TEST_P(EveryOptimizerMask, MaskedParameterStepsAsWithoutWeightDecay) {
  const double wd = 0.3;
  const std::vector<float> a0{1.0f, -2.0f, 0.5f}, b0{0.7f, 3.0f};
  const std::vector<std::vector<float>> ga{{0.3f, -0.1f, 1.0f}, {-0.2f, 0.4f, 0.5f}, {1, 2, 3}};
  const std::vector<std::vector<float>> gb{{0.2f, 0.6f}, {-1.0f, 0.1f}, {0.5f, -0.5f}};
  Tensor a = param(a0), b = param(b0), a_ref = param(a0), b_ref = param(b0);
  auto opt = GetParam().make({a, b}, wd);
  EXPECT_EQ(opt->weight_decay_mask(), (std::vector<bool>{true, true}));
  opt->set_weight_decay_mask({true, false});
  EXPECT_EQ(opt->weight_decay_mask(), (std::vector<bool>{true, false}));
  auto decaying = GetParam().make({a_ref}, wd);
  auto plain = GetParam().make({b_ref}, 0.0);
  for (size_t s = 0; s < ga.size(); ++s) {
    a.set_grad(from_vector(ga[s]));
    b.set_grad(from_vector(gb[s]));
    a_ref.set_grad(from_vector(ga[s]));
    b_ref.set_grad(from_vector(gb[s]));
    opt->step();
    decaying->step();
    plain->step();
    EXPECT_TRUE(bit_equal(a, a_ref)) << "step " << s + 1;
    EXPECT_TRUE(bit_equal(b, b_ref)) << "step " << s + 1;
  }
  // Control: with decay, b would have moved differently.
  Tensor b_decayed = param(b0);
  auto decaying_b = GetParam().make({b_decayed}, wd);
  for (size_t s = 0; s < gb.size(); ++s) {
    b_decayed.set_grad(from_vector(gb[s]));
    decaying_b->step();
  }
  EXPECT_FALSE(all_close(b, b_decayed, 1e-6, 1e-7));
}

// The mask is not saved: the state of a masked optimiser has the same keys as an unmasked one
// and loads into either.
TEST_P(EveryOptimizerMask, MaskLeavesTheStateDictLayoutUnchanged) {
  auto masked_model = small_mlp(3), plain_model = small_mlp(3);
  auto masked = GetParam().make(masked_model->parameters(), 0.1);
  auto plain = GetParam().make(plain_model->parameters(), 0.1);
  masked->set_weight_decay_mask({true, false, true, false});
  const auto data = batches(2);
  for (const Batch& b : data) {
    train_step(*masked_model, *masked, b);
    train_step(*plain_model, *plain, b);
  }
  const auto sm = masked->state_dict(), sp = plain->state_dict();
  ASSERT_EQ(sm.tensors.size(), sp.tensors.size());
  for (const auto& [key, t] : sp.tensors) EXPECT_EQ(sm.tensors.count(key), 1u) << key;
  std::vector<std::string> scalar_keys_m, scalar_keys_p;
  for (const auto& [key, v] : sm.scalars) scalar_keys_m.push_back(key);
  for (const auto& [key, v] : sp.scalars) scalar_keys_p.push_back(key);
  EXPECT_EQ(scalar_keys_m, scalar_keys_p);
  EXPECT_NO_THROW(plain->load_state_dict(sm));
  EXPECT_NO_THROW(masked->load_state_dict(sp));
  EXPECT_EQ(masked->weight_decay_mask(), (std::vector<bool>{true, false, true, false}));
}

INSTANTIATE_TEST_SUITE_P(Optimizers, EveryOptimizerMask, ::testing::ValuesIn(decay_cases()),
                         [](const auto& info) { return info.param.name; });

TEST(WeightDecayMask, WrongSizeIsAValueErrorNamingBothSizes) {
  nn::SGD opt({param({1.f}), param({2.f}), param({3.f})}, {.lr = 0.1, .weight_decay = 0.1});
  try {
    opt.set_weight_decay_mask({true, false});
    FAIL() << "a mask of 2 flags for 3 parameters was accepted";
  } catch (const ValueError& e) {
    EXPECT_THAT(std::string(e.what()), HasSubstr("2 entries"));
    EXPECT_THAT(std::string(e.what()), HasSubstr("3 parameters"));
  }
  EXPECT_EQ(opt.weight_decay_mask(), (std::vector<bool>{true, true, true}));
}

/// One of each kind of layer that the no_decay keywords tell apart. "norm_proj" is a Linear: the
/// "norm" keyword goes by layer type, not by name.
class MixedLayers : public nn::Module {
 public:
  MixedLayers() {
    Generator gen(9);
    register_module("tok", std::make_shared<nn::Embedding>(10, 4, gen));
    register_module("pos", std::make_shared<nn::PositionalEmbedding>(6, 4, gen));
    register_module("ln", std::make_shared<nn::LayerNorm>(Shape{4}));
    register_module("norm_proj", std::make_shared<nn::Linear>(4, 4, true, gen));
    register_module("blocks", std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
                                  std::make_shared<nn::BatchNorm1d>(4),
                                  std::make_shared<nn::Linear>(4, 4, true, gen)}));
    register_module("head", std::make_shared<nn::Linear>(4, 2, false, gen));
  }
  std::string describe() const override { return "MixedLayers"; }
  Tensor forward(const Tensor& x) override { return x; }
};

std::vector<std::string> decayed_names(const nn::Module& m, const std::vector<bool>& decays) {
  const auto named = m.named_parameters();
  EXPECT_EQ(named.size(), decays.size());
  std::vector<std::string> out;
  for (size_t i = 0; i < named.size() && i < decays.size(); ++i) {
    if (decays[i]) out.push_back(named[i].first);
  }
  return out;
}

TEST(WeightDecayMask, KeywordsAndSubstringsSelectParameters) {
  using Names = std::vector<std::string>;
  const MixedLayers m;
  const auto decayed = [&](const Names& no_decay) {
    const nn::WeightDecayMask mask = nn::weight_decay_mask(m, no_decay);
    EXPECT_TRUE(mask.unmatched.empty()) << ::testing::PrintToString(mask.unmatched);
    return decayed_names(m, mask.decays);
  };
  EXPECT_EQ(decayed({}),
            (Names{"tok.weight", "pos.weight", "ln.weight", "ln.bias", "norm_proj.weight",
                   "norm_proj.bias", "blocks.0.weight", "blocks.0.bias", "blocks.1.weight",
                   "blocks.1.bias", "head.weight"}));
  EXPECT_EQ(decayed({"bias"}), (Names{"tok.weight", "pos.weight", "ln.weight", "norm_proj.weight",
                                      "blocks.0.weight", "blocks.1.weight", "head.weight"}));
  // LayerNorm "ln" and BatchNorm "blocks.0", but not the Linear called "norm_proj".
  EXPECT_EQ(decayed({"norm"}),
            (Names{"tok.weight", "pos.weight", "norm_proj.weight", "norm_proj.bias",
                   "blocks.1.weight", "blocks.1.bias", "head.weight"}));
  EXPECT_EQ(decayed({"embedding"}),
            (Names{"ln.weight", "ln.bias", "norm_proj.weight", "norm_proj.bias", "blocks.0.weight",
                   "blocks.0.bias", "blocks.1.weight", "blocks.1.bias", "head.weight"}));
  EXPECT_EQ(decayed({"bias", "norm", "embedding"}),
            (Names{"norm_proj.weight", "blocks.1.weight", "head.weight"}));
  // Other entries are substrings of the dotted name.
  EXPECT_EQ(decayed({"head", "proj."}),
            (Names{"tok.weight", "pos.weight", "ln.weight", "ln.bias", "blocks.0.weight",
                   "blocks.0.bias", "blocks.1.weight", "blocks.1.bias"}));
  EXPECT_EQ(decayed({"blocks.1"}),
            (Names{"tok.weight", "pos.weight", "ln.weight", "ln.bias", "norm_proj.weight",
                   "norm_proj.bias", "blocks.0.weight", "blocks.0.bias", "head.weight"}));
}

TEST(WeightDecayMask, ReportsEntriesThatMatchNothing) {
  const MixedLayers m;
  const nn::WeightDecayMask mask =
      nn::weight_decay_mask(m, {"bias", "layernorm", "Bias", "head", "layernorm"});
  EXPECT_EQ(mask.unmatched, (std::vector<std::string>{"layernorm", "Bias", "layernorm"}));
  EXPECT_EQ(decayed_names(m, mask.decays),
            (std::vector<std::string>{"tok.weight", "pos.weight", "ln.weight", "norm_proj.weight",
                                      "blocks.0.weight", "blocks.1.weight"}));

  // Keywords too: a model without normalisation or embedding layers.
  nn::Linear plain(3, 2, /*bias=*/false);
  const nn::WeightDecayMask none = nn::weight_decay_mask(plain, {"bias", "norm", "embedding"});
  EXPECT_EQ(none.unmatched, (std::vector<std::string>{"bias", "norm", "embedding"}));
  EXPECT_EQ(none.decays, std::vector<bool>{true});
}

TEST(WeightDecayMask, EmptyEntryIsAValueError) {
  const MixedLayers m;
  try {
    nn::weight_decay_mask(m, {"bias", ""});
    FAIL() << "an empty no_decay entry was accepted";
  } catch (const ValueError& e) {
    EXPECT_THAT(std::string(e.what()), HasSubstr("empty no_decay entry"));
  }
}

TEST(WeightDecayMask, FitsTheOptimiserOfTheSameModel) {
  const MixedLayers m;
  nn::AdamW opt(m.parameters(), {.weight_decay = 0.1});
  const nn::WeightDecayMask mask = nn::weight_decay_mask(m, {"bias", "norm"});
  opt.set_weight_decay_mask(mask.decays);
  EXPECT_EQ(opt.weight_decay_mask(), mask.decays);
}

// ---- weight-decay masks against PyTorch param groups ----------------------------------------
/// fc1 = Linear(5, 6), norm = LayerNorm(6), tanh, fc2 = Linear(6, 3): the fixture's model.
class LinearNormLinear : public nn::Module {
 public:
  LinearNormLinear() {
    fc1 = register_module("fc1", std::make_shared<nn::Linear>(5, 6));
    norm = register_module("norm", std::make_shared<nn::LayerNorm>(Shape{6}));
    fc2 = register_module("fc2", std::make_shared<nn::Linear>(6, 3));
  }
  std::string describe() const override { return "LinearNormLinear"; }
  Tensor forward(const Tensor& x) override {
    return fc2->forward(tanh(norm->forward(fc1->forward(x))));
  }
  std::shared_ptr<nn::Linear> fc1, fc2;
  std::shared_ptr<nn::LayerNorm> norm;
};

struct GoldenDecayCase {
  std::string prefix;
  std::vector<std::string> no_decay;
  std::function<std::unique_ptr<nn::Optimizer>(std::vector<Tensor>)> make;
};

class GoldenNoDecay : public ::testing::TestWithParam<GoldenDecayCase> {};

TEST_P(GoldenNoDecay, ThreeStepsMatchPyTorchParamGroups) {
  const Fixture f("golden_optim_extras.txt");
  const GoldenDecayCase& c = GetParam();
  const Tensor x = f["x"], y = f.labels("y");
  const auto run = [&](bool masked) {
    auto model = std::make_shared<LinearNormLinear>();
    nn::NamedTensors state;
    for (auto& [name, p] : model->named_parameters()) state.emplace_back(name, f[name]);
    model->load_state_dict(state);
    auto opt = c.make(model->parameters());
    if (masked) {
      const nn::WeightDecayMask mask = nn::weight_decay_mask(*model, c.no_decay);
      EXPECT_TRUE(mask.unmatched.empty());
      opt->set_weight_decay_mask(mask.decays);
    }
    float loss3 = 0;
    for (int step = 0; step < 3; ++step) {
      opt->zero_grad();
      Tensor loss = cross_entropy(model->forward(x), y);
      loss.backward();
      opt->step();
      loss3 = loss.item<float>();
    }
    return std::make_pair(model, loss3);
  };
  const auto [model, loss3] = run(/*masked=*/true);
  EXPECT_NEAR(loss3, f[c.prefix + ".loss3"].item<float>(), 1e-5);
  for (auto& [name, p] : model->named_parameters()) {
    EXPECT_TRUE(all_close(p, f[c.prefix + "." + name], 1e-5, 1e-6)) << c.prefix << "." << name;
  }
  // Control: without the mask the excluded parameters end elsewhere, so the match above depends
  // on it.
  const auto unmasked = run(/*masked=*/false).first;
  EXPECT_FALSE(all_close(unmasked->fc1->bias, f[c.prefix + ".fc1.bias"], 1e-5, 1e-6));
}

INSTANTIATE_TEST_SUITE_P(
    All, GoldenNoDecay,
    ::testing::Values(
        GoldenDecayCase{"sgd_nodecay_bias",
                        {"bias"},
                        [](std::vector<Tensor> p) -> std::unique_ptr<nn::Optimizer> {
                          return std::make_unique<nn::SGD>(
                              std::move(p),
                              nn::SgdOptions{.lr = 0.1, .momentum = 0.9, .weight_decay = 0.1});
                        }},
        GoldenDecayCase{"adamw_nodecay_bias",
                        {"bias"},
                        [](std::vector<Tensor> p) -> std::unique_ptr<nn::Optimizer> {
                          return std::make_unique<nn::AdamW>(
                              std::move(p), nn::AdamOptions{.lr = 0.05, .weight_decay = 0.5});
                        }},
        GoldenDecayCase{"adamw_nodecay_bias_norm",
                        {"bias", "norm"},
                        [](std::vector<Tensor> p) -> std::unique_ptr<nn::Optimizer> {
                          return std::make_unique<nn::AdamW>(
                              std::move(p), nn::AdamOptions{.lr = 0.05, .weight_decay = 0.5});
                        }}),
    [](const auto& info) { return info.param.prefix; });

}  // namespace
}  // namespace dtrain
