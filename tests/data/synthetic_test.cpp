// SyntheticDataset: reproducible from its seed, balanced-enough labels, and fill_batch shapes.
#include "dtrain/data/synthetic.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "dtrain/tensor/check.h"
#include "dtrain/tensor/kernels.h"

namespace dtrain::data {
namespace {

struct Filled {
  std::vector<float> x;
  std::vector<int64_t> y;
};

Filled fill_all(const SyntheticDataset& dataset) {
  std::vector<int64_t> indices(dataset.size());
  for (int64_t i = 0; i < dataset.size(); ++i) indices[i] = i;
  Shape x_shape{dataset.size()};
  for (int64_t d : dataset.example_shape()) x_shape.push_back(d);
  Tensor x(x_shape);
  Tensor y({dataset.size()}, DType::kInt64);
  dataset.fill_batch(indices, x, y);
  return {x.to_vector<float>(), y.to_vector<int64_t>()};
}

TEST(SyntheticDataset, SameSeedSameData) {
  const Filled a = fill_all(SyntheticDataset(50, {2, 3}, 4, 7));
  const Filled b = fill_all(SyntheticDataset(50, {2, 3}, 4, 7));
  const Filled other = fill_all(SyntheticDataset(50, {2, 3}, 4, 8));
  EXPECT_EQ(a.x, b.x);
  EXPECT_EQ(a.y, b.y);
  EXPECT_NE(a.x, other.x);
}

TEST(SyntheticDataset, InputsAreStandardNormal) {
  const Filled data = fill_all(SyntheticDataset(500, {20}, 3, 1));
  double sum = 0, sum_sq = 0;
  for (float v : data.x) {
    sum += v;
    sum_sq += double(v) * v;
  }
  const double n = static_cast<double>(data.x.size());
  // 10,000 draws: the mean has sd 0.01, the variance about 0.014.
  EXPECT_NEAR(sum / n, 0.0, 0.05);
  EXPECT_NEAR(sum_sq / n - (sum / n) * (sum / n), 1.0, 0.07);
}

TEST(SyntheticDataset, LabelsSpanTheClasses) {
  const SyntheticDataset dataset(400, {16}, 5, 3);
  const Filled data = fill_all(dataset);
  std::set<int64_t> classes;
  for (int64_t label : data.y) {
    ASSERT_GE(label, 0);
    ASSERT_LT(label, 5);
    classes.insert(label);
  }
  EXPECT_GE(classes.size(), 3u) << "labels collapse onto few classes";
}

TEST(SyntheticDataset, FollowsThePhiloxRecipe) {
  // Inputs are Philox(seed, stream 0) normals; W [classes, features] is Philox(seed, stream 1);
  // label = argmax(W x).
  constexpr uint64_t kSeed = 11;
  constexpr int64_t kSize = 40, kFeatures = 6, kClasses = 4;
  const Filled data = fill_all(SyntheticDataset(kSize, {2, 3}, kClasses, kSeed));
  for (int64_t e = 0; e < kSize; ++e) {
    int64_t best = -1;
    double best_score = 0;
    for (int64_t c = 0; c < kClasses; ++c) {
      double score = 0;
      for (int64_t f = 0; f < kFeatures; ++f) {
        const auto i = static_cast<uint64_t>(e * kFeatures + f);
        const double x = kernels::philox_normal(kSeed, 0, 0, i);
        EXPECT_EQ(data.x[i], static_cast<float>(x));
        score += kernels::philox_normal(kSeed, 1, 0, c * kFeatures + f) * data.x[i];
      }
      if (best < 0 || score > best_score) {
        best = c;
        best_score = score;
      }
    }
    EXPECT_EQ(data.y[e], best) << "example " << e;
  }
}

TEST(SyntheticDataset, FillBatchShapes) {
  const SyntheticDataset dataset(10, {1, 4, 4}, 3, 0);
  EXPECT_EQ(dataset.example_shape(), (Shape{1, 4, 4}));
  EXPECT_EQ(dataset.num_classes(), 3);
  Tensor x({2, 1, 4, 4});
  Tensor y({2}, DType::kInt64);
  dataset.fill_batch({9, 0}, x, y);
  const Filled all = fill_all(dataset);
  const std::vector<float> got = x.to_vector<float>();
  EXPECT_TRUE(std::equal(got.begin(), got.begin() + 16, all.x.begin() + 9 * 16));
  EXPECT_TRUE(std::equal(got.begin() + 16, got.end(), all.x.begin()));
  EXPECT_EQ(y.to_vector<int64_t>(), (std::vector<int64_t>{all.y[9], all.y[0]}));

  Tensor wrong_x({2, 15});
  EXPECT_THROW(dataset.fill_batch({9, 0}, wrong_x, y), ValueError);
  Tensor wrong_y({3}, DType::kInt64);
  EXPECT_THROW(dataset.fill_batch({9, 0}, x, wrong_y), ValueError);
  EXPECT_THROW(dataset.fill_batch({9, 10}, x, y), ValueError);
}

TEST(SyntheticDataset, RejectsBadArguments) {
  EXPECT_THROW(SyntheticDataset(-1, {4}, 2, 0), ValueError);
  EXPECT_THROW(SyntheticDataset(10, {4}, 0, 0), ValueError);
  EXPECT_THROW(SyntheticDataset(10, {4, 0}, 2, 0), ValueError);
}

}  // namespace
}  // namespace dtrain::data
