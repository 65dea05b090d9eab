// DataLoader: batches follow the sampler's order with the dataset's contents, partial and dropped
// tails, exact resume, worker errors re-thrown by next(), and shutdown mid-epoch.
#include "dtrain/data/loader.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <mutex>

#include "dtrain/data/synthetic.h"
#include "dtrain/tensor/check.h"

namespace dtrain::data {
namespace {

constexpr int64_t kSize = 23;
const Shape kExample{3};

std::shared_ptr<const SyntheticDataset> make_dataset(int64_t size = kSize) {
  return std::make_shared<SyntheticDataset>(size, kExample, 4, /*seed=*/17);
}

DistributedSampler make_sampler(int64_t size = kSize, bool shuffle = true) {
  return DistributedSampler(size, /*num_replicas=*/2, /*rank=*/1, shuffle, /*seed=*/5,
                            /*drop_last=*/false);
}

/// Drains the current epoch; at most `limit` batches so a broken end-of-epoch cannot loop forever.
std::vector<Batch> drain(DataLoader& loader, int64_t limit = 1000) {
  std::vector<Batch> batches;
  Batch batch;
  while (static_cast<int64_t>(batches.size()) < limit && loader.next(batch)) {
    batches.push_back(batch);
  }
  return batches;
}

/// The batch fill_batch gives for `indices`, the reference a loaded batch must match.
Batch expected_batch(const Dataset& dataset, const std::vector<int64_t>& indices) {
  const int64_t n = static_cast<int64_t>(indices.size());
  Batch batch{Tensor({n, 3}), Tensor({n}, DType::kInt64), 0};
  dataset.fill_batch(indices, batch.x, batch.y);
  return batch;
}

void expect_same_batch(const Batch& actual, const Batch& expected) {
  EXPECT_EQ(actual.x.shape(), expected.x.shape());
  EXPECT_EQ(actual.x.to_vector<float>(), expected.x.to_vector<float>());
  EXPECT_EQ(actual.y.to_vector<int64_t>(), expected.y.to_vector<int64_t>());
}

/// Checks that `batches` are batches [first, ...) of the epoch in `sampler`'s order.
void expect_sampler_order(const std::vector<Batch>& batches, const Dataset& dataset,
                          const DistributedSampler& sampler, int64_t batch_size,
                          int64_t first = 0) {
  const std::vector<int64_t> order = sampler.indices();
  for (size_t k = 0; k < batches.size(); ++k) {
    const int64_t b = first + static_cast<int64_t>(k);
    SCOPED_TRACE("batch " + std::to_string(b));
    EXPECT_EQ(batches[k].index, b);
    const auto begin = order.begin() + b * batch_size;
    const auto end = order.begin() + std::min<int64_t>((b + 1) * batch_size, order.size());
    expect_same_batch(batches[k], expected_batch(dataset, std::vector<int64_t>(begin, end)));
  }
}

TEST(DataLoader, BatchesFollowTheSamplerOrderWithAPartialLastBatch) {
  const auto dataset = make_dataset();
  DataLoader loader(dataset, make_sampler(), /*batch_size=*/5, /*drop_last=*/false);
  // 23 examples over 2 replicas: 12 per replica, so batches of 5, 5 and 2.
  EXPECT_EQ(loader.batches_per_epoch(), 3);
  std::vector<std::vector<float>> first_inputs;
  for (int64_t epoch = 0; epoch < 2; ++epoch) {
    SCOPED_TRACE("epoch " + std::to_string(epoch));
    loader.start_epoch(epoch);
    const std::vector<Batch> batches = drain(loader);
    ASSERT_EQ(batches.size(), 3u);
    EXPECT_EQ(batches[2].x.shape(), (Shape{2, 3}));
    EXPECT_EQ(batches[2].y.shape(), (Shape{2}));
    DistributedSampler sampler = make_sampler();
    sampler.set_epoch(epoch);
    expect_sampler_order(batches, *dataset, sampler, 5);
    EXPECT_EQ(loader.sampler().epoch(), epoch);
    first_inputs.push_back(batches[0].x.to_vector<float>());
    Batch after_end;
    EXPECT_FALSE(loader.next(after_end)) << "next() after the end of the epoch";
  }
  EXPECT_NE(first_inputs[0], first_inputs[1]) << "epochs should be shuffled differently";
}

TEST(DataLoader, DropLastDropsThePartialBatch) {
  const auto dataset = make_dataset();
  DataLoader loader(dataset, make_sampler(), /*batch_size=*/5, /*drop_last=*/true);
  EXPECT_EQ(loader.batches_per_epoch(), 2);
  loader.start_epoch(0);
  const std::vector<Batch> batches = drain(loader);
  ASSERT_EQ(batches.size(), 2u);
  for (const Batch& batch : batches) EXPECT_EQ(batch.x.shape(), (Shape{5, 3}));
  expect_sampler_order(batches, *dataset, make_sampler(), 5);
}

TEST(DataLoader, SkipBatchesResumesAtTheExactBatch) {
  const auto dataset = make_dataset();
  DataLoader loader(dataset, make_sampler(), /*batch_size=*/2, /*drop_last=*/false);
  loader.start_epoch(3);
  const std::vector<Batch> full = drain(loader);
  ASSERT_EQ(static_cast<int64_t>(full.size()), loader.batches_per_epoch());
  loader.start_epoch(3, /*skip_batches=*/4);
  const std::vector<Batch> resumed = drain(loader);
  ASSERT_EQ(resumed.size(), full.size() - 4);
  for (size_t k = 0; k < resumed.size(); ++k) {
    EXPECT_EQ(resumed[k].index, full[k + 4].index);
    expect_same_batch(resumed[k], full[k + 4]);
  }
  loader.start_epoch(3, loader.batches_per_epoch());
  EXPECT_TRUE(drain(loader).empty());
}

TEST(DataLoader, RestartingMidEpochStartsAfresh) {
  const auto dataset = make_dataset(200);
  DataLoader loader(dataset, make_sampler(200), /*batch_size=*/1, /*drop_last=*/false, 2);
  loader.start_epoch(0);
  Batch batch;
  ASSERT_TRUE(loader.next(batch));
  loader.start_epoch(1, 3);
  const std::vector<Batch> batches = drain(loader);
  ASSERT_EQ(static_cast<int64_t>(batches.size()), loader.batches_per_epoch() - 3);
  DistributedSampler sampler = make_sampler(200);
  sampler.set_epoch(1);
  expect_sampler_order(batches, *dataset, sampler, 1, 3);
}

TEST(DataLoader, PrefetchDepthDoesNotChangeTheBatches) {
  const auto dataset = make_dataset();
  DataLoader shallow(dataset, make_sampler(), 3, false, /*prefetch=*/1);
  DataLoader deep(dataset, make_sampler(), 3, false, /*prefetch=*/4);
  shallow.start_epoch(2);
  deep.start_epoch(2);
  const std::vector<Batch> a = drain(shallow);
  const std::vector<Batch> b = drain(deep);
  ASSERT_EQ(a.size(), b.size());
  ASSERT_EQ(static_cast<int64_t>(a.size()), shallow.batches_per_epoch());
  for (size_t k = 0; k < a.size(); ++k) {
    EXPECT_EQ(a[k].index, b[k].index);
    expect_same_batch(a[k], b[k]);
  }
}

/// Delegates to a SyntheticDataset but throws for one index.
class ThrowingDataset final : public Dataset {
 public:
  ThrowingDataset(int64_t size, int64_t bad_index)
      : inner_(size, kExample, 4, 1), bad_index_(bad_index) {}
  int64_t size() const override { return inner_.size(); }
  Shape example_shape() const override { return inner_.example_shape(); }
  int64_t num_classes() const override { return inner_.num_classes(); }
  void fill_batch(const std::vector<int64_t>& indices, Tensor& x, Tensor& y) const override {
    for (int64_t i : indices) {
      if (i == bad_index_) DTRAIN_THROW(ValueError, "cannot decode example ", i);
    }
    inner_.fill_batch(indices, x, y);
  }
  std::string describe() const override { return "ThrowingDataset"; }

 private:
  SyntheticDataset inner_;
  int64_t bad_index_;
};

TEST(DataLoader, WorkerErrorIsRethrownByNext) {
  const auto dataset = std::make_shared<ThrowingDataset>(20, /*bad_index=*/9);
  DistributedSampler sampler(20, 1, 0, /*shuffle=*/false, 0, false);
  DataLoader loader(dataset, sampler, /*batch_size=*/4, /*drop_last=*/false);
  loader.start_epoch(0);
  // Batches 0 and 1 (indices 0..7) arrive; batch 2 holds index 9.
  Batch batch;
  ASSERT_TRUE(loader.next(batch));
  EXPECT_EQ(batch.index, 0);
  ASSERT_TRUE(loader.next(batch));
  EXPECT_EQ(batch.index, 1);
  try {
    loader.next(batch);
    ADD_FAILURE() << "the worker's error was not re-thrown";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot decode example 9"), std::string::npos) << e.what();
  }
  // A new epoch clears the error; skipping past the bad batch loads the rest.
  loader.start_epoch(0, /*skip_batches=*/3);
  EXPECT_EQ(drain(loader).size(), 2u);
}

TEST(DataLoader, DestroyingMidEpochStopsTheWorker) {
  const auto dataset = make_dataset(500);
  for (int prefetch : {1, 3}) {
    auto loader = std::make_unique<DataLoader>(dataset, make_sampler(500), 1, false, prefetch);
    loader->start_epoch(0);
    Batch batch;
    ASSERT_TRUE(loader->next(batch));
    loader.reset();  // the worker is blocked on a full queue; this must return
  }
  DataLoader never_started(dataset, make_sampler(500), 1, false);
}

/// Example i is x = [i, i + 1] (int64), y = [i, 10 i, 100 i]; records the epochs it is filled for.
class TokenLikeDataset final : public Dataset {
 public:
  int64_t size() const override { return 7; }
  Shape example_shape() const override { return {2}; }
  DType example_dtype() const override { return DType::kInt64; }
  Shape label_shape() const override { return {3}; }
  int64_t num_classes() const override { return 1000; }
  void fill_batch(const std::vector<int64_t>& indices, Tensor& x, Tensor& y) const override {
    fill_batch_for_epoch(indices, -1, x, y);
  }
  void fill_batch_for_epoch(const std::vector<int64_t>& indices, int64_t epoch, Tensor& x,
                            Tensor& y) const override {
    detail::check_batch(*this, indices, x, y);
    for (size_t b = 0; b < indices.size(); ++b) {
      const int64_t i = indices[b];
      x.data<int64_t>()[2 * b] = i;
      x.data<int64_t>()[2 * b + 1] = i + 1;
      for (int k = 0; k < 3; ++k)
        y.data<int64_t>()[3 * b + k] = i * (k == 0 ? 1 : k == 1 ? 10 : 100);
    }
    std::lock_guard lock(mu_);
    epochs_.push_back(epoch);
  }
  std::string describe() const override { return "TokenLikeDataset"; }
  std::vector<int64_t> epochs() const {
    std::lock_guard lock(mu_);
    return epochs_;
  }

 private:
  mutable std::mutex mu_;
  mutable std::vector<int64_t> epochs_;
};

TEST(DataLoader, AllocatesExampleDtypeAndLabelShapeAndPassesTheEpoch) {
  const auto dataset = std::make_shared<TokenLikeDataset>();
  DataLoader loader(dataset, DistributedSampler(7, 1, 0, /*shuffle=*/false, 0, false), 3, false);
  loader.start_epoch(4, /*skip_batches=*/1);
  Batch batch;
  ASSERT_TRUE(loader.next(batch));
  EXPECT_EQ(batch.x.dtype(), DType::kInt64);
  EXPECT_EQ(batch.x.shape(), (Shape{3, 2}));
  EXPECT_EQ(batch.y.shape(), (Shape{3, 3}));
  EXPECT_EQ(batch.x.to_vector<int64_t>(), (std::vector<int64_t>{3, 4, 4, 5, 5, 6}));
  EXPECT_EQ(batch.y.to_vector<int64_t>(),
            (std::vector<int64_t>{3, 30, 300, 4, 40, 400, 5, 50, 500}));
  ASSERT_TRUE(loader.next(batch));
  EXPECT_EQ(batch.x.shape(), (Shape{1, 2}));
  EXPECT_EQ(batch.y.shape(), (Shape{1, 3}));
  EXPECT_FALSE(loader.next(batch));
  EXPECT_EQ(dataset->epochs(), (std::vector<int64_t>{4, 4}));
}

TEST(DataLoader, RejectsBadArguments) {
  const auto dataset = make_dataset();
  EXPECT_THROW(DataLoader(nullptr, make_sampler(), 2, false), ValueError);
  EXPECT_THROW(DataLoader(dataset, make_sampler(), 0, false), ValueError);
  EXPECT_THROW(DataLoader(dataset, make_sampler(), 2, false, /*prefetch=*/0), ValueError);
  try {
    DataLoader(dataset, make_sampler(kSize + 1), 2, false);
    ADD_FAILURE() << "a sampler over another dataset size was accepted";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("covers 24 examples but the dataset has 23"),
              std::string::npos)
        << e.what();
  }
  DataLoader loader(dataset, make_sampler(), 2, false);
  Batch batch;
  EXPECT_THROW(loader.next(batch), ValueError);  // before start_epoch
  EXPECT_THROW(loader.start_epoch(0, loader.batches_per_epoch() + 1), ValueError);
  EXPECT_THROW(loader.next(batch), ValueError);  // the failed start left no epoch running
}

}  // namespace
}  // namespace dtrain::data
