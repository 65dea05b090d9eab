// Loss objects against the functional losses, and cross-entropy against log_softmax + NLL and
// hand-computed values (with and without label smoothing).
#include "dtrain/nn/loss.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "testutil.h"

namespace dtrain {
namespace {

using testutil::all_close;
using testutil::bit_equal;

struct Logits {
  Tensor logits, targets;
};

Logits example(uint64_t seed, int64_t n = 6, int64_t c = 4) {
  Generator gen(seed);
  return {randn({n, c}, gen) * 2.0, randint(0, c, {n}, gen)};
}

TEST(Loss, CrossEntropyLossObjectEqualsFunction) {
  const auto [x, y] = example(1);
  EXPECT_TRUE(bit_equal(nn::CrossEntropyLoss()(x, y), cross_entropy(x, y)));
  EXPECT_TRUE(bit_equal(nn::CrossEntropyLoss(0.2)(x, y), cross_entropy(x, y, 0.2)));
  EXPECT_FALSE(bit_equal(nn::CrossEntropyLoss(0.2)(x, y), cross_entropy(x, y)));
}

TEST(Loss, NLLLossObjectEqualsFunction) {
  const auto [x, y] = example(2);
  const Tensor lp = log_softmax(x, 1);
  EXPECT_TRUE(bit_equal(nn::NLLLoss()(lp, y), nll_loss(lp, y)));
}

TEST(Loss, MSELossObjectEqualsFunctionAndFormula) {
  Generator gen(3);
  const Tensor a = randn({5, 3}, gen), b = randn({5, 3}, gen);
  const Tensor loss = nn::MSELoss()(a, b);
  EXPECT_TRUE(bit_equal(loss, mse_loss(a, b)));
  const auto av = a.to_vector<double>(), bv = b.to_vector<double>();
  double expected = 0;
  for (size_t i = 0; i < av.size(); ++i) expected += (av[i] - bv[i]) * (av[i] - bv[i]);
  EXPECT_NEAR(loss.item<double>(), expected / static_cast<double>(av.size()), 1e-6);
}

TEST(Loss, CrossEntropyEqualsNllOfLogSoftmax) {
  const auto [x0, y] = example(4, 8, 5);
  Tensor x1 = x0.clone(), x2 = x0.clone();
  x1.set_requires_grad();
  x2.set_requires_grad();
  const Tensor fused = cross_entropy(x1, y);
  const Tensor composed = nll_loss(log_softmax(x2, 1), y);
  EXPECT_TRUE(all_close(fused, composed, 1e-6, 1e-7));
  fused.backward();
  composed.backward();
  EXPECT_TRUE(all_close(x1.grad(), x2.grad(), 1e-5, 1e-7));
}

TEST(Loss, CrossEntropyByHandWithLabelSmoothing) {
  const auto [x, y] = example(5, 4, 3);
  const double eps = 0.1;
  const auto xv = x.to_vector<double>();
  const auto yv = y.to_vector<int64_t>();
  double plain = 0, smooth = 0;
  for (int64_t i = 0; i < 4; ++i) {
    double mx = -1e300, z = 0;
    for (int64_t c = 0; c < 3; ++c) mx = std::max(mx, xv[i * 3 + c]);
    for (int64_t c = 0; c < 3; ++c) z += std::exp(xv[i * 3 + c] - mx);
    const auto log_p = [&](int64_t c) { return xv[i * 3 + c] - mx - std::log(z); };
    plain += -log_p(yv[i]);
    // PyTorch: (1 - eps) * nll + eps * mean over classes of -log p.
    double uniform = 0;
    for (int64_t c = 0; c < 3; ++c) uniform += -log_p(c);
    smooth += (1 - eps) * -log_p(yv[i]) + eps * uniform / 3;
  }
  EXPECT_NEAR(cross_entropy(x, y).item<double>(), plain / 4, 1e-5);
  EXPECT_NEAR(nn::CrossEntropyLoss(eps)(x, y).item<double>(), smooth / 4, 1e-5);
}

}  // namespace
}  // namespace dtrain
