// Conv1d, GlobalAvgPool, Residual, PositionalEmbedding, CausalSelfAttention and TransformerBlock
// against PyTorch 1.13: forward outputs and the gradients of sum(out * w) for the input and every
// parameter, with the weights of tests/fixtures/golden_layers.txt
// (scripts/make_golden_fixtures.py).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "dtrain/nn/attention.h"
#include "dtrain/nn/layers.h"
#include "testutil.h"

namespace dtrain {
namespace {

using testutil::all_close;
using testutil::Fixture;

/// Loads the fixture's `name.<parameter>` tensors into m (its buffers stay as they are), runs
/// `name.x` through it in training mode and compares the output and all gradients with PyTorch's.
void expect_matches_pytorch(nn::Module& m, const std::string& name) {
  const Fixture f("golden_layers.txt");
  nn::NamedTensors state;
  for (auto& [param, p] : m.named_parameters()) state.emplace_back(param, f[name + "." + param]);
  for (auto& [buffer, b] : m.named_buffers()) state.emplace_back(buffer, b.clone());
  m.load_state_dict(state);
  Tensor x = f[name + ".x"].set_requires_grad();
  const Tensor out = m.forward(x);
  EXPECT_TRUE(all_close(out, f[name + ".out"], 1e-5, 1e-6)) << name << ".out";
  sum(mul(out, f[name + ".w"])).backward();
  // A gradient element is a float32 sum of terms about as large as the pass's gradients, and its
  // rounding error scales with those terms, not with the sum. Where they cancel (the bias of a
  // convolution feeding BatchNorm, the key bias of attention: 0 analytically) both sides hold
  // rounding noise, which another compiler rounds differently (~1e-6 with clang against
  // PyTorch's 4e-7 for the residual block). So the absolute tolerance scales with the largest
  // reference gradient of the pass (at least 1), as an error bound for a sum scales with the sum
  // of |terms|; only elements near 0 are affected, the others are held by rtol as before.
  double largest = 1;
  const auto widen = [&](const Tensor& t) {
    for (double v : t.to_vector<double>()) largest = std::max(largest, std::fabs(v));
  };
  widen(f[name + ".grad.x"]);
  for (auto& [param, p] : m.named_parameters()) widen(f[name + ".grad." + param]);
  const double grad_atol = 1e-6 * largest;
  EXPECT_TRUE(all_close(x.grad(), f[name + ".grad.x"], 1e-5, grad_atol)) << name << ".grad.x";
  for (auto& [param, p] : m.named_parameters()) {
    ASSERT_TRUE(p.grad().defined()) << name << "." << param;
    EXPECT_TRUE(all_close(p.grad(), f[name + ".grad." + param], 1e-5, grad_atol))
        << name << ".grad." << param;
  }
}

TEST(GoldenLayers, Conv1dStride2Padding1) {
  nn::Conv1d conv(3, 4, 3, 2, 1);
  expect_matches_pytorch(conv, "conv1d");
}

TEST(GoldenLayers, Conv1dWithoutBias) {
  nn::Conv1d conv(2, 3, 5, 1, 2, /*bias=*/false);
  expect_matches_pytorch(conv, "conv1d_nobias");
}

TEST(GoldenLayers, GlobalAvgPoolIsAdaptiveAvgPoolThenFlatten) {
  nn::GlobalAvgPool pool;
  expect_matches_pytorch(pool, "global_avg_pool");
}

TEST(GoldenLayers, ResidualConvBlock) {
  auto body = std::make_shared<nn::Sequential>();
  body->add(std::make_shared<nn::Conv2d>(3, 3, 3, 1, 1))
      .add(std::make_shared<nn::BatchNorm2d>(3))
      .add(std::make_shared<nn::ReLU>())
      .add(std::make_shared<nn::Conv2d>(3, 3, 3, 1, 1, /*bias=*/false));
  nn::Residual res(body);
  expect_matches_pytorch(res, "residual");
}

TEST(GoldenLayers, PositionalEmbedding) {
  nn::PositionalEmbedding pos(8, 6);
  expect_matches_pytorch(pos, "positional");
}

TEST(GoldenLayers, CausalSelfAttentionTwoHeads) {
  nn::CausalSelfAttention attn(8, 2);
  expect_matches_pytorch(attn, "attention");
}

TEST(GoldenLayers, CausalSelfAttentionFourHeads) {
  nn::CausalSelfAttention attn(16, 4);
  expect_matches_pytorch(attn, "attention_h4");
}

TEST(GoldenLayers, TransformerBlock) {
  nn::TransformerBlock block(8, 2, 4);
  expect_matches_pytorch(block, "block");
}

TEST(GoldenLayers, TransformerBlockMlpRatio2ThreeHeads) {
  nn::TransformerBlock block(12, 3, 2);
  expect_matches_pytorch(block, "block_r2");
}

}  // namespace
}  // namespace dtrain
