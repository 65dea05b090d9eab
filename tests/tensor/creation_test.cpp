// Creation, views and conversions.
#include <gtest/gtest.h>

#include "tensor/ops.h"
#include "testutil.h"

namespace dtrain {
namespace {

TEST(Creation, FullArangeAndViewsShareStorage) {
  Tensor t = arange(0, 6);
  EXPECT_EQ(t.shape(), (Shape{6}));
  Tensor v = t.view({2, 3});
  EXPECT_TRUE(v.shares_storage(t));
  v.data<float>()[4] = 42.f;
  EXPECT_EQ(t.to_vector<float>()[4], 42.f);
  EXPECT_EQ(full({2, 2}, 1.5).to_vector<float>(), (std::vector<float>{1.5f, 1.5f, 1.5f, 1.5f}));
}

}  // namespace
}  // namespace dtrain
