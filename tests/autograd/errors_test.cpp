// Error messages of the differentiable ops: each must say what was expected, what was found, and
// (where one exists) a hint, as tensor/check.h and STYLE.md ask.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "dtrain/autograd/functions.h"
#include "testutil.h"

namespace dtrain {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

/// The message of the dtrain::Error `body` throws; fails the test when it throws nothing.
template <class Body>
std::string error_message(Body&& body) {
  try {
    body();
  } catch (const ValueError& e) {
    return e.message();
  }
  ADD_FAILURE() << "expected a ValueError";
  return "";
}

TEST(OpErrors, LinearOnUnflattenedImagesNamesTheLayerAndSuggestsFlatten) {
  Tensor x = zeros({64, 28, 28});
  Tensor w = zeros({256, 784}).set_requires_grad();
  Tensor b = zeros({256}).set_requires_grad();
  EXPECT_THAT(error_message([&] { linear(x, w, b); }),
              AllOf(HasSubstr("Linear(784 -> 256)"), HasSubstr("[64, 28, 28]"),
                    HasSubstr("[N, 784]"), HasSubstr("Flatten")));
}

TEST(OpErrors, LinearWithWrongFeatureCountNamesBothSizes) {
  Tensor x = zeros({8, 100});
  Tensor w = zeros({256, 784});
  EXPECT_THAT(error_message([&] { linear(x, w, Tensor()); }),
              AllOf(HasSubstr("Linear(784 -> 256)"), HasSubstr("[8, 100]"), HasSubstr("[N, 784]"),
                    Not(HasSubstr("Flatten"))));
}

TEST(OpErrors, LinearWithWrongBiasNamesIt) {
  Tensor x = zeros({2, 3});
  Tensor w = zeros({4, 3});
  EXPECT_THAT(error_message([&] { linear(x, w, zeros({3})); }),
              AllOf(HasSubstr("bias"), HasSubstr("[4]"), HasSubstr("float32[3]")));
}

TEST(OpErrors, MulShapeMismatchNamesBothShapes) {
  Tensor a = ones({2, 3}).set_requires_grad();
  Tensor b = ones({4});
  EXPECT_THAT(error_message([&] { mul(a, b); }), AllOf(HasSubstr("mul"), HasSubstr("[2, 3]"),
                                                       HasSubstr("[4]"), HasSubstr("broadcast")));
  EXPECT_THAT(error_message([&] {
                a + ones({3, 2});
              }),
              AllOf(HasSubstr("add"), HasSubstr("[2, 3]"), HasSubstr("[3, 2]")));
}

TEST(OpErrors, MatmulInnerMismatchNamesBothOperands) {
  Tensor a = ones({2, 3}).set_requires_grad();
  Tensor b = ones({4, 5});
  EXPECT_THAT(error_message([&] { matmul(a, b); }),
              AllOf(HasSubstr("matmul"), HasSubstr("[2, 3]"), HasSubstr("[4, 5]")));
}

TEST(OpErrors, BmmRequiresEqualBatchesAndThreeDims) {
  Tensor a = ones({2, 3, 4}).set_requires_grad();
  EXPECT_THAT(error_message([&] {
                bmm(a, ones({3, 4, 5}));
              }),
              AllOf(HasSubstr("bmm"), HasSubstr("[2, 3, 4]"), HasSubstr("[3, 4, 5]"),
                    HasSubstr("[B, M, K] @ [B, K, N]")));
  EXPECT_THAT(error_message([&] { bmm(a, ones({2, 5, 2})); }), HasSubstr("[2, 5, 2]"));
  EXPECT_THAT(error_message([&] {
                bmm(a, ones({4, 5}));
              }),
              AllOf(HasSubstr("[4, 5]"), HasSubstr("matmul")));
  EXPECT_EQ(bmm(a, ones({2, 4, 5})).shape(), Shape({2, 3, 5}));
}

TEST(OpErrors, CrossEntropyTargetOutOfRangeNamesTargetAndPosition) {
  Tensor logits = zeros({3, 5}).set_requires_grad();
  Tensor targets = from_vector<int64_t>({1, 7, 0});
  EXPECT_THAT(error_message([&] { cross_entropy(logits, targets); }),
              AllOf(HasSubstr("cross_entropy"), HasSubstr("target 7"), HasSubstr("position 1"),
                    HasSubstr("[0, 5)")));
  Tensor negative = from_vector<int64_t>({0, 0, -1});
  EXPECT_THAT(error_message([&] { cross_entropy(logits, negative); }),
              AllOf(HasSubstr("target -1"), HasSubstr("position 2")));
}

TEST(OpErrors, CrossEntropyWithFloatTargetsSaysInt64) {
  Tensor logits = zeros({3, 5});
  EXPECT_THAT(error_message([&] { cross_entropy(logits, zeros({3})); }),
              AllOf(HasSubstr("int64"), HasSubstr("float32[3]")));
}

TEST(OpErrors, NllLossTargetOutOfRangeNamesTargetAndPosition) {
  Tensor logp = zeros({2, 3}).set_requires_grad();
  EXPECT_THAT(error_message([&] {
                nll_loss(logp, from_vector<int64_t>({3, 0}));
              }),
              AllOf(HasSubstr("nll_loss"), HasSubstr("target 3"), HasSubstr("position 0")));
}

TEST(OpErrors, EmbeddingIndexOutOfRangeNamesTheIndex) {
  Tensor w = zeros({4, 2}).set_requires_grad();
  EXPECT_THAT(error_message([&] {
                embedding(w, from_vector<int64_t>({0, 9}));
              }),
              AllOf(HasSubstr("embedding"), HasSubstr("index 9"), HasSubstr("position 1")));
}

TEST(OpErrors, MseLossShapeMismatchNamesBothShapes) {
  EXPECT_THAT(error_message([&] {
                mse_loss(zeros({4, 3}), zeros({3, 4}));
              }),
              AllOf(HasSubstr("mse_loss"), HasSubstr("[4, 3]"), HasSubstr("[3, 4]")));
}

TEST(OpErrors, LayerNormShapeMismatchNamesNormalizedShape) {
  EXPECT_THAT(error_message([&] {
                layer_norm(zeros({2, 5}), {4}, Tensor(), Tensor());
              }),
              AllOf(HasSubstr("layer_norm"), HasSubstr("[2, 5]"), HasSubstr("[4]")));
}

TEST(OpErrors, Conv2dChannelMismatchNamesChannels) {
  Tensor x = zeros({1, 3, 5, 5});
  Tensor w = zeros({2, 4, 3, 3}).set_requires_grad();
  EXPECT_THAT(error_message([&] { conv2d(x, w, Tensor()); }),
              AllOf(HasSubstr("conv2d"), HasSubstr("[1, 3, 5, 5]"), HasSubstr("[2, 4, 3, 3]")));
}

TEST(OpErrors, ClampWithInvertedBoundsThrows) {
  EXPECT_THAT(error_message([&] { clamp(zeros({2}), 1.0, -1.0); }), HasSubstr("clamp"));
}

TEST(OpErrors, SetRequiresGradOnIntegerTensorThrows) {
  Tensor idx = from_vector<int64_t>({1, 2});
  EXPECT_THAT(error_message([&] { idx.set_requires_grad(); }),
              AllOf(HasSubstr("floating-point"), HasSubstr("int64")));
  EXPECT_FALSE(idx.requires_grad());
}

TEST(OpErrors, ErrorsCarryTheSourceLocation) {
  try {
    mul(ones({2}), ones({3}));
    FAIL() << "expected a ValueError";
  } catch (const Error& e) {
    EXPECT_THAT(std::string(e.what()), AllOf(HasSubstr(e.message()), HasSubstr(".cpp:")));
  }
}

}  // namespace
}  // namespace dtrain
