// The backward engine: accumulation, hooks, retain_graph and misuse errors.
#include <gtest/gtest.h>

#include "autograd/functions.h"
#include "autograd/node.h"
#include "testutil.h"

namespace dtrain {
namespace {

TEST(Engine, GradientOfSharedLeafAccumulates) {
  Tensor x = from_vector<float>({1, 2, 3}).set_requires_grad();
  Tensor y = sum(x * x + x * 3.0);  // dy/dx = 2x + 3
  y.backward();
  EXPECT_EQ(x.grad().to_vector<float>(), (std::vector<float>{5, 7, 9}));
}

}  // namespace
}  // namespace dtrain
