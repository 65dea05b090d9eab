// DistributedDataset: the replicas' batches of a step concatenate to one process's global batch,
// full steps hold the examples the Trainer's replicas see, short last batches are split evenly,
// resume, and the error for a global batch that does not divide across the replicas.
#include "dtrain/data/distributed_dataset.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>

#include "dtrain/tensor/check.h"

namespace dtrain::data {
namespace {

using ::testing::HasSubstr;

/// Example i is x = [i], y = i, so a batch's labels are the indices it was filled from.
class IndexDataset final : public Dataset {
 public:
  explicit IndexDataset(int64_t size) : size_(size) {}
  int64_t size() const override { return size_; }
  Shape example_shape() const override { return {1}; }
  int64_t num_classes() const override { return size_; }
  void fill_batch(const std::vector<int64_t>& indices, Tensor& x, Tensor& y) const override {
    for (size_t b = 0; b < indices.size(); ++b) {
      x.data<float>()[b] = static_cast<float>(indices[b]);
      y.data<int64_t>()[b] = indices[b];
    }
  }
  std::string describe() const override { return "IndexDataset"; }

 private:
  int64_t size_;
};

constexpr uint64_t kSeed = 11;

std::vector<DistributedBatch> drain(DistributedDataset& data, int64_t epoch, int64_t skip = 0) {
  data.start_epoch(epoch, skip);
  std::vector<DistributedBatch> steps;
  DistributedBatch step;
  while (steps.size() < 1000 && data.next(step)) steps.push_back(step);
  return steps;
}

/// The indices of `step`'s replica batches, concatenated in replica order.
std::vector<int64_t> concatenated(const DistributedBatch& step) {
  std::vector<int64_t> all;
  for (const Batch& b : step.per_replica) {
    const auto ys = b.y.to_vector<int64_t>();
    all.insert(all.end(), ys.begin(), ys.end());
  }
  return all;
}

struct Case {
  int replicas;
  bool drop_last;
};

class DistributedDatasetSplit : public ::testing::TestWithParam<Case> {};

TEST_P(DistributedDatasetSplit, ReplicaBatchesConcatenateToTheSingleProcessGlobalBatch) {
  const auto [replicas, drop_last] = GetParam();
  const int64_t global = 4 * replicas;
  const int64_t size = 5 * global + global / 2 + 1;  // the last global batch is short
  auto dataset = std::make_shared<IndexDataset>(size);
  DistributedDataset data(dataset, replicas, {global, /*shuffle=*/true, kSeed, drop_last});
  EXPECT_EQ(data.per_replica_batch_size(), 4);
  EXPECT_EQ(data.steps_per_epoch(), drop_last ? 5 : 6);
  for (int64_t epoch = 0; epoch < 2; ++epoch) {
    SCOPED_TRACE("epoch " + std::to_string(epoch));
    // One process with the global batch: consecutive slices of the sampler's order.
    DistributedSampler one(size, 1, 0, /*shuffle=*/true, kSeed, /*drop_last=*/false);
    one.set_epoch(epoch);
    const std::vector<int64_t> order = one.global_order();
    const std::vector<DistributedBatch> steps = drain(data, epoch);
    ASSERT_EQ(static_cast<int64_t>(steps.size()), data.steps_per_epoch());
    for (size_t s = 0; s < steps.size(); ++s) {
      SCOPED_TRACE("step " + std::to_string(s));
      const DistributedBatch& step = steps[s];
      const int64_t begin = static_cast<int64_t>(s) * global;
      const int64_t end = std::min(begin + global, size);
      EXPECT_EQ(step.index, static_cast<int64_t>(s));
      EXPECT_EQ(step.global_size, end - begin);
      EXPECT_EQ(concatenated(step),
                std::vector<int64_t>(order.begin() + begin, order.begin() + end));
      ASSERT_EQ(static_cast<int>(step.per_replica.size()), replicas);
      int64_t smallest = global, largest = 0;
      for (const Batch& b : step.per_replica) {
        EXPECT_EQ(b.x.to_vector<float>().size(), b.y.to_vector<int64_t>().size());
        EXPECT_EQ(b.index, step.index);
        smallest = std::min(smallest, b.y.size(0));
        largest = std::max(largest, b.y.size(0));
      }
      EXPECT_LE(largest - smallest, 1) << "a short global batch is split as evenly as possible";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Replicas, DistributedDatasetSplit,
                         ::testing::Values(Case{2, false}, Case{3, false}, Case{4, false},
                                           Case{3, true}),
                         [](const auto& info) {
                           return std::to_string(info.param.replicas) + "replicas" +
                                  (info.param.drop_last ? "DropLast" : "");
                         });

TEST(DistributedDataset, FullStepsHoldTheExamplesOfTheTrainersReplicas) {
  // The Trainer gives replica r a DataLoader over DistributedSampler(rank r) with batch G / R.
  const int replicas = 3;
  const int64_t per_replica = 4, size = 50;
  auto dataset = std::make_shared<IndexDataset>(size);
  DistributedDataset data(dataset, replicas, {per_replica * replicas, true, kSeed, false});
  const std::vector<DistributedBatch> steps = drain(data, 1);
  std::vector<std::vector<Batch>> trainer(replicas);
  for (int r = 0; r < replicas; ++r) {
    DataLoader loader(dataset, DistributedSampler(size, replicas, r, true, kSeed, false),
                      per_replica, false);
    EXPECT_EQ(loader.batches_per_epoch(), data.steps_per_epoch());
    loader.start_epoch(1);
    Batch b;
    while (loader.next(b)) trainer[r].push_back(b);
  }
  for (size_t s = 0; s < steps.size(); ++s) {
    if (steps[s].global_size < data.global_batch_size()) continue;  // the Trainer pads this one
    std::vector<int64_t> ours = concatenated(steps[s]), theirs;
    for (int r = 0; r < replicas; ++r) {
      const auto ys = trainer[r][s].y.to_vector<int64_t>();
      theirs.insert(theirs.end(), ys.begin(), ys.end());
    }
    std::sort(ours.begin(), ours.end());
    std::sort(theirs.begin(), theirs.end());
    EXPECT_EQ(ours, theirs) << "step " << s;
  }
}

TEST(DistributedDataset, ShortBatchesGiveEmptySharesAndLossScalesThatWeighRows) {
  // 10 examples, global batch 8 over 4 replicas: a full step, then 2 rows for 4 replicas.
  DistributedDataset data(std::make_shared<IndexDataset>(10), 4, {8, /*shuffle=*/false, 0, false});
  const std::vector<DistributedBatch> steps = drain(data, 0);
  ASSERT_EQ(steps.size(), 2u);
  for (int r = 0; r < 4; ++r) EXPECT_EQ(steps[0].loss_scale(r), 1.0);
  EXPECT_EQ(concatenated(steps[1]), (std::vector<int64_t>{8, 9}));
  EXPECT_EQ(steps[1].per_replica[0].y.size(0), 1);
  EXPECT_EQ(steps[1].per_replica[1].y.size(0), 1);
  EXPECT_EQ(steps[1].per_replica[3].x.shape(), (Shape{0, 1}));
  EXPECT_EQ(steps[1].per_replica[3].y.shape(), (Shape{0}));
  // Replicas' mean losses weighted like this average to the global batch's mean loss.
  EXPECT_EQ(steps[1].loss_scale(0), 2.0);
  EXPECT_EQ(steps[1].loss_scale(1), 2.0);
  EXPECT_EQ(steps[1].loss_scale(2), 0.0);
  EXPECT_EQ(steps[1].loss_scale(3), 0.0);
}

TEST(DistributedDataset, SkipStepsResumesAtTheExactStep) {
  DistributedDataset data(std::make_shared<IndexDataset>(45), 2, {6, true, kSeed, false});
  const std::vector<DistributedBatch> full = drain(data, 2);
  const std::vector<DistributedBatch> resumed = drain(data, 2, /*skip=*/3);
  ASSERT_EQ(resumed.size() + 3, full.size());
  for (size_t s = 0; s < resumed.size(); ++s) {
    EXPECT_EQ(resumed[s].index, full[s + 3].index);
    EXPECT_EQ(concatenated(resumed[s]), concatenated(full[s + 3]));
  }
}

TEST(DistributedDataset, AGlobalBatchThatDoesNotDivideNamesBothNumbers) {
  auto dataset = std::make_shared<IndexDataset>(20);
  try {
    DistributedDataset data(dataset, 3, {.global_batch_size = 10});
    ADD_FAILURE() << "global batch 10 over 3 replicas was accepted";
  } catch (const ValueError& e) {
    EXPECT_THAT(e.message(), HasSubstr("global batch size 10 does not divide across 3 replicas"));
    EXPECT_THAT(e.message(), HasSubstr("use a multiple of 3 (9 or 12)"));
  }
  EXPECT_THROW(DistributedDataset(dataset, 4, {.global_batch_size = 2}), ValueError);
  EXPECT_THROW(DistributedDataset(dataset, 0, {.global_batch_size = 2}), ValueError);
  EXPECT_THROW(DistributedDataset(nullptr, 2, {.global_batch_size = 2}), ValueError);
}

}  // namespace
}  // namespace dtrain::data
