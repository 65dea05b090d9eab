// The standard layers: default initialisation, output shapes, input validation messages, and
// forward results against the functional ops or hand-computed values.
#include "dtrain/nn/layers.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "layer_checks.h"
#include "testutil.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;
using testutil::all_close;
using testutil::bit_equal;
using testutil::clones_independently;
using testutil::gradcheck_module;
using testutil::to_float64;

double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector<double>()) m = std::max(m, std::fabs(v));
  return m;
}

std::vector<std::string> names_of(const nn::NamedTensors& named) {
  std::vector<std::string> names;
  for (const auto& [name, t] : named) names.push_back(name);
  return names;
}

/// A float64 leaf requiring grad, for gradcheck.
Tensor leaf64(const Shape& shape, Generator& gen) {
  return randn(shape, gen, DType::kFloat64).set_requires_grad();
}

/// The message of the ValueError that f throws ("" and a test failure if it does not throw).
template <class F>
std::string value_error_message(F&& f) {
  try {
    f();
  } catch (const ValueError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a ValueError";
  return "";
}

// ---- Linear ---------------------------------------------------------------------------------
TEST(Linear, DefaultInitIsUniformWithinOneOverSqrtFanIn) {
  Generator gen(1);
  nn::Linear fc(100, 300, true, gen);
  const double bound = 1.0 / std::sqrt(100.0);
  ASSERT_EQ(fc.weight.shape(), Shape({300, 100}));
  ASSERT_EQ(fc.bias.shape(), Shape({300}));
  EXPECT_LE(max_abs(fc.weight), bound);
  EXPECT_LE(max_abs(fc.bias), bound);
  // Uniform over the whole range, not a narrower one: the extremes come close to the bound and
  // the variance is bound^2 / 3.
  EXPECT_GT(max_abs(fc.weight), 0.99 * bound);
  EXPECT_GT(max_abs(fc.bias), 0.9 * bound);
  const auto w = fc.weight.to_vector<double>();
  double mean = 0, sq = 0;
  for (double v : w) mean += v;
  mean /= static_cast<double>(w.size());
  for (double v : w) sq += (v - mean) * (v - mean);
  const double var = sq / static_cast<double>(w.size());
  EXPECT_NEAR(mean, 0.0, 0.02 * bound);
  EXPECT_NEAR(var, bound * bound / 3, 0.03 * bound * bound / 3);
}

TEST(Linear, SeededGeneratorMakesInitDeterministic) {
  Generator g1(7), g2(7), g3(8);
  nn::Linear a(10, 5, true, g1), b(10, 5, true, g2), c(10, 5, true, g3);
  EXPECT_TRUE(bit_equal(a.weight, b.weight));
  EXPECT_TRUE(bit_equal(a.bias, b.bias));
  EXPECT_FALSE(bit_equal(a.weight, c.weight));
  EXPECT_FALSE(bit_equal(a.bias, c.bias));
  // The generator advances: a second layer from the same generator differs from the first.
  nn::Linear d(10, 5, true, g1);
  EXPECT_FALSE(bit_equal(a.weight, d.weight));
}

TEST(Linear, ForwardIsXWTransposePlusBias) {
  nn::Linear fc(3, 2);
  fc.weight.detach().copy_(from_vector<float>({1, 2, 3, -1, 0, 1}, {2, 3}));
  fc.bias.detach().copy_(from_vector<float>({0.5f, -0.5f}));
  const Tensor x = from_vector<float>({1, 1, 1, 2, 0, -1}, {2, 3});
  EXPECT_EQ(fc.forward(x).to_vector<float>(), (std::vector<float>{6.5f, -0.5f, -0.5f, -3.5f}));
  nn::Linear no_bias(3, 2, /*bias=*/false);
  EXPECT_FALSE(no_bias.bias.defined());
  EXPECT_EQ(no_bias.named_parameters().size(), 1u);
}

TEST(Linear, ThreeDimensionalImageInputSuggestsFlatten) {
  nn::Linear fc(784, 10);
  const std::string msg = value_error_message([&] { fc.forward(zeros({64, 28, 28})); });
  EXPECT_THAT(msg, HasSubstr("Flatten"));
  EXPECT_THAT(msg, HasSubstr("Linear(784 -> 10)"));
  EXPECT_THAT(msg, HasSubstr("[64, 28, 28]"));
  EXPECT_THAT(msg, HasSubstr("[N, 784]"));
}

// ---- Conv2d ---------------------------------------------------------------------------------
TEST(Conv2d, OutputShapes) {
  Generator gen(2);
  const Tensor x = randn({2, 3, 9, 9}, gen);
  EXPECT_EQ(nn::Conv2d(3, 4, 3).forward(x).shape(), Shape({2, 4, 7, 7}));
  EXPECT_EQ(nn::Conv2d(3, 4, 3, 1, 1).forward(x).shape(), Shape({2, 4, 9, 9}));
  EXPECT_EQ(nn::Conv2d(3, 8, 3, 2, 0).forward(x).shape(), Shape({2, 8, 4, 4}));
  EXPECT_EQ(nn::Conv2d(3, 5, 5, 2, 2).forward(x).shape(), Shape({2, 5, 5, 5}));
  EXPECT_EQ(nn::Conv2d(3, 1, 1).forward(x).shape(), Shape({2, 1, 9, 9}));
}

TEST(Conv2d, WeightShapeAndInitBound) {
  Generator gen(3);
  nn::Conv2d conv(4, 6, 3, 1, 0, true, gen);
  EXPECT_EQ(conv.weight.shape(), Shape({6, 4, 3, 3}));
  EXPECT_EQ(conv.bias.shape(), Shape({6}));
  const double bound = 1.0 / std::sqrt(4.0 * 3 * 3);
  EXPECT_LE(max_abs(conv.weight), bound);
  EXPECT_GT(max_abs(conv.weight), 0.9 * bound);
  EXPECT_LE(max_abs(conv.bias), bound);
}

TEST(Conv2d, ForwardMatchesFunctionalConv) {
  Generator gen(4);
  nn::Conv2d conv(2, 3, 3, 1, 1, true, gen);
  const Tensor x = randn({2, 2, 5, 5}, gen);
  EXPECT_TRUE(bit_equal(conv.forward(x), conv2d(x, conv.weight, conv.bias, 1, 1)));
}

TEST(Conv2d, WrongChannelCountNamesLayerAndExpectedLayout) {
  nn::Conv2d conv(3, 8, 3);
  const std::string msg = value_error_message([&] { conv.forward(zeros({2, 1, 8, 8})); });
  EXPECT_THAT(msg, HasSubstr("Conv2d(3 -> 8"));
  EXPECT_THAT(msg, HasSubstr("[N, 3, H, W]"));
  EXPECT_THAT(msg, HasSubstr("[2, 1, 8, 8]"));
  const std::string flat = value_error_message([&] { conv.forward(zeros({2, 192})); });
  EXPECT_THAT(flat, HasSubstr("[N, 3, H, W]"));
}

TEST(Conv2d, RejectsInvalidConfiguration) {
  EXPECT_THROW(nn::Conv2d(0, 4, 3), ValueError);
  EXPECT_THROW(nn::Conv2d(3, 4, 0), ValueError);
  EXPECT_THROW(nn::Conv2d(3, 4, 3, 0), ValueError);
  EXPECT_THROW(nn::Conv2d(3, 4, 3, 1, -1), ValueError);
}

TEST(Pooling, LayersMatchFunctionalFormsAndDefaultStrideIsKernel) {
  Generator gen(5);
  const Tensor x = randn({2, 3, 8, 8}, gen);
  EXPECT_TRUE(bit_equal(nn::MaxPool2d(2).forward(x), max_pool2d(x, 2, 2)));
  EXPECT_TRUE(bit_equal(nn::AvgPool2d(2).forward(x), avg_pool2d(x, 2, 2)));
  EXPECT_TRUE(bit_equal(nn::MaxPool2d(3, 1, 1).forward(x), max_pool2d(x, 3, 1, 1)));
  EXPECT_EQ(nn::MaxPool2d(2).forward(x).shape(), Shape({2, 3, 4, 4}));
}

// ---- Conv1d ---------------------------------------------------------------------------------
TEST(Conv1d, OutputShapes) {
  Generator gen(20);
  const Tensor x = randn({2, 3, 9}, gen);
  EXPECT_EQ(nn::Conv1d(3, 4, 3).forward(x).shape(), Shape({2, 4, 7}));
  EXPECT_EQ(nn::Conv1d(3, 4, 3, 1, 1).forward(x).shape(), Shape({2, 4, 9}));
  EXPECT_EQ(nn::Conv1d(3, 8, 3, 2, 0).forward(x).shape(), Shape({2, 8, 4}));
  EXPECT_EQ(nn::Conv1d(3, 5, 5, 2, 2).forward(x).shape(), Shape({2, 5, 5}));
  EXPECT_EQ(nn::Conv1d(3, 1, 1).forward(x).shape(), Shape({2, 1, 9}));
  EXPECT_EQ(nn::Conv1d(3, 2, 9).forward(x).shape(), Shape({2, 2, 1}));
}

TEST(Conv1d, WeightShapeAndInitBound) {
  Generator gen(21);
  nn::Conv1d conv(4, 6, 3, 1, 0, true, gen);
  EXPECT_EQ(conv.weight.shape(), Shape({6, 4, 3}));
  EXPECT_EQ(conv.bias.shape(), Shape({6}));
  const double bound = 1.0 / std::sqrt(4.0 * 3);  // Kaiming-uniform with a = sqrt(5), fan_in C*K
  EXPECT_LE(max_abs(conv.weight), bound);
  EXPECT_GT(max_abs(conv.weight), 0.9 * bound);
  EXPECT_LE(max_abs(conv.bias), bound);
  EXPECT_EQ(names_of(conv.state_dict()), (std::vector<std::string>{"weight", "bias"}));
  nn::Conv1d no_bias(4, 6, 3, 1, 0, false);
  EXPECT_FALSE(no_bias.bias.defined());
  EXPECT_EQ(names_of(no_bias.state_dict()), (std::vector<std::string>{"weight"}));
}

TEST(Conv1d, ForwardMatchesDirectSum) {
  Generator gen(22);
  for (auto [stride, padding] : {std::pair<int64_t, int64_t>{1, 0}, {2, 1}, {3, 2}}) {
    const int64_t n = 2, c = 3, o = 4, k = 3, len = 10;
    nn::Conv1d conv(c, o, k, stride, padding, true, gen);
    const Tensor x = randn({n, c, len}, gen);
    const Tensor y = conv.forward(x);
    const int64_t out_len = (len + 2 * padding - k) / stride + 1;
    ASSERT_EQ(y.shape(), Shape({n, o, out_len}));
    const auto xv = x.to_vector<double>(), wv = conv.weight.to_vector<double>(),
               bv = conv.bias.to_vector<double>();
    std::vector<double> expected;
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t oc = 0; oc < o; ++oc) {
        for (int64_t l = 0; l < out_len; ++l) {
          double acc = bv[oc];
          for (int64_t ic = 0; ic < c; ++ic) {
            for (int64_t kk = 0; kk < k; ++kk) {
              const int64_t at = l * stride + kk - padding;
              if (at < 0 || at >= len) continue;
              acc += wv[(oc * c + ic) * k + kk] * xv[(i * c + ic) * len + at];
            }
          }
          expected.push_back(acc);
        }
      }
    }
    EXPECT_TRUE(all_close(y, from_vector<double>(expected, y.shape()), 1e-5, 1e-5))
        << "stride " << stride << ", padding " << padding;
  }
}

TEST(Conv1d, ValidatesInputAndConfiguration) {
  nn::Conv1d conv(3, 8, 3);
  std::string msg = value_error_message([&] { conv.forward(zeros({2, 1, 8})); });
  EXPECT_THAT(msg, HasSubstr("Conv1d(3 -> 8"));
  EXPECT_THAT(msg, HasSubstr("[N, 3, L]"));
  EXPECT_THAT(msg, HasSubstr("[2, 1, 8]"));
  EXPECT_THAT(value_error_message([&] { conv.forward(zeros({2, 24})); }), HasSubstr("[N, 1, L]"));
  msg = value_error_message([&] { conv.forward(zeros({2, 3, 2})); });
  EXPECT_THAT(msg, HasSubstr("shorter than the kernel 3"));
  EXPECT_THROW(nn::Conv1d(0, 4, 3), ValueError);
  EXPECT_THROW(nn::Conv1d(3, 4, 0), ValueError);
  EXPECT_THROW(nn::Conv1d(3, 4, 3, 0), ValueError);
  EXPECT_THROW(nn::Conv1d(3, 4, 3, 1, -1), ValueError);
}

TEST(Conv1d, CloneIsIndependent) {
  Generator gen(23);
  nn::Conv1d conv(2, 3, 3, 2, 1, true, gen);
  EXPECT_TRUE(clones_independently(conv, randn({2, 2, 7}, gen)));
  nn::Conv1d no_bias(2, 3, 3, 1, 0, false, gen);
  EXPECT_TRUE(clones_independently(no_bias, randn({1, 2, 5}, gen)));
}

TEST(Conv1d, GradcheckInputAndParameters) {
  Generator gen(24);
  nn::Conv1d conv(2, 3, 3, 2, 1, true, gen);
  to_float64(conv);
  auto r = gradcheck_module(conv, leaf64({2, 2, 7}, gen), gen);
  EXPECT_TRUE(r.ok) << r.message;
  nn::Conv1d no_bias(2, 2, 2, 1, 0, false, gen);
  to_float64(no_bias);
  r = gradcheck_module(no_bias, leaf64({1, 2, 5}, gen), gen);
  EXPECT_TRUE(r.ok) << r.message;
}

// ---- GlobalAvgPool --------------------------------------------------------------------------
TEST(GlobalAvgPool, AveragesEverythingAfterTheChannels) {
  Generator gen(25);
  const Tensor x = randn({2, 3, 4, 5}, gen);
  const Tensor y = nn::GlobalAvgPool().forward(x);
  ASSERT_EQ(y.shape(), Shape({2, 3}));
  const auto xv = x.to_vector<double>();
  std::vector<double> expected(6, 0.0);
  for (size_t i = 0; i < xv.size(); ++i) expected[i / 20] += xv[i] / 20;
  EXPECT_TRUE(all_close(y, from_vector<double>(expected, {2, 3})));
  EXPECT_EQ(nn::GlobalAvgPool().forward(randn({2, 3, 7}, gen)).shape(), Shape({2, 3}));
  EXPECT_EQ(nn::GlobalAvgPool().forward(randn({2, 3, 2, 2, 2}, gen)).shape(), Shape({2, 3}));
}

TEST(GlobalAvgPool, RejectsInputWithoutSpatialDimsAndClones) {
  nn::GlobalAvgPool pool;
  const std::string msg = value_error_message([&] { pool.forward(zeros({4, 3})); });
  EXPECT_THAT(msg, HasSubstr("GlobalAvgPool"));
  EXPECT_THAT(msg, HasSubstr("[4, 3]"));
  EXPECT_EQ(pool.describe(), "GlobalAvgPool");
  EXPECT_TRUE(pool.named_parameters().empty());
  Generator gen(26);
  EXPECT_TRUE(clones_independently(pool, randn({2, 3, 2, 2}, gen)));
}

TEST(GlobalAvgPool, Gradcheck) {
  Generator gen(27);
  nn::GlobalAvgPool pool;
  const auto r = gradcheck_module(pool, leaf64({2, 3, 2, 3}, gen), gen);
  EXPECT_TRUE(r.ok) << r.message;
}

// ---- Residual -------------------------------------------------------------------------------
std::shared_ptr<nn::Sequential> conv_body(Generator& gen) {
  return std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::Conv2d>(3, 3, 3, 1, 1, true, gen), std::make_shared<nn::BatchNorm2d>(3),
      std::make_shared<nn::ReLU>(), std::make_shared<nn::Conv2d>(3, 3, 3, 1, 1, false, gen)});
}

TEST(Residual, AddsTheBodyOutputToTheInput) {
  Generator gen(28);
  auto body = std::make_shared<nn::Linear>(4, 4, true, gen);
  nn::Residual res(body);
  const Tensor x = randn({3, 4}, gen);
  EXPECT_TRUE(bit_equal(res.forward(x), x + body->forward(x)));
  EXPECT_EQ(res.body, body);
  EXPECT_EQ(res.describe(), "Residual(Linear(4 -> 4))");
  EXPECT_THROW(nn::Residual(nullptr), ValueError);
}

TEST(Residual, RegistersTheBodyAsChildBody) {
  Generator gen(29);
  nn::Residual res(conv_body(gen));
  ASSERT_EQ(res.named_children().size(), 1u);
  EXPECT_EQ(res.named_children()[0].first, "body");
  EXPECT_EQ(names_of(res.state_dict()),
            (std::vector<std::string>{"body.0.weight", "body.0.bias", "body.1.weight",
                                      "body.1.bias", "body.3.weight", "body.1.running_mean",
                                      "body.1.running_var", "body.1.num_batches_tracked"}));
  EXPECT_EQ(res.forward(randn({2, 3, 5, 5}, gen)).shape(), Shape({2, 3, 5, 5}));
}

TEST(Residual, ShapeChangingBodyNamesBothShapes) {
  nn::Residual res(std::make_shared<nn::Linear>(4, 3));
  const std::string msg = value_error_message([&] { res.forward(zeros({2, 4})); });
  EXPECT_THAT(msg, HasSubstr("Residual(Linear(4 -> 3))"));
  EXPECT_THAT(msg, HasSubstr("[2, 3]"));
  EXPECT_THAT(msg, HasSubstr("[2, 4]"));
}

TEST(Residual, CloneCopiesTheBody) {
  Generator gen(30);
  nn::Residual res(conv_body(gen));
  res.forward(randn({2, 3, 4, 4}, gen));  // moves the running statistics
  res.eval();
  auto copy = std::dynamic_pointer_cast<nn::Residual>(res.clone());
  ASSERT_NE(copy, nullptr);
  EXPECT_NE(copy->body, res.body);
  EXPECT_FALSE(copy->is_training());
  const auto bo = res.named_buffers(), bc = copy->named_buffers();
  for (size_t i = 0; i < bo.size(); ++i) EXPECT_TRUE(bit_equal(bc[i].second, bo[i].second));
  EXPECT_TRUE(clones_independently(res, randn({2, 3, 4, 4}, gen)));
}

TEST(Residual, GradcheckInputAndParameters) {
  Generator gen(31);
  nn::Residual mlp(std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::Linear>(4, 5, true, gen), std::make_shared<nn::Tanh>(),
      std::make_shared<nn::Linear>(5, 4, true, gen)}));
  to_float64(mlp);
  auto r = gradcheck_module(mlp, leaf64({3, 4}, gen), gen);
  EXPECT_TRUE(r.ok) << r.message;
  nn::Residual conv(std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::Conv2d>(2, 2, 3, 1, 1, true, gen), std::make_shared<nn::Tanh>()}));
  to_float64(conv);
  r = gradcheck_module(conv, leaf64({1, 2, 3, 3}, gen), gen);
  EXPECT_TRUE(r.ok) << r.message;
}

// ---- PositionalEmbedding --------------------------------------------------------------------
TEST(PositionalEmbedding, InitIsNormalWithStd002) {
  Generator gen(32);
  nn::PositionalEmbedding pos(512, 64, gen);
  ASSERT_EQ(pos.weight.shape(), Shape({512, 64}));
  EXPECT_EQ(names_of(pos.state_dict()), (std::vector<std::string>{"weight"}));
  const auto w = pos.weight.to_vector<double>();
  double mean = 0, sq = 0;
  for (double v : w) mean += v;
  mean /= static_cast<double>(w.size());
  for (double v : w) sq += (v - mean) * (v - mean);
  EXPECT_NEAR(mean, 0.0, 5e-4);
  EXPECT_NEAR(std::sqrt(sq / static_cast<double>(w.size())), 0.02, 5e-4);
}

TEST(PositionalEmbedding, AddsTheFirstTRows) {
  Generator gen(33);
  nn::PositionalEmbedding pos(8, 3, gen);
  const Tensor x = randn({2, 5, 3}, gen);
  const auto y = pos.forward(x).to_vector<float>();
  const auto xv = x.to_vector<float>(), w = pos.weight.to_vector<float>();
  ASSERT_EQ(y.size(), xv.size());
  for (size_t i = 0; i < y.size(); ++i) EXPECT_EQ(y[i], xv[i] + w[i % 15]) << i;
  // Rows past T get no gradient.
  sum(pos.forward(x)).backward();
  const auto g = pos.weight.grad().to_vector<float>();
  for (size_t i = 0; i < g.size(); ++i) EXPECT_EQ(g[i], i < 15 ? 2.0f : 0.0f) << i;
}

TEST(PositionalEmbedding, ValidatesLengthAndWidth) {
  nn::PositionalEmbedding pos(8, 4);
  std::string msg = value_error_message([&] { pos.forward(zeros({2, 9, 4})); });
  EXPECT_THAT(msg, HasSubstr("T = 9"));
  EXPECT_THAT(msg, HasSubstr("max_len = 8"));
  msg = value_error_message([&] { pos.forward(zeros({2, 5, 3})); });
  EXPECT_THAT(msg, HasSubstr("[N, T, 4]"));
  EXPECT_THAT(msg, HasSubstr("[2, 5, 3]"));
  EXPECT_EQ(pos.forward(zeros({1, 8, 4})).shape(), Shape({1, 8, 4}));
  EXPECT_THROW(nn::PositionalEmbedding(0, 4), ValueError);
}

TEST(PositionalEmbedding, ClonesAndGradchecks) {
  Generator gen(34);
  nn::PositionalEmbedding pos(5, 4, gen);
  EXPECT_TRUE(clones_independently(pos, randn({2, 3, 4}, gen)));
  to_float64(pos);
  const auto r = gradcheck_module(pos, leaf64({2, 3, 4}, gen), gen);
  EXPECT_TRUE(r.ok) << r.message;
}

// ---- Dropout --------------------------------------------------------------------------------
TEST(Dropout, EvalModeIsIdentity) {
  Generator gen(6);
  const Tensor x = randn({32, 16}, gen);
  nn::Dropout drop(0.5, 1);
  drop.eval();
  EXPECT_TRUE(bit_equal(drop.forward(x), x));
}

TEST(Dropout, TrainModeZeroesAboutPAndScalesTheRest) {
  Generator gen(7);
  const Tensor x = add(rand({100, 200}, gen), 1.0);  // in [1, 2): never zero
  const double p = 0.3;
  nn::Dropout drop(p, 42);
  const auto in = x.to_vector<float>();
  const auto out = drop.forward(x).to_vector<float>();
  int64_t zeroed = 0;
  for (size_t i = 0; i < in.size(); ++i) {
    if (out[i] == 0.0f) {
      ++zeroed;
    } else {
      ASSERT_NEAR(out[i], in[i] / (1 - p), 1e-6 * std::fabs(in[i] / (1 - p))) << i;
    }
  }
  const double frac = static_cast<double>(zeroed) / static_cast<double>(in.size());
  // 20000 Bernoulli(0.3) draws: the standard deviation of the fraction is about 0.0032.
  EXPECT_NEAR(frac, p, 0.015);
}

TEST(Dropout, SameSeedReproducesTheMask) {
  const Tensor x = ones({50, 40});
  nn::Dropout a(0.5, 123), b(0.5, 123), c(0.5, 124);
  const Tensor ya = a.forward(x);
  EXPECT_TRUE(bit_equal(ya, b.forward(x)));
  EXPECT_FALSE(bit_equal(ya, c.forward(x)));
  // The stream advances, so a second call draws a new mask.
  EXPECT_FALSE(bit_equal(ya, a.forward(x)));
  // A generator reset to the same offset repeats it.
  a.generator().set_offset(0);
  EXPECT_TRUE(bit_equal(ya, a.forward(x)));
}

TEST(Dropout, ZeroAndOneProbabilities) {
  const Tensor x = ones({10, 10});
  nn::Dropout keep(0.0), drop_all(1.0);
  EXPECT_TRUE(bit_equal(keep.forward(x), x));
  EXPECT_EQ(max_abs(drop_all.forward(x)), 0.0);
  EXPECT_THROW(nn::Dropout(1.5), ValueError);
  EXPECT_THROW(nn::Dropout(-0.1), ValueError);
}

// ---- normalisation --------------------------------------------------------------------------
TEST(BatchNorm, ValidatesInputShape) {
  nn::BatchNorm1d bn1(4);
  nn::BatchNorm2d bn2(4);
  EXPECT_THAT(value_error_message([&] { bn1.forward(zeros({8, 3})); }), HasSubstr("[N, 4]"));
  EXPECT_THAT(value_error_message([&] {
                bn1.forward(zeros({8, 4, 2, 2}));
              }),
              HasSubstr("BatchNorm1d(4)"));
  EXPECT_THAT(value_error_message([&] { bn2.forward(zeros({8, 4})); }), HasSubstr("[N, 4, H, W]"));
  EXPECT_THAT(value_error_message([&] {
                bn2.forward(zeros({8, 3, 2, 2}));
              }),
              HasSubstr("BatchNorm2d(4)"));
  EXPECT_EQ(bn1.forward(zeros({8, 4})).shape(), Shape({8, 4}));
  EXPECT_EQ(bn2.forward(zeros({8, 4, 3, 3})).shape(), Shape({8, 4, 3, 3}));
}

TEST(BatchNorm, TrainingNormalisesPerChannelAndUpdatesRunningStats) {
  Generator gen(8);
  nn::BatchNorm1d bn(3);
  // Channel c has mean about c and spread about c + 1.
  Tensor x = randn({64, 3}, gen) * from_vector<float>({1, 2, 3}, {1, 3}) +
             from_vector<float>({0, 1, 2}, {1, 3});
  const Tensor y = bn.forward(x);
  const auto xv = x.to_vector<double>(), yv = y.to_vector<double>();
  for (int c = 0; c < 3; ++c) {
    double mx = 0, my = 0, vx = 0, vy = 0;
    for (int n = 0; n < 64; ++n) mx += xv[n * 3 + c], my += yv[n * 3 + c];
    mx /= 64, my /= 64;
    for (int n = 0; n < 64; ++n) {
      vx += (xv[n * 3 + c] - mx) * (xv[n * 3 + c] - mx);
      vy += (yv[n * 3 + c] - my) * (yv[n * 3 + c] - my);
    }
    EXPECT_NEAR(my, 0.0, 1e-5) << c;
    EXPECT_NEAR(vy / 64, 1.0, 1e-3) << c;  // biased variance, eps = 1e-5
    // running = 0.9 * initial + 0.1 * batch statistic (unbiased variance), as in PyTorch.
    EXPECT_NEAR(bn.running_mean.to_vector<double>()[c], 0.1 * mx, 1e-5) << c;
    EXPECT_NEAR(bn.running_var.to_vector<double>()[c], 0.9 + 0.1 * vx / 63, 1e-4) << c;
  }
  EXPECT_EQ(bn.num_batches_tracked.item<int64_t>(), 1);
  bn.eval();
  bn.forward(x);
  EXPECT_EQ(bn.num_batches_tracked.item<int64_t>(), 1);
}

TEST(LayerNorm, NormalisesEachRowOverTheLastDims) {
  Generator gen(9);
  nn::LayerNorm ln({8});
  const Tensor x = randn({5, 8}, gen) * 3.0 + 2.0;
  const auto y = ln.forward(x).to_vector<double>();
  for (int r = 0; r < 5; ++r) {
    double m = 0, v = 0;
    for (int k = 0; k < 8; ++k) m += y[r * 8 + k];
    m /= 8;
    for (int k = 0; k < 8; ++k) v += (y[r * 8 + k] - m) * (y[r * 8 + k] - m);
    EXPECT_NEAR(m, 0.0, 1e-5) << r;
    EXPECT_NEAR(v / 8, 1.0, 1e-3) << r;
  }
  // Two normalised dims: each [2, 3] block of a [4, 2, 3] input.
  nn::LayerNorm ln2({2, 3});
  EXPECT_EQ(ln2.weight.shape(), Shape({2, 3}));
  const auto z = ln2.forward(randn({4, 2, 3}, gen)).to_vector<double>();
  for (int r = 0; r < 4; ++r) {
    double m = 0, v = 0;
    for (int k = 0; k < 6; ++k) m += z[r * 6 + k];
    m /= 6;
    for (int k = 0; k < 6; ++k) v += (z[r * 6 + k] - m) * (z[r * 6 + k] - m);
    EXPECT_NEAR(m, 0.0, 1e-5) << r;
    EXPECT_NEAR(v / 6, 1.0, 1e-3) << r;
  }
  EXPECT_THROW(ln.forward(zeros({5, 7})), ValueError);
}

TEST(LayerNorm, AppliesWeightAndBias) {
  Generator gen(10);
  nn::LayerNorm ln({4});
  const Tensor x = randn({3, 4}, gen);
  const Tensor plain = ln.forward(x).detach().clone();
  ln.weight.detach().fill_(2.0);
  ln.bias.detach().fill_(-1.0);
  EXPECT_TRUE(all_close(ln.forward(x), plain * 2.0 - 1.0));
}

// ---- embedding, flatten, sequential, activations ---------------------------------------------
TEST(Embedding, LooksUpRows) {
  Generator gen(11);
  nn::Embedding emb(10, 4, gen);
  EXPECT_EQ(emb.weight.shape(), Shape({10, 4}));
  const std::vector<int64_t> idx{3, 0, 9, 3, 5, 1};
  const Tensor out = emb.forward(from_vector<int64_t>(idx, {2, 3}));
  ASSERT_EQ(out.shape(), Shape({2, 3, 4}));
  const auto w = emb.weight.to_vector<float>();
  const auto o = out.to_vector<float>();
  for (size_t i = 0; i < idx.size(); ++i) {
    for (int d = 0; d < 4; ++d) EXPECT_EQ(o[i * 4 + d], w[idx[i] * 4 + d]) << i << "," << d;
  }
}

TEST(Flatten, KeepsLeadingDims) {
  Generator gen(12);
  const Tensor x = randn({2, 3, 4, 5}, gen);
  const Tensor y = nn::Flatten().forward(x);
  EXPECT_EQ(y.shape(), Shape({2, 60}));
  EXPECT_EQ(y.to_vector<float>(), x.to_vector<float>());
  EXPECT_EQ(nn::Flatten(2).forward(x).shape(), Shape({2, 3, 20}));
}

TEST(Sequential, ForwardEqualsManualComposition) {
  Generator gen(13);
  auto fc1 = std::make_shared<nn::Linear>(6, 5, true, gen);
  auto fc2 = std::make_shared<nn::Linear>(5, 2, true, gen);
  nn::Sequential seq{fc1, std::make_shared<nn::Tanh>(), fc2};
  ASSERT_EQ(seq.size(), 3u);
  EXPECT_EQ(seq[0], fc1);
  EXPECT_EQ(seq[2], fc2);
  const Tensor x = randn({4, 6}, gen);
  EXPECT_TRUE(bit_equal(seq.forward(x), fc2->forward(tanh(fc1->forward(x)))));
  EXPECT_TRUE(bit_equal(seq(x), seq.forward(x)));
}

TEST(Sequential, AddNamesChildrenAndChains) {
  nn::Sequential seq;
  seq.add(std::make_shared<nn::Linear>(3, 3))
      .add(std::make_shared<nn::ReLU>(), "act")
      .add(std::make_shared<nn::Linear>(3, 1), "out");
  ASSERT_EQ(seq.size(), 3u);
  EXPECT_EQ(seq.named_children()[0].first, "0");
  EXPECT_EQ(seq.named_children()[1].first, "act");
  EXPECT_EQ(seq.named_children()[2].first, "out");
  EXPECT_EQ(seq.named_parameters()[2].first, "out.weight");
  EXPECT_THROW(seq.add(nullptr), ValueError);
}

TEST(Activations, LayersEqualFunctionalForms) {
  Generator gen(14);
  const Tensor x = randn({7, 9}, gen) * 3.0;
  EXPECT_TRUE(bit_equal(nn::ReLU().forward(x), relu(x)));
  EXPECT_TRUE(bit_equal(nn::GELU().forward(x), gelu(x)));
  EXPECT_TRUE(bit_equal(nn::Tanh().forward(x), tanh(x)));
  EXPECT_TRUE(bit_equal(nn::Sigmoid().forward(x), sigmoid(x)));
  // And the functional forms are what their names say.
  const auto xv = x.to_vector<double>();
  const auto r = relu(x).to_vector<double>(), s = sigmoid(x).to_vector<double>(),
             g = gelu(x).to_vector<double>();
  for (size_t i = 0; i < xv.size(); ++i) {
    EXPECT_EQ(r[i], std::max(xv[i], 0.0));
    EXPECT_NEAR(s[i], 1 / (1 + std::exp(-xv[i])), 1e-6);
    EXPECT_NEAR(g[i], 0.5 * xv[i] * (1 + std::erf(xv[i] / std::sqrt(2.0))), 1e-5);
  }
  EXPECT_EQ(nn::ReLU().describe(), "ReLU");
  EXPECT_EQ(nn::Sigmoid().describe(), "Sigmoid");
}

}  // namespace
}  // namespace dtrain
