// CausalSelfAttention and TransformerBlock: shapes, parameter names, input validation, a direct
// reference computation, causality, dropout, clone(), gradcheck, and finite gradients at a training
// size.
#include "dtrain/nn/attention.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "dtrain/tensor/ops.h"
#include "layer_checks.h"
#include "testutil.h"

namespace dtrain {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testutil::all_close;
using testutil::bit_equal;
using testutil::clones_independently;
using testutil::gradcheck_module;
using testutil::to_float64;

std::vector<std::string> names_of(const nn::NamedTensors& named) {
  std::vector<std::string> names;
  for (const auto& [name, t] : named) names.push_back(name);
  return names;
}

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

/// x with every position from `from` on replaced by fresh random values.
Tensor change_from(const Tensor& x, int64_t from, Generator& gen) {
  Tensor y = x.detach().clone();
  const Tensor noise = randn(x.shape(), gen, x.dtype());
  const int64_t t = x.size(1), d = x.size(2);
  for (int64_t n = 0; n < x.size(0); ++n) {
    for (int64_t i = from; i < t; ++i) {
      for (int64_t k = 0; k < d; ++k) {
        const int64_t at = (n * t + i) * d + k;
        y.data<float>()[at] = noise.data<float>()[at];
      }
    }
  }
  return y;
}

/// Every output position before `until` is the same in a and b.
::testing::AssertionResult same_prefix(const Tensor& a, const Tensor& b, int64_t until) {
  return all_close(slice(a, 1, 0, until), slice(b, 1, 0, until), 0, 1e-6);
}

/// Attention computed head by head with plain loops in double, from the module's weights.
std::vector<double> reference_attention(nn::CausalSelfAttention& attn, const Tensor& x,
                                        int64_t heads) {
  const int64_t n = x.size(0), t = x.size(1), d = x.size(2), hd = d / heads;
  const auto xv = x.to_vector<double>();
  const auto wq = attn.qkv->weight.to_vector<double>(), bq = attn.qkv->bias.to_vector<double>();
  const auto wp = attn.proj->weight.to_vector<double>(), bp = attn.proj->bias.to_vector<double>();
  std::vector<double> qkv(n * t * 3 * d, 0.0), mixed(n * t * d, 0.0), out(n * t * d, 0.0);
  for (int64_t r = 0; r < n * t; ++r) {
    for (int64_t o = 0; o < 3 * d; ++o) {
      double acc = bq[o];
      for (int64_t k = 0; k < d; ++k) acc += wq[o * d + k] * xv[r * d + k];
      qkv[r * 3 * d + o] = acc;
    }
  }
  const auto at = [&](int64_t b, int64_t i, int64_t part, int64_t h, int64_t c) {
    return qkv[(b * t + i) * 3 * d + part * d + h * hd + c];
  };
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < t; ++i) {
        std::vector<double> p(i + 1);
        double mx = -1e300, total = 0;
        for (int64_t j = 0; j <= i; ++j) {
          double s = 0;
          for (int64_t c = 0; c < hd; ++c) s += at(b, i, 0, h, c) * at(b, j, 1, h, c);
          p[j] = s / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, p[j]);
        }
        for (auto& v : p) total += (v = std::exp(v - mx));
        for (int64_t c = 0; c < hd; ++c) {
          double acc = 0;
          for (int64_t j = 0; j <= i; ++j) acc += p[j] / total * at(b, j, 2, h, c);
          mixed[(b * t + i) * d + h * hd + c] = acc;
        }
      }
    }
  }
  for (int64_t r = 0; r < n * t; ++r) {
    for (int64_t o = 0; o < d; ++o) {
      double acc = bp[o];
      for (int64_t k = 0; k < d; ++k) acc += wp[o * d + k] * mixed[r * d + k];
      out[r * d + o] = acc;
    }
  }
  return out;
}

// ---- CausalSelfAttention --------------------------------------------------------------------
TEST(CausalSelfAttention, ShapesAndParameterNames) {
  Generator gen(1);
  nn::CausalSelfAttention attn(8, 2, 0.0, 0, gen);
  EXPECT_EQ(attn.forward(randn({3, 5, 8}, gen)).shape(), Shape({3, 5, 8}));
  EXPECT_EQ(attn.forward(randn({1, 1, 8}, gen)).shape(), Shape({1, 1, 8}));
  EXPECT_THAT(names_of(attn.state_dict()),
              ElementsAre("qkv.weight", "qkv.bias", "proj.weight", "proj.bias"));
  EXPECT_EQ(attn.qkv->weight.shape(), Shape({24, 8}));
  EXPECT_EQ(attn.proj->weight.shape(), Shape({8, 8}));
  EXPECT_EQ(attn.describe(), "CausalSelfAttention(dim 8, heads 2)");
}

TEST(CausalSelfAttention, ValidatesConfigurationAndInput) {
  const std::string msg = value_error_message([] { nn::CausalSelfAttention(10, 3); });
  EXPECT_THAT(msg, HasSubstr("dim 10"));
  EXPECT_THAT(msg, HasSubstr("heads 3"));
  EXPECT_THROW(nn::CausalSelfAttention(8, 0), ValueError);
  nn::CausalSelfAttention attn(8, 2);
  EXPECT_THAT(value_error_message([&] {
                attn.forward(zeros({2, 5, 6}));
              }),
              AllOf(HasSubstr("[N, T, 8]"), HasSubstr("[2, 5, 6]")));
  EXPECT_THAT(value_error_message([&] { attn.forward(zeros({5, 8})); }), HasSubstr("[N, T, 8]"));
}

TEST(CausalSelfAttention, MatchesAHeadByHeadReference) {
  Generator gen(2);
  // Short sequences and one longer than the training config's 128.
  for (int64_t t : {6, 130}) {
    for (int64_t heads : {1, 2, 4}) {
      nn::CausalSelfAttention attn(8, heads, 0.0, 0, gen);
      const Tensor x = randn({2, t, 8}, gen);
      const Tensor y = attn.forward(x);
      EXPECT_TRUE(all_close(y, from_vector<double>(reference_attention(attn, x, heads), y.shape()),
                            1e-5, 1e-5))
          << heads << " heads, T = " << t;
    }
  }
}

TEST(CausalSelfAttention, PositionTSeesOnlyPositionsUpToT) {
  Generator gen(3);
  nn::CausalSelfAttention attn(16, 4, 0.0, 0, gen);
  const Tensor x = randn({2, 7, 16}, gen);
  const Tensor y = attn.forward(x);
  for (int64_t t = 0; t < 7; ++t) {
    const Tensor y2 = attn.forward(change_from(x, t + 1, gen));
    EXPECT_TRUE(same_prefix(y, y2, t + 1)) << "t = " << t;
  }
  // And the future matters at all: changing position 3 changes positions 3.. only.
  EXPECT_FALSE(all_close(y, attn.forward(change_from(x, 3, gen)), 0, 1e-6));
  // Gradients: output position t does not depend on inputs after t.
  Tensor xg = x.detach().clone().set_requires_grad();
  sum(slice(attn.forward(xg), 1, 2, 3)).backward();
  const auto g = xg.grad().to_vector<float>();
  for (size_t i = 0; i < g.size(); ++i) {
    const int64_t pos = static_cast<int64_t>(i / 16) % 7;
    if (pos > 2) {
      EXPECT_EQ(g[i], 0.0f) << i;
    }
  }
  EXPECT_GT(std::fabs(g[0]) + std::fabs(g[16]) + std::fabs(g[32]), 0.0f);
}

TEST(CausalSelfAttention, DropoutOnlyInTrainingAndReproducibleFromSeed) {
  Generator gen(4);
  nn::CausalSelfAttention a(8, 2, 0.5, /*seed=*/7, gen), b(8, 2, 0.5, 7, gen), c(8, 2, 0.5, 8, gen);
  b.load_state_dict(a.state_dict());
  c.load_state_dict(a.state_dict());
  nn::CausalSelfAttention plain(8, 2, 0.0, 0, gen);
  plain.load_state_dict(a.state_dict());
  const Tensor x = randn({2, 6, 8}, gen);
  const Tensor ya = a.forward(x);
  EXPECT_TRUE(bit_equal(ya, b.forward(x)));
  EXPECT_FALSE(bit_equal(ya, c.forward(x)));
  EXPECT_FALSE(all_close(ya, plain.forward(x)));
  a.eval();
  EXPECT_TRUE(bit_equal(a.forward(x), plain.forward(x)));
}

TEST(CausalSelfAttention, CloneIsIndependentAndKeepsTheDropoutStream) {
  Generator gen(5);
  nn::CausalSelfAttention attn(8, 2, 0.2, 3, gen);
  const Tensor x = randn({2, 4, 8}, gen);
  attn.forward(x);  // advances the dropout stream; the clone continues from the same offset
  EXPECT_TRUE(clones_independently(attn, x));
  auto copy = std::dynamic_pointer_cast<nn::CausalSelfAttention>(attn.clone());
  ASSERT_NE(copy, nullptr);
  EXPECT_EQ(copy->attn_drop->generator().offset(), attn.attn_drop->generator().offset());
}

TEST(CausalSelfAttention, GradcheckInputAndParameters) {
  Generator gen(6);
  nn::CausalSelfAttention attn(6, 2, 0.0, 0, gen);
  to_float64(attn);
  const auto r =
      gradcheck_module(attn, randn({2, 4, 6}, gen, DType::kFloat64).set_requires_grad(), gen);
  EXPECT_TRUE(r.ok) << r.message;
}

TEST(CausalSelfAttention, GradcheckWithAFixedDropoutMask) {
  Generator gen(7);
  nn::CausalSelfAttention attn(4, 2, 0.3, 11, gen);
  to_float64(attn);
  const auto r = gradcheck_module(attn, randn({2, 3, 4}, gen, DType::kFloat64).set_requires_grad(),
                                  gen, [&] { attn.attn_drop->generator().set_offset(0); });
  EXPECT_TRUE(r.ok) << r.message;
}

TEST(CausalSelfAttention, Float32GradientsWithDropoutMatchFloat64) {
  // The float32 CPU path (causal rows without the masked half, one node for q, k and v) against
  // the float64 path with the same weights and the same dropout mask, at short and long
  // sequences.
  for (int64_t t : {9, 64, 65, 150}) {
    Generator gen(8);
    nn::CausalSelfAttention f32(16, 4, 0.3, /*seed=*/5, gen);
    auto f64 = std::dynamic_pointer_cast<nn::CausalSelfAttention>(f32.clone());
    ASSERT_NE(f64, nullptr);
    to_float64(*f64);
    const Tensor x = randn({3, t, 16}, gen);
    const Tensor w = randn({3, t, 16}, gen);
    Tensor x32 = x.detach().clone().set_requires_grad();
    Tensor x64 = to_dtype(x, DType::kFloat64).set_requires_grad();
    const Tensor y32 = f32.forward(x32), y64 = f64->forward(x64);
    EXPECT_TRUE(all_close(to_dtype(y32, DType::kFloat64), y64, 1e-4, 1e-5)) << "T = " << t;
    sum(mul(y32, w)).backward();
    sum(mul(y64, to_dtype(w, DType::kFloat64))).backward();
    EXPECT_TRUE(all_close(to_dtype(x32.grad(), DType::kFloat64), x64.grad(), 1e-4, 1e-5))
        << "dx, T = " << t;
    const auto p32 = f32.named_parameters(), p64 = f64->named_parameters();
    ASSERT_EQ(p32.size(), p64.size());
    for (size_t i = 0; i < p32.size(); ++i) {
      EXPECT_TRUE(all_close(to_dtype(p32[i].second.grad(), DType::kFloat64), p64[i].second.grad(),
                            1e-4, 1e-5))
          << p32[i].first << ", T = " << t;
    }
  }
}

// ---- TransformerBlock -----------------------------------------------------------------------
TEST(TransformerBlock, ChildrenAndParameterNames) {
  Generator gen(8);
  nn::TransformerBlock block(8, 2, 3, 0.0, 0, gen);
  EXPECT_THAT(names_of(block.state_dict()),
              ElementsAre("ln1.weight", "ln1.bias", "attn.qkv.weight", "attn.qkv.bias",
                          "attn.proj.weight", "attn.proj.bias", "ln2.weight", "ln2.bias",
                          "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"));
  EXPECT_EQ(block.fc1->weight.shape(), Shape({24, 8}));
  EXPECT_EQ(block.fc2->weight.shape(), Shape({8, 24}));
  EXPECT_EQ(block.forward(randn({2, 5, 8}, gen)).shape(), Shape({2, 5, 8}));
  EXPECT_EQ(block.describe(), "TransformerBlock(dim 8, heads 2, mlp_ratio 3)");
  EXPECT_THAT(value_error_message([&] {
                block.forward(zeros({2, 5, 4}));
              }),
              AllOf(HasSubstr("TransformerBlock"), HasSubstr("[N, T, 8]")));
  EXPECT_THROW(nn::TransformerBlock(8, 3), ValueError);
  EXPECT_THROW(nn::TransformerBlock(8, 2, 0), ValueError);
}

TEST(TransformerBlock, ForwardIsPreNormResidualComposition) {
  Generator gen(9);
  nn::TransformerBlock block(8, 2, 4, 0.0, 0, gen);
  for (auto& [name, p] : block.named_parameters()) {
    if (name.rfind("ln", 0) == 0) p.detach().copy_(randn(p.shape(), gen));
  }
  const Tensor x = randn({2, 5, 8}, gen);
  const Tensor h = x + block.attn->forward(block.ln1->forward(x));
  const Tensor expected = h + block.fc2->forward(gelu(block.fc1->forward(block.ln2->forward(h))));
  EXPECT_TRUE(bit_equal(block.forward(x), expected));
}

TEST(TransformerBlock, IsCausal) {
  Generator gen(10);
  nn::TransformerBlock block(8, 2, 2, 0.0, 0, gen);
  const Tensor x = randn({2, 6, 8}, gen);
  const Tensor y = block.forward(x);
  for (int64_t t = 0; t < 6; ++t) {
    EXPECT_TRUE(same_prefix(y, block.forward(change_from(x, t + 1, gen)), t + 1)) << "t = " << t;
  }
}

TEST(TransformerBlock, CloneIsIndependent) {
  Generator gen(11);
  nn::TransformerBlock block(8, 2, 2, 0.1, 5, gen);
  const Tensor x = randn({2, 4, 8}, gen);
  block.forward(x);
  EXPECT_TRUE(clones_independently(block, x));
  block.eval();
  auto copy = block.clone();
  EXPECT_FALSE(copy->is_training());
  EXPECT_TRUE(bit_equal(copy->forward(x), block.forward(x)));
}

TEST(TransformerBlock, GradcheckInputAndParameters) {
  Generator gen(12);
  nn::TransformerBlock block(4, 2, 2, 0.0, 0, gen);
  to_float64(block);
  for (auto& [name, p] : block.named_parameters()) {
    if (name.rfind("ln", 0) == 0) p.detach().copy_(randn(p.shape(), gen, DType::kFloat64));
  }
  const auto r =
      gradcheck_module(block, randn({2, 3, 4}, gen, DType::kFloat64).set_requires_grad(), gen);
  EXPECT_TRUE(r.ok) << r.message;
}

TEST(TransformerBlock, TrainingSizeGivesFiniteGradientsForEveryParameter) {
  // N=16, T=64, D=64, 4 heads with dropout: every parameter gets a finite gradient.
  Generator gen(13);
  nn::TransformerBlock block(64, 4, 4, 0.1, 1, gen);
  const Tensor x = randn({16, 64, 64}, gen).set_requires_grad();
  for (int i = 0; i < 2; ++i) {
    block.zero_grad();
    sum(block.forward(x)).backward();
  }
  for (auto& [name, p] : block.named_parameters()) {
    ASSERT_TRUE(p.grad().defined()) << name;
    EXPECT_TRUE(ops::all_finite(p.grad())) << name;
  }
}

}  // namespace
}  // namespace dtrain
