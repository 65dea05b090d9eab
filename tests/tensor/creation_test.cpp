// Creation, views and conversions: factory functions, handle semantics (copies share memory,
// clone does not), copy_/fill_ and the small accessors.
#include <gtest/gtest.h>

#include <limits>
#include <optional>

#include "dtrain/tensor/ops.h"
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

TEST(Creation, FactoriesFillEveryDtype) {
  for (DType dtype : {DType::kFloat32, DType::kFloat64, DType::kFloat16, DType::kBFloat16,
                      DType::kInt64, DType::kInt32, DType::kUInt8, DType::kBool}) {
    EXPECT_EQ(zeros({2, 3}, dtype).to_vector<double>(), std::vector<double>(6, 0.0))
        << dtype_name(dtype);
    EXPECT_EQ(ones({2, 3}, dtype).to_vector<double>(), std::vector<double>(6, 1.0))
        << dtype_name(dtype);
    const double value = dtype == DType::kBool ? 1.0 : 3.0;
    Tensor f = full({4}, value, dtype);
    EXPECT_EQ(f.dtype(), dtype);
    EXPECT_EQ(f.to_vector<double>(), std::vector<double>(4, value)) << dtype_name(dtype);
  }
  Tensor like = zeros_like(full({3, 2}, 7.0, DType::kFloat64));
  EXPECT_EQ(like.shape(), (Shape{3, 2}));
  EXPECT_EQ(like.dtype(), DType::kFloat64);
  EXPECT_EQ(like.to_vector<double>(), std::vector<double>(6, 0.0));
  EXPECT_EQ(empty_like(like).shape(), (Shape{3, 2}));
}

TEST(Creation, ArangeCountsLikeNumpy) {
  EXPECT_EQ(arange(0, 1, 0.25).to_vector<double>(), (std::vector<double>{0, 0.25, 0.5, 0.75}));
  EXPECT_EQ(arange(5, 0, -2).to_vector<double>(), (std::vector<double>{5, 3, 1}));
  EXPECT_EQ(arange(0, 3.5).numel(), 4);
  EXPECT_EQ(arange(3, 3).numel(), 0);
  EXPECT_EQ(arange(3, 0).numel(), 0);
  Tensor i = arange(-2, 3, 1, DType::kInt64);
  EXPECT_EQ(i.dtype(), DType::kInt64);
  EXPECT_EQ(i.to_vector<int64_t>(), (std::vector<int64_t>{-2, -1, 0, 1, 2}));
}

TEST(Creation, ScalarsAndEmptyTensors) {
  Tensor s = scalar_tensor(-4.5);
  EXPECT_EQ(s.dim(), 0);
  EXPECT_EQ(s.numel(), 1);
  EXPECT_EQ(s.item<float>(), -4.5f);
  EXPECT_EQ(s.item<int64_t>(), -4);
  Tensor one = from_vector(std::vector<float>{2.f});
  EXPECT_EQ(one.shape(), Shape{});  // a single value without a shape is a scalar
  Tensor e = zeros({3, 0, 2});
  EXPECT_EQ(e.numel(), 0);
  EXPECT_EQ(e.nbytes(), 0u);
  EXPECT_TRUE(e.to_vector<float>().empty());
  EXPECT_THROW(s.size(0), ValueError);  // a scalar has no dimensions to ask about
  EXPECT_EQ(shape_numel({}), 1);
  EXPECT_EQ(shape_numel({4, 0}), 0);
}

TEST(Creation, ShapeNumelIsCheckedForOverflow) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  EXPECT_EQ(try_shape_numel({2, 3, 4}), 24);
  EXPECT_EQ(try_shape_numel({kMax}), kMax);
  EXPECT_EQ(try_shape_numel({2, kMax / 2}), kMax - 1);
  EXPECT_EQ(try_shape_numel({0, 5}), 0);
  EXPECT_EQ(try_shape_numel({3, 6148914691236517206}), std::nullopt);  // 2^64 + 2
  EXPECT_EQ(try_shape_numel({int64_t{1} << 32, int64_t{1} << 31}), std::nullopt);
  // A zero dimension does not excuse the others: strides over them would still wrap.
  EXPECT_EQ(try_shape_numel({0, int64_t{1} << 40, int64_t{1} << 40}), std::nullopt);
  EXPECT_EQ(shape_numel({2, kMax / 2}), kMax - 1);
  EXPECT_THROW(shape_numel({int64_t{1} << 32, int64_t{1} << 31}), ValueError);
}

TEST(Creation, FromVectorKeepsValuesAndShape) {
  Tensor t = from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {3, 2});
  EXPECT_EQ(t.shape(), (Shape{3, 2}));
  EXPECT_EQ(t.dtype(), DType::kFloat64);
  EXPECT_EQ(t.to_vector<double>(), (std::vector<double>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(t.size(0), 3);
  EXPECT_EQ(t.size(-1), 2);
  Tensor b = from_vector(std::vector<bool>{true, false});
  EXPECT_EQ(b.dtype(), DType::kBool);
  EXPECT_EQ(b.to_vector<double>(), (std::vector<double>{1, 0}));
  Tensor i = from_vector(std::vector<int32_t>{-7, 8});
  EXPECT_EQ(i.dtype(), DType::kInt32);
  EXPECT_EQ(i.to_vector<int64_t>(), (std::vector<int64_t>{-7, 8}));
}

TEST(Creation, HandlesShareCloneCopies) {
  Tensor a = from_vector(std::vector<float>{1, 2, 3});
  Tensor alias = a;  // copies the handle, not the data
  alias.data<float>()[0] = 10.f;
  EXPECT_EQ(a.to_vector<float>()[0], 10.f);
  Tensor c = a.clone();
  EXPECT_FALSE(c.shares_storage(a));
  c.data<float>()[1] = 20.f;
  EXPECT_EQ(a.to_vector<float>()[1], 2.f);
  Tensor d = a.detach();
  EXPECT_TRUE(d.shares_storage(a));
  EXPECT_FALSE(d.requires_grad());
}

TEST(Creation, ViewInfersMinusOneAndViewsAtAnOffset) {
  Tensor t = arange(0, 24);
  EXPECT_EQ(t.view({2, -1, 3}).shape(), (Shape{2, 4, 3}));
  EXPECT_EQ(t.view({-1}).shape(), (Shape{24}));
  // A tensor over the second half of t's storage.
  Tensor half(t.storage(), 12 * sizeof(float), {3, 4}, DType::kFloat32);
  EXPECT_TRUE(half.shares_storage(t));
  EXPECT_EQ(half.to_vector<float>()[0], 12.f);
  EXPECT_EQ(half.to_vector<float>()[11], 23.f);
  EXPECT_THROW(Tensor(t.storage(), 13 * sizeof(float), {3, 4}, DType::kFloat32), ValueError);
}

TEST(Creation, CopyConvertsAndFillSetsEveryElement) {
  Tensor src = from_vector(std::vector<double>{1.5, -2.25, 3.0, 4.75});
  Tensor dst = zeros({2, 2});  // same numel, different shape and dtype
  dst.copy_(src);
  EXPECT_EQ(dst.to_vector<float>(), (std::vector<float>{1.5f, -2.25f, 3.0f, 4.75f}));
  EXPECT_THROW(dst.copy_(zeros({3})), ValueError);
  // Large enough for the threaded fill.
  Tensor big = zeros({100000});
  big.fill_(0.125);
  for (float v : big.to_vector<float>()) ASSERT_EQ(v, 0.125f);
  big.zero_();
  for (float v : big.to_vector<float>()) ASSERT_EQ(v, 0.f);
  Tensor i = zeros({5}, DType::kInt64);
  i.fill_(-3);
  EXPECT_EQ(i.to_vector<int64_t>(), std::vector<int64_t>(5, -3));
}

TEST(Creation, DescribeAndShapeStr) {
  EXPECT_EQ(shape_str({64, 784}), "[64, 784]");
  EXPECT_EQ(shape_str({}), "[]");
  EXPECT_EQ(zeros({2, 3}).describe(), "float32[2, 3] on cpu");
  EXPECT_EQ(zeros({1}, DType::kInt64).describe(), "int64[1] on cpu");
  EXPECT_EQ(Tensor().describe(), "undefined");
  EXPECT_FALSE(Tensor().defined());
  Tensor named = zeros({1});
  named.set_name("layer.weight");
  EXPECT_EQ(named.name(), "layer.weight");
  EXPECT_EQ(named.view({1, 1}).name(), "layer.weight");
}

TEST(Creation, ToDeviceOnTheSameDeviceIsANoOp) {
  Tensor t = zeros({3});
  EXPECT_TRUE(to_device(t, Device::cpu()).shares_storage(t));
  EXPECT_EQ(t.device(), Device::cpu());
}

}  // namespace
}  // namespace dtrain
