// Error reporting: the right error type, and messages that name the op and the offending
// shapes, dtypes or devices, so a user can act on them.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dtrain/tensor/allocator.h"
#include "dtrain/tensor/cuda/cuda_backend.h"
#include "dtrain/tensor/ops.h"
#include "reference.h"

namespace dtrain {
namespace {

using kernels::Binary;
using ::testing::AllOf;
using ::testing::HasSubstr;
using testref::error_message;

TEST(Errors, BroadcastMismatchNamesOpAndBothShapes) {
  Tensor a = zeros({2, 3}), b = zeros({4, 5});
  EXPECT_THROW(ops::binary(Binary::kAdd, a, b), ValueError);
  EXPECT_THAT(error_message([&] { ops::binary(Binary::kAdd, a, b); }),
              AllOf(HasSubstr("add"), HasSubstr("[2, 3]"), HasSubstr("[4, 5]")));
  EXPECT_THAT(error_message([&] { ops::binary(Binary::kMul, zeros({3}), zeros({4})); }),
              AllOf(HasSubstr("mul"), HasSubstr("[3]"), HasSubstr("[4]")));
  EXPECT_THAT(error_message([&] { ops::where(zeros({2}, DType::kBool), zeros({3}), zeros({3})); }),
              AllOf(HasSubstr("where"), HasSubstr("[2]"), HasSubstr("[3]")));
}

TEST(Errors, InPlaceResultMustFitTheDestination) {
  Tensor out = zeros({1, 4});
  EXPECT_THAT(error_message([&] {
                ops::binary_(Binary::kAdd, out, zeros({3, 4}));
              }),
              AllOf(HasSubstr("add"), HasSubstr("[3, 4]"), HasSubstr("[1, 4]")));
  EXPECT_THAT(error_message([&] { ops::binary_(Binary::kLt, out, zeros({4})); }),
              HasSubstr("in place"));
}

TEST(Errors, DtypeMismatchNamesBothDtypes) {
  Tensor a = zeros({2}), b = zeros({2}, DType::kFloat64);
  EXPECT_THROW(ops::binary(Binary::kSub, a, b), ValueError);
  EXPECT_THAT(error_message([&] { ops::binary(Binary::kSub, a, b); }),
              AllOf(HasSubstr("sub"), HasSubstr("float32"), HasSubstr("float64")));
  EXPECT_THAT(error_message([&] {
                ops::matmul(zeros({2, 2}), zeros({2, 2}, DType::kFloat64));
              }),
              AllOf(HasSubstr("matmul"), HasSubstr("float32"), HasSubstr("float64")));
}

TEST(Errors, MatmulInnerDimensionMismatchNamesBothShapes) {
  Tensor a = zeros({2, 3}), b = zeros({4, 5});
  EXPECT_THROW(ops::matmul(a, b), ValueError);
  EXPECT_THAT(error_message([&] { ops::matmul(a, b); }),
              AllOf(HasSubstr("matmul"), HasSubstr("[2, 3]"), HasSubstr("[4, 5]")));
  Tensor c({2, 5});
  EXPECT_THAT(error_message([&] { ops::gemm(false, false, a, b, c); }),
              AllOf(HasSubstr("gemm"), HasSubstr("[2, 3]"), HasSubstr("[4, 5]")));
  EXPECT_THAT(error_message([&] {
                ops::matmul(zeros({3}), zeros({3, 2}));
              }),
              AllOf(HasSubstr("matmul"), HasSubstr("2 dims")));
  // Batch dims that do not broadcast.
  EXPECT_THAT(error_message([&] {
                ops::matmul(zeros({2, 3, 4}), zeros({3, 4, 5}));
              }),
              AllOf(HasSubstr("matmul"), HasSubstr("[2]"), HasSubstr("[3]")));
}

TEST(Errors, Conv2dChannelMismatchNamesBothShapes) {
  Tensor x = zeros({1, 3, 5, 5}), w = zeros({2, 4, 3, 3});
  EXPECT_THROW(ops::conv2d(x, w, Tensor(), {}), ValueError);
  EXPECT_THAT(error_message([&] { ops::conv2d(x, w, Tensor(), {}); }),
              AllOf(HasSubstr("conv2d"), HasSubstr("[1, 3, 5, 5]"), HasSubstr("[2, 4, 3, 3]")));
  EXPECT_THAT(error_message([&] {
                ops::conv2d(zeros({1, 3, 2, 2}), zeros({1, 3, 3, 3}), Tensor(), {});
              }),
              AllOf(HasSubstr("conv2d"), HasSubstr("larger")));
  EXPECT_THAT(error_message([&] {
                ops::conv2d(zeros({3, 5, 5}), zeros({1, 3, 3, 3}), Tensor(), {});
              }),
              AllOf(HasSubstr("conv2d"), HasSubstr("[3, 5, 5]")));
  EXPECT_THAT(error_message([&] {
                ops::conv2d(zeros({1, 3, 5, 5}), zeros({2, 3, 3, 3}), zeros({3}), {});
              }),
              AllOf(HasSubstr("bias"), HasSubstr("[2]")));
}

TEST(Errors, CudaTensorWithoutCudaIsUnsupported) {
  if (cuda::available()) GTEST_SKIP() << "this build has a CUDA device";
  EXPECT_THROW(zeros({2}, DType::kFloat32, Device::cuda(0)), UnsupportedError);
  EXPECT_THAT(error_message([] { Tensor t({2}, DType::kFloat32, Device::cuda(0)); }),
              HasSubstr("CUDA"));
  EXPECT_THROW(to_device(zeros({2}), Device::cuda(0)), UnsupportedError);
  EXPECT_FALSE(cuda::unavailable_reason().empty());
  EXPECT_EQ(cuda::device_count(), 0);
}

TEST(Errors, TypedDataAccessChecksTheDtype) {
  Tensor t = zeros({3});
  EXPECT_THROW(t.data<double>(), ValueError);
  EXPECT_THAT(error_message([&] { t.data<double>(); }),
              AllOf(HasSubstr("float64"), HasSubstr("float32")));
  EXPECT_NO_THROW(t.data<float>());
}

TEST(Errors, ViewWithWrongNumelNamesBothShapes) {
  Tensor t = zeros({2, 3});
  EXPECT_THROW(t.view({4}), ValueError);
  EXPECT_THAT(error_message([&] { t.view({4}); }),
              AllOf(HasSubstr("view"), HasSubstr("[2, 3]"), HasSubstr("[4]")));
  EXPECT_THAT(error_message([&] { t.view({-1, -1}); }), HasSubstr("-1"));
  EXPECT_THAT(error_message([&] { t.view({4, -1}); }), HasSubstr("view"));
  EXPECT_EQ(t.view({3, -1}).shape(), (Shape{3, 2}));
}

TEST(Errors, DimOutOfRangeNamesTheOp) {
  Tensor t = zeros({2, 3});
  EXPECT_THAT(error_message([&] { ops::sum(t, {2}); }), AllOf(HasSubstr("sum"), HasSubstr("2")));
  EXPECT_THAT(error_message([&] { ops::softmax(t, -3); }), HasSubstr("softmax"));
  EXPECT_THAT(error_message([&] { ops::max(t, 5); }), HasSubstr("max"));
  EXPECT_THAT(error_message([&] { ops::cat({t}, 2); }), HasSubstr("cat"));
  EXPECT_THAT(error_message([&] { t.size(2); }), HasSubstr("size"));
}

TEST(Errors, ShapeOpsNameTheMismatch) {
  EXPECT_THAT(error_message([] {
                ops::cat({zeros({2, 3}), zeros({2, 4})}, 0);
              }),
              AllOf(HasSubstr("cat"), HasSubstr("[2, 4]")));
  EXPECT_THAT(error_message([] {
                ops::stack({zeros({2, 3}), zeros({3, 2})}, 0);
              }),
              AllOf(HasSubstr("stack"), HasSubstr("[3, 2]")));
  EXPECT_THAT(error_message([] { ops::permute(zeros({2, 3}), {0, 0}); }), HasSubstr("permute"));
  EXPECT_THAT(error_message([] {
                ops::expand(zeros({2, 3}), {3, 3});
              }),
              AllOf(HasSubstr("expand"), HasSubstr("[3, 3]")));
  EXPECT_THAT(error_message([] { ops::slice(zeros({4}), 0, 3, 1); }), HasSubstr("slice"));
}

TEST(Errors, LossTargetsAreValidated) {
  Tensor logits = zeros({2, 3});
  EXPECT_THAT(error_message([&] {
                ops::softmax_cross_entropy(logits, from_vector(std::vector<int64_t>{0, 5}));
              }),
              AllOf(HasSubstr("target 5"), HasSubstr("[0, 3)")));
  EXPECT_THAT(error_message([&] { ops::softmax_cross_entropy(logits, zeros({2})); }),
              HasSubstr("int64"));
}

TEST(Errors, UnsupportedDtypeNamesOpAndDtype) {
  Tensor i = from_vector(std::vector<int64_t>{1, 2});
  EXPECT_THROW(ops::unary(kernels::Unary::kExp, i), UnsupportedError);
  EXPECT_THAT(error_message([&] { ops::unary(kernels::Unary::kExp, i); }), HasSubstr("int64"));
  EXPECT_THAT(error_message([&] {
                ops::binary(Binary::kAdd, zeros({2}, DType::kFloat16), zeros({2}, DType::kFloat16));
              }),
              AllOf(HasSubstr("add"), HasSubstr("float16")));
}

TEST(Errors, CreationAndAccessMistakes) {
  EXPECT_THAT(error_message([] { Tensor t({2, -1}); }), HasSubstr("[2, -1]"));
  EXPECT_THAT(error_message([] {
                from_vector(std::vector<float>{1, 2, 3}, {2, 2});
              }),
              AllOf(HasSubstr("3"), HasSubstr("[2, 2]")));
  EXPECT_THAT(error_message([] { zeros({3}).item<float>(); }), HasSubstr("item"));
  EXPECT_THAT(error_message([] { Tensor().shape(); }), HasSubstr("undefined"));
  EXPECT_THAT(error_message([] { ops::binary(Binary::kAdd, Tensor(), zeros({1})); }),
              AllOf(HasSubstr("add"), HasSubstr("undefined")));
  EXPECT_THAT(error_message([] { zeros({2}, DType::kInt64).set_requires_grad(); }),
              HasSubstr("int64"));
  EXPECT_THAT(error_message([] { Device::parse("gpu"); }), HasSubstr("gpu"));
  EXPECT_THAT(error_message([] { arange(0, 1, 0); }), HasSubstr("step"));
}

TEST(Errors, ShapesWhoseElementOrByteCountOverflowsAreRejectedNamingTheShape) {
  // 3 * 6148914691236517206 = 2^64 + 2: a plain int64 product wraps to 2.
  const Shape wraps = {3, 6148914691236517206};
  EXPECT_THROW(shape_numel(wraps), ValueError);
  EXPECT_THAT(error_message([&] { shape_numel(wraps); }),
              AllOf(HasSubstr("[3, 6148914691236517206]"), HasSubstr("overflows int64")));
  EXPECT_THAT(error_message([&] { Tensor t(wraps); }), HasSubstr("[3, 6148914691236517206]"));
  EXPECT_THAT(error_message([&] {
                zeros({1 << 22, 1 << 22, 1 << 22});
              }),
              HasSubstr("[4194304, 4194304, 4194304]"));
  // The element count fits, the byte count (2^61 * 8 = 2^64) does not.
  EXPECT_THAT(error_message([] { Tensor t({int64_t{1} << 61}, DType::kFloat64); }),
              AllOf(HasSubstr("float64"), HasSubstr("[2305843009213693952]"), HasSubstr("bytes")));
  // A view over existing storage, and a view whose known dimensions wrap around the -1.
  Tensor small = zeros({4});
  EXPECT_THAT(error_message([&] { Tensor v(small.storage(), 0, wraps, DType::kFloat32); }),
              HasSubstr("[3, 6148914691236517206]"));
  EXPECT_THAT(error_message([&] { Tensor v(small.storage(), 8, {4}, DType::kFloat32); }),
              AllOf(HasSubstr("byte offset 8"), HasSubstr("the storage has 16")));
  EXPECT_THROW(small.view({-1, int64_t{1} << 62, 4}), ValueError);
  EXPECT_THROW(small.view({3, 6148914691236517206, -1}), ValueError);
}

TEST(Errors, WhatAddsTheSourceLocationMessageDoesNot) {
  try {
    zeros({2}).view({3});
    FAIL() << "no exception";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.rfind(e.message(), 0), 0u) << what;  // starts with the message
    EXPECT_THAT(what, HasSubstr(".cpp:"));
    EXPECT_EQ(what.back(), ')');
    EXPECT_THAT(e.message(), ::testing::Not(HasSubstr(".cpp:")));
  }
}

}  // namespace
}  // namespace dtrain
