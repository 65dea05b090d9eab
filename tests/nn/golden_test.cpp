// Forward outputs, gradients and optimiser trajectories against values PyTorch 1.13 computed for
// the same weights and inputs (tests/fixtures, written by scripts/make_golden_fixtures.py).
#include <gtest/gtest.h>

#include "dtrain/nn/layers.h"
#include "dtrain/nn/loss.h"
#include "dtrain/nn/optim.h"
#include "testutil.h"

namespace dtrain {
namespace {

using testutil::all_close;
using testutil::Fixture;

/// fc1 = Linear(20, 16), ReLU, fc2 = Linear(16, 10): the fixture's MLP.
class GoldenMlp : public nn::Module {
 public:
  GoldenMlp() {
    fc1 = register_module("fc1", std::make_shared<nn::Linear>(20, 16));
    fc2 = register_module("fc2", std::make_shared<nn::Linear>(16, 10));
  }
  std::string describe() const override { return "GoldenMlp"; }
  Tensor forward(const Tensor& x) override { return fc2->forward(relu(fc1->forward(x))); }
  std::shared_ptr<nn::Linear> fc1, fc2;
};

/// conv1(1->4, 3, pad 1), bn1, ReLU, MaxPool 2, conv2(4->8, 3, pad 1), ReLU, AvgPool 2, fc(32->10).
class GoldenCnn : public nn::Module {
 public:
  GoldenCnn() {
    conv1 = register_module("conv1", std::make_shared<nn::Conv2d>(1, 4, 3, 1, 1));
    bn1 = register_module("bn1", std::make_shared<nn::BatchNorm2d>(4));
    conv2 = register_module("conv2", std::make_shared<nn::Conv2d>(4, 8, 3, 1, 1));
    fc = register_module("fc", std::make_shared<nn::Linear>(32, 10));
  }
  std::string describe() const override { return "GoldenCnn"; }
  Tensor forward(const Tensor& x) override {
    Tensor h = max_pool2d(relu(bn1->forward(conv1->forward(x))), 2, 2);
    h = avg_pool2d(relu(conv2->forward(h)), 2, 2);
    return fc->forward(flatten(h));
  }
  std::shared_ptr<nn::Conv2d> conv1, conv2;
  std::shared_ptr<nn::BatchNorm2d> bn1;
  std::shared_ptr<nn::Linear> fc;
};

template <class Model>
void load_params(Model& model, const Fixture& f, const std::string& prefix = "") {
  nn::NamedTensors state;
  for (auto& [name, p] : model.named_parameters()) state.emplace_back(name, f[prefix + name]);
  for (auto& [name, b] : model.named_buffers()) state.emplace_back(name, b.clone());
  model.load_state_dict(state);
}

/// `sign_noise`: a parameter whose true gradient is zero (a bias followed by batch norm). Its
/// float gradient is rounding noise, which Adam normalises to steps of about lr in a direction
/// no two implementations share; for it only the size of the change is checked.
template <class Model>
void expect_params(Model& model, const Fixture& f, const std::string& prefix,
                   const std::string& sign_noise = "", double max_noise_change = 0) {
  for (auto& [name, p] : model.named_parameters()) {
    if (name == sign_noise) {
      const Tensor before = f[name], expected = f[prefix + name];
      EXPECT_TRUE(all_close(p, before, 0, max_noise_change)) << prefix << name;
      EXPECT_TRUE(all_close(expected, before, 0, max_noise_change)) << prefix << name;
      continue;
    }
    EXPECT_TRUE(all_close(p, f[prefix + name], 1e-5, 1e-6)) << prefix << name;
  }
}

/// Three steps on the fixture's batch; returns the loss of the third step (before its update).
template <class Model>
float train_three_steps(Model& model, nn::Optimizer& opt, const Tensor& x, const Tensor& y) {
  float loss3 = 0;
  for (int step = 0; step < 3; ++step) {
    opt.zero_grad();
    Tensor loss = cross_entropy(model.forward(x), y);
    loss.backward();
    opt.step();
    loss3 = loss.item<float>();
  }
  return loss3;
}

TEST(GoldenMlp, ForwardAndGradientsMatchPyTorch) {
  Fixture f("golden_mlp.txt");
  GoldenMlp model;
  load_params(model, f);
  Tensor logits = model.forward(f["x"]);
  EXPECT_TRUE(all_close(logits, f["logits"]));
  Tensor loss = cross_entropy(logits, f.labels("y"));
  EXPECT_TRUE(all_close(loss, f["loss"]));
  loss.backward();
  for (auto& [name, p] : model.named_parameters()) {
    EXPECT_TRUE(all_close(p.grad(), f["grad." + name], 1e-5, 1e-6)) << name;
  }
}

struct OptimizerCase {
  std::string prefix;
  std::function<std::unique_ptr<nn::Optimizer>(std::vector<Tensor>)> make;
};

class GoldenMlpOptimizers : public ::testing::TestWithParam<OptimizerCase> {};

TEST_P(GoldenMlpOptimizers, ThreeStepsMatchPyTorch) {
  Fixture f("golden_mlp.txt");
  GoldenMlp model;
  load_params(model, f);
  auto opt = GetParam().make(model.parameters());
  const float loss3 = train_three_steps(model, *opt, f["x"], f.labels("y"));
  EXPECT_NEAR(loss3, f[GetParam().prefix + ".loss3"].item<float>(), 1e-5);
  expect_params(model, f, GetParam().prefix + ".");
}

INSTANTIATE_TEST_SUITE_P(
    All, GoldenMlpOptimizers,
    ::testing::Values(
        OptimizerCase{
            "sgd",
            [](std::vector<Tensor> p) {
              return std::make_unique<nn::SGD>(std::move(p), nn::SgdOptions{0.1, 0.9, 0, 0.01});
            }},
        OptimizerCase{
            "nesterov",
            [](std::vector<Tensor> p) {
              return std::make_unique<nn::SGD>(std::move(p), nn::SgdOptions{0.1, 0.9, 0, 0, true});
            }},
        OptimizerCase{"adamw",
                      [](std::vector<Tensor> p) {
                        return std::make_unique<nn::AdamW>(
                            std::move(p), nn::AdamOptions{0.01, 0.9, 0.999, 1e-8, 0.01});
                      }},
        OptimizerCase{"adam",
                      [](std::vector<Tensor> p) {
                        return std::make_unique<nn::Adam>(std::move(p), nn::AdamOptions{0.01});
                      }},
        OptimizerCase{"rmsprop",
                      [](std::vector<Tensor> p) {
                        return std::make_unique<nn::RMSprop>(std::move(p),
                                                             nn::RmspropOptions{0.01, 0.99, 1e-8});
                      }}),
    [](const auto& info) { return info.param.prefix; });

TEST(GoldenCnn, ForwardGradientsAndRunningStatsMatchPyTorch) {
  Fixture f("golden_cnn.txt");
  GoldenCnn model;
  load_params(model, f);
  Tensor logits = model.forward(f["x"]);
  EXPECT_TRUE(all_close(logits, f["logits"]));
  EXPECT_TRUE(all_close(model.bn1->running_mean, f["bn1.running_mean"]));
  EXPECT_TRUE(all_close(model.bn1->running_var, f["bn1.running_var"]));
  Tensor loss = cross_entropy(logits, f.labels("y"));
  EXPECT_TRUE(all_close(loss, f["loss"]));
  loss.backward();
  for (auto& [name, p] : model.named_parameters()) {
    EXPECT_TRUE(all_close(p.grad(), f["grad." + name], 1e-5, 1e-6)) << name;
  }
}

TEST(GoldenCnn, EvalModeUsesRunningStats) {
  Fixture f("golden_cnn.txt");
  GoldenCnn model;
  load_params(model, f);
  model.forward(f["x"]);  // one training forward updates the running statistics
  model.eval();
  Tensor logits;
  {
    NoGradGuard no_grad;
    logits = model.forward(f["x"]);
  }
  EXPECT_TRUE(all_close(logits, f["eval_logits"]));
  EXPECT_TRUE(all_close(model.bn1->running_mean, f["bn_eval.running_mean"]));
  EXPECT_TRUE(all_close(model.bn1->running_var, f["bn_eval.running_var"]));
}

TEST(GoldenCnn, SgdMomentumAndAdamWMatchPyTorch) {
  Fixture f("golden_cnn.txt");
  {
    GoldenCnn model;
    load_params(model, f);
    nn::SGD opt(model.parameters(), {0.1, 0.9, 0, 0.01});
    EXPECT_NEAR(train_three_steps(model, opt, f["x"], f.labels("y")), f["sgd.loss3"].item<float>(),
                1e-5);
    expect_params(model, f, "sgd.");
  }
  {
    GoldenCnn model;
    load_params(model, f);
    nn::AdamW opt(model.parameters(), {0.01, 0.9, 0.999, 1e-8, 0.01});
    EXPECT_NEAR(train_three_steps(model, opt, f["x"], f.labels("y")),
                f["adamw.loss3"].item<float>(), 1e-5);
    // Three AdamW steps of lr 0.01 move any element by at most about 0.03.
    expect_params(model, f, "adamw.", "conv1.bias", 0.031);
  }
}

}  // namespace
}  // namespace dtrain
