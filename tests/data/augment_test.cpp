// AugmentedDataset: crops, flips and normalisation against a reference, choices that depend only on
// (seed, epoch, index), and identical batches from loaders with other prefetch depths or resumed
// mid-epoch.
#include "dtrain/data/augment.h"

#include <gtest/gtest.h>

#include <set>
#include <tuple>

#include "data/file_util.h"
#include "dtrain/data/loader.h"
#include "dtrain/data/range_dataset.h"

namespace dtrain::data {
namespace {

using testing::expect_error;

constexpr int64_t kC = 2, kH = 5, kW = 6;

/// Pixel (c, y, x) of example i is 1000 i + 100 c + 10 y + x + 1: every value is distinct and
/// non-zero, so a zero is padding. Label i % 3.
class GridImages final : public Dataset {
 public:
  explicit GridImages(int64_t size) : size_(size) {}
  int64_t size() const override { return size_; }
  Shape example_shape() const override { return {kC, kH, kW}; }
  int64_t num_classes() const override { return 3; }
  void fill_batch(const std::vector<int64_t>& indices, Tensor& x, Tensor& y) const override {
    detail::check_batch(*this, indices, x, y);
    float* xs = x.data<float>();
    for (size_t b = 0; b < indices.size(); ++b) {
      for (int64_t c = 0; c < kC; ++c) {
        for (int64_t r = 0; r < kH; ++r) {
          for (int64_t col = 0; col < kW; ++col) {
            xs[((b * kC + c) * kH + r) * kW + col] = value(indices[b], c, r, col);
          }
        }
      }
      y.data<int64_t>()[b] = indices[b] % 3;
    }
  }
  std::string describe() const override { return "GridImages"; }
  static float value(int64_t i, int64_t c, int64_t r, int64_t col) {
    return static_cast<float>(1000 * i + 100 * c + 10 * r + col + 1);
  }

 private:
  int64_t size_;
};

std::vector<float> fill(const Dataset& dataset, const std::vector<int64_t>& indices,
                        int64_t epoch) {
  Tensor x({static_cast<int64_t>(indices.size()), kC, kH, kW});
  Tensor y({static_cast<int64_t>(indices.size())}, DType::kInt64);
  dataset.fill_batch_for_epoch(indices, epoch, x, y);
  return x.to_vector<float>();
}

TEST(AugmentedDataset, NormalisesPerChannelWithoutRandomOptions) {
  auto base = std::make_shared<GridImages>(4);
  const AugmentedDataset dataset(base, {.mean = {1.0f, 2.0f}, .std = {2.0f, 4.0f}});
  EXPECT_EQ(dataset.example_shape(), (Shape{kC, kH, kW}));
  EXPECT_EQ(dataset.size(), 4);
  EXPECT_EQ(dataset.num_classes(), 3);
  const std::vector<float> x = fill(dataset, {3}, 7);
  for (int64_t c = 0; c < kC; ++c) {
    for (int64_t r = 0; r < kH; ++r) {
      for (int64_t col = 0; col < kW; ++col) {
        const float expected =
            (GridImages::value(3, c, r, col) - (c ? 2.0f : 1.0f)) / (c ? 4.0f : 2.0f);
        EXPECT_FLOAT_EQ(x[(c * kH + r) * kW + col], expected) << c << r << col;
      }
    }
  }
  // One mean and std for every channel.
  const AugmentedDataset single(base, {.mean = {0.5f}, .std = {0.25f}});
  EXPECT_FLOAT_EQ(fill(single, {1}, 0)[kH * kW], (GridImages::value(1, 1, 0, 0) - 0.5f) / 0.25f);
}

TEST(AugmentedDataset, CropsAndFlipsAsTheChoiceSays) {
  auto base = std::make_shared<GridImages>(300);
  const int64_t pad = 2;
  const AugmentedDataset dataset(base, {.crop_padding = pad, .horizontal_flip = true, .seed = 5});
  std::set<std::tuple<int64_t, int64_t, bool>> seen;
  std::vector<int64_t> indices(300);
  for (int64_t i = 0; i < 300; ++i) indices[i] = i;
  const std::vector<float> x = fill(dataset, indices, 1);
  for (int64_t i = 0; i < 300; ++i) {
    const AugmentedDataset::Choice ch = dataset.choice(i, 1);
    ASSERT_GE(ch.dy, 0);
    ASSERT_LE(ch.dy, 2 * pad);
    ASSERT_GE(ch.dx, 0);
    ASSERT_LE(ch.dx, 2 * pad);
    seen.insert({ch.dy, ch.dx, ch.flip});
    // torchvision's RandomCrop(padding) then RandomHorizontalFlip: output (r, col) is padded
    // pixel (r + dy, col' + dx) with col' = W - 1 - col when flipped.
    for (int64_t c = 0; c < kC; ++c) {
      for (int64_t r = 0; r < kH; ++r) {
        for (int64_t col = 0; col < kW; ++col) {
          const int64_t sy = r + ch.dy - pad;
          const int64_t sx = (ch.flip ? kW - 1 - col : col) + ch.dx - pad;
          const bool inside = sy >= 0 && sy < kH && sx >= 0 && sx < kW;
          const float expected = inside ? GridImages::value(i, c, sy, sx) : 0.0f;
          ASSERT_EQ(x[((i * kC + c) * kH + r) * kW + col], expected)
              << "example " << i << " (" << c << ", " << r << ", " << col << ")";
        }
      }
    }
  }
  EXPECT_EQ(seen.size(), 5u * 5u * 2u) << "every offset and flip occurs";
}

TEST(AugmentedDataset, ChoicesDependOnSeedEpochAndIndexOnly) {
  auto base = std::make_shared<GridImages>(50);
  const AugmentOptions options{.crop_padding = 3, .horizontal_flip = true, .seed = 9};
  const AugmentedDataset a(base, options), b(base, options);
  const int64_t example = kC * kH * kW;
  // The same example alone, in another batch position, or from another instance: same pixels.
  const std::vector<float> alone = fill(a, {17}, 4);
  const std::vector<float> batch = fill(b, {3, 17, 17}, 4);
  EXPECT_EQ(std::vector<float>(batch.begin() + example, batch.begin() + 2 * example), alone);
  EXPECT_EQ(std::vector<float>(batch.begin() + 2 * example, batch.end()), alone);
  // fill_batch is epoch 0.
  Tensor x({1, kC, kH, kW}), y({1}, DType::kInt64);
  a.fill_batch({17}, x, y);
  EXPECT_EQ(x.to_vector<float>(), fill(a, {17}, 0));
  // Other epochs and other seeds choose differently (for some of 50 examples).
  std::vector<int64_t> all(50);
  for (int64_t i = 0; i < 50; ++i) all[i] = i;
  AugmentOptions other_seed = options;
  other_seed.seed = 10;
  EXPECT_NE(fill(a, all, 4), fill(a, all, 5));
  EXPECT_NE(fill(a, all, 4), fill(AugmentedDataset(base, other_seed), all, 4));
}

std::vector<Batch> drain(DataLoader& loader, int64_t epoch, int64_t skip = 0) {
  loader.start_epoch(epoch, skip);
  std::vector<Batch> batches;
  Batch batch;
  while (batches.size() < 100 && loader.next(batch)) batches.push_back(batch);
  return batches;
}

TEST(AugmentedDataset, LoadersAgreeAcrossPrefetchAndResume) {
  auto augmented = std::make_shared<AugmentedDataset>(
      std::make_shared<GridImages>(40),
      AugmentOptions{
          .crop_padding = 2, .horizontal_flip = true, .mean = {3}, .std = {2}, .seed = 1});
  const auto sampler = [] { return DistributedSampler(40, 2, 1, /*shuffle=*/true, 7, false); };
  DataLoader shallow(augmented, sampler(), 3, false, /*prefetch=*/1);
  DataLoader deep(augmented, sampler(), 3, false, /*prefetch=*/5);
  const std::vector<Batch> a = drain(shallow, 2), b = drain(deep, 2);
  ASSERT_EQ(a.size(), b.size());
  ASSERT_EQ(static_cast<int64_t>(a.size()), shallow.batches_per_epoch());
  DistributedSampler order = sampler();
  order.set_epoch(2);
  const std::vector<int64_t> indices = order.indices();
  for (size_t k = 0; k < a.size(); ++k) {
    EXPECT_EQ(a[k].x.to_vector<float>(), b[k].x.to_vector<float>()) << "batch " << k;
    EXPECT_EQ(a[k].y.to_vector<int64_t>(), b[k].y.to_vector<int64_t>()) << "batch " << k;
    // The loader fills with its epoch: the batch is the dataset's batch for epoch 2.
    const auto first = indices.begin() + 3 * k;
    const std::vector<int64_t> batch_indices(first, first + a[k].y.size(0));
    EXPECT_EQ(a[k].x.to_vector<float>(), fill(*augmented, batch_indices, 2)) << "batch " << k;
  }
  // Resuming epoch 2 at batch 4 gives the same batches as running through.
  const std::vector<Batch> resumed = drain(deep, 2, /*skip=*/4);
  ASSERT_EQ(resumed.size() + 4, a.size());
  for (size_t k = 0; k < resumed.size(); ++k) {
    EXPECT_EQ(resumed[k].index, a[k + 4].index);
    EXPECT_EQ(resumed[k].x.to_vector<float>(), a[k + 4].x.to_vector<float>()) << "batch " << k;
  }
  // A RangeDataset over the augmented set forwards the epoch.
  const RangeDataset tail(augmented, 10, 30, "tail");
  EXPECT_EQ(fill(tail, {0, 5}, 3), fill(*augmented, {10, 15}, 3));
}

TEST(AugmentedDataset, RejectsBadOptions) {
  auto base = std::make_shared<GridImages>(4);
  expect_error(
      [&] {
        AugmentedDataset(base, {.mean = {1, 2, 3}});
      },
      {"mean has 3 values [1, 2, 3]", "one per channel (2)"});
  expect_error([&] { AugmentedDataset(base, {.std = {1, 0}}); }, {"std [1, 0]", "positive"});
  expect_error([&] { AugmentedDataset(base, {.crop_padding = -1}); }, {"crop_padding is -1"});
  expect_error([&] { AugmentedDataset(nullptr, {}); }, {"needs a dataset"});

  /// Flat vectors are not images.
  class Flat final : public Dataset {
   public:
    int64_t size() const override { return 1; }
    Shape example_shape() const override { return {12}; }
    int64_t num_classes() const override { return 2; }
    void fill_batch(const std::vector<int64_t>&, Tensor&, Tensor&) const override {}
    std::string describe() const override { return "Flat"; }
  };
  expect_error([&] { AugmentedDataset(std::make_shared<Flat>(), {}); },
               {"Flat", "float32[12]", "[C, H, W]"});
}

}  // namespace
}  // namespace dtrain::data
