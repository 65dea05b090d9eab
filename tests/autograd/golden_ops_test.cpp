// Single ops against PyTorch (tests/fixtures/golden_ops.txt, float32): the forward output and the
// gradients of (out * w).sum() with respect to every input.
#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "dtrain/autograd/functions.h"
#include "testutil.h"

namespace dtrain {
namespace {

using testutil::all_close;
using testutil::Fixture;

/// One fixture op: `<name>.in`, `.in2`, `.in3` are the differentiable inputs; `fn` may read the
/// non-differentiable ones (`.target`, `.idx`, `.exponent`) from the fixture.
struct GoldenCase {
  std::string name;
  int num_inputs;
  std::function<Tensor(const Fixture&, const std::vector<Tensor>&)> fn;
};

std::ostream& operator<<(std::ostream& os, const GoldenCase& c) { return os << c.name; }

const Fixture& fixture() {
  static const Fixture f("golden_ops.txt");
  return f;
}

std::vector<GoldenCase> golden_cases() {
  using In = const std::vector<Tensor>&;
  using F = const Fixture&;
  return {
      {"gelu", 1, [](F, In x) { return gelu(x[0]); }},
      {"tanh", 1, [](F, In x) { return tanh(x[0]); }},
      {"sigmoid", 1, [](F, In x) { return sigmoid(x[0]); }},
      {"softmax", 1, [](F, In x) { return softmax(x[0], 1); }},
      {"log_softmax", 1, [](F, In x) { return log_softmax(x[0], 1); }},
      {"layer_norm", 3, [](F, In x) { return layer_norm(x[0], {6}, x[1], x[2], 1e-5); }},
      {"cross_entropy_ls", 1,
       [](F f, In x) { return cross_entropy(x[0], f.labels("cross_entropy_ls.target"), 0.1); }},
      {"nll", 1, [](F f, In x) { return nll_loss(x[0], f.labels("nll.target")); }},
      {"mse", 2, [](F, In x) { return mse_loss(x[0], x[1]); }},
      {"embedding", 1, [](F f, In x) { return embedding(x[0], f.labels("embedding.idx")); }},
      {"batch_norm1d", 3,
       [](F, In x) {
         return batch_norm(x[0], x[1], x[2], Tensor(), Tensor(), /*training=*/true, 0.1, 1e-5);
       }},
      {"conv2d_s2", 3,
       [](F, In x) { return conv2d(x[0], x[1], x[2], /*stride=*/2, /*padding=*/1); }},
      {"maxpool", 1, [](F, In x) { return max_pool2d(x[0], 2, 2); }},
      {"avgpool", 1, [](F, In x) { return avg_pool2d(x[0], 3, 2, 1); }},
      {"bmm", 2, [](F, In x) { return matmul(x[0], x[1]); }},
      {"matmul_bcast", 2, [](F, In x) { return matmul(x[0], x[1]); }},
      {"broadcast_div", 2, [](F, In x) { return div(x[0], x[1]); }},
      {"pow", 1, [](F f, In x) { return pow(x[0], f["pow.exponent"].item<double>()); }},
      {"sum_dim", 1, [](F, In x) { return sum(x[0], {1}, /*keepdim=*/true); }},
      {"mean_dim", 1, [](F, In x) { return mean(x[0], {2}); }},
      {"max_dim", 1, [](F, In x) { return max(x[0], 1).first; }},
  };
}

class GoldenOps : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(GoldenOps, ForwardAndGradientMatchPyTorch) {
  const GoldenCase& c = GetParam();
  const Fixture& f = fixture();
  const std::vector<std::string> in_names{".in", ".in2", ".in3"};
  const std::vector<std::string> grad_names{".grad", ".grad2", ".grad3"};
  std::vector<Tensor> inputs;
  for (int i = 0; i < c.num_inputs; ++i) {
    inputs.push_back(f[c.name + in_names[i]].set_requires_grad());
  }
  Tensor out = c.fn(f, inputs);
  ASSERT_TRUE(out.requires_grad());
  EXPECT_TRUE(all_close(out, f[c.name + ".out"], 1e-5, 1e-6)) << c.name << " forward";
  sum(mul(out, f[c.name + ".w"])).backward();
  for (int i = 0; i < c.num_inputs; ++i) {
    ASSERT_TRUE(inputs[i].grad().defined()) << c.name << " input " << i << " got no gradient";
    EXPECT_TRUE(all_close(inputs[i].grad(), f[c.name + grad_names[i]], 1e-5, 1e-6))
        << c.name << grad_names[i];
  }
}

INSTANTIATE_TEST_SUITE_P(PyTorch, GoldenOps, ::testing::ValuesIn(golden_cases()),
                         [](const ::testing::TestParamInfo<GoldenCase>& info) {
                           return info.param.name;
                         });

TEST(GoldenOpsFixture, EveryFixtureOpHasACase) {
  // A new op added to scripts/make_golden_fixtures.py must get a case here.
  std::ifstream in(std::string(DTRAIN_FIXTURE_DIR) + "/golden_ops.txt");
  ASSERT_TRUE(in);
  std::set<std::string> fixture_ops, tested_ops;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const std::string name = line.substr(0, line.find(' '));
    if (name.size() > 4 && name.ends_with(".out"))
      fixture_ops.insert(name.substr(0, name.size() - 4));
  }
  for (const auto& c : golden_cases()) tested_ops.insert(c.name);
  EXPECT_EQ(fixture_ops, tested_ops);
  EXPECT_EQ(fixture_ops.size(), 21u);
}

TEST(GoldenOpsFixture, MaxDimPicksTheSameIndicesAsPyTorch) {
  const Fixture& f = fixture();
  auto [values, indices] = max(f["max_dim.in"], 1);
  EXPECT_EQ(indices.to_vector<int64_t>(), f.labels("max_dim.idx").to_vector<int64_t>());
}

}  // namespace
}  // namespace dtrain
