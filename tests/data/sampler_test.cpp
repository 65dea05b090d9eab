// DistributedSampler: coverage, padding and dropping across world sizes, per-epoch shuffles keyed
// by seed, and argument checks.
#include "dtrain/data/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <map>
#include <numeric>

#include "dtrain/tensor/check.h"

namespace dtrain::data {
namespace {

struct Case {
  int64_t size;
  int replicas;
  bool shuffle, drop_last;
};

std::string describe(const Case& c) {
  return detail::concat("size ", c.size, ", replicas ", c.replicas, ", shuffle ", c.shuffle,
                        ", drop_last ", c.drop_last);
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (int replicas = 1; replicas <= 5; ++replicas) {
    for (int64_t size : {1, 7, 10, 13, 100}) {
      for (bool shuffle : {false, true}) {
        for (bool drop_last : {false, true}) cases.push_back({size, replicas, shuffle, drop_last});
      }
    }
  }
  return cases;
}

TEST(DistributedSampler, RanksTakeInterleavedPositionsOfTheGlobalOrder) {
  for (const Case& c : all_cases()) {
    SCOPED_TRACE(describe(c));
    const int64_t expected_samples =
        c.drop_last ? c.size / c.replicas : (c.size + c.replicas - 1) / c.replicas;
    std::vector<int64_t> reference;
    for (int rank = 0; rank < c.replicas; ++rank) {
      DistributedSampler sampler(c.size, c.replicas, rank, c.shuffle, /*seed=*/11, c.drop_last);
      sampler.set_epoch(3);
      EXPECT_EQ(sampler.num_samples(), expected_samples);
      const std::vector<int64_t> global = sampler.global_order();
      ASSERT_EQ(static_cast<int64_t>(global.size()), expected_samples * c.replicas);
      if (rank == 0) reference = global;
      EXPECT_EQ(global, reference) << "rank " << rank << " sees another global order";
      const std::vector<int64_t> mine = sampler.indices();
      ASSERT_EQ(static_cast<int64_t>(mine.size()), expected_samples);
      for (size_t k = 0; k < mine.size(); ++k) {
        EXPECT_EQ(mine[k], global[rank + k * c.replicas]) << "rank " << rank << " position " << k;
      }
    }
  }
}

TEST(DistributedSampler, UnionOverRanksCoversTheDataset) {
  for (const Case& c : all_cases()) {
    SCOPED_TRACE(describe(c));
    std::vector<int> count(c.size, 0);
    int64_t total = 0, num_samples = 0;
    for (int rank = 0; rank < c.replicas; ++rank) {
      DistributedSampler sampler(c.size, c.replicas, rank, c.shuffle, /*seed=*/5, c.drop_last);
      sampler.set_epoch(1);
      num_samples = sampler.num_samples();
      for (int64_t i : sampler.indices()) {
        ASSERT_GE(i, 0);
        ASSERT_LT(i, c.size);
        ++count[i];
        ++total;
      }
    }
    EXPECT_EQ(total, num_samples * c.replicas);
    if (c.drop_last) {
      // Every kept index exactly once; only the remainder (< replicas) is dropped.
      EXPECT_EQ(total, c.size - c.size % c.replicas);
      for (int64_t i = 0; i < c.size; ++i) EXPECT_LE(count[i], 1) << "index " << i;
    } else {
      for (int64_t i = 0; i < c.size; ++i) EXPECT_GE(count[i], 1) << "index " << i;
    }
  }
}

TEST(DistributedSampler, PaddingRepeatsTheFirstElementsAndDroppingCutsTheTail) {
  for (const Case& c : all_cases()) {
    if (c.drop_last) continue;
    SCOPED_TRACE(describe(c));
    DistributedSampler padded(c.size, c.replicas, 0, c.shuffle, /*seed=*/2, /*drop_last=*/false);
    DistributedSampler dropped(c.size, c.replicas, 0, c.shuffle, /*seed=*/2, /*drop_last=*/true);
    padded.set_epoch(4);
    dropped.set_epoch(4);
    const std::vector<int64_t> full = padded.global_order();
    // The first `size` entries are a permutation of the dataset ...
    std::vector<int64_t> head(full.begin(), full.begin() + c.size);
    std::vector<int64_t> sorted = head;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> identity(c.size);
    std::iota(identity.begin(), identity.end(), int64_t{0});
    EXPECT_EQ(sorted, identity);
    if (!c.shuffle) {
      EXPECT_EQ(head, identity);
    }
    // ... the padding cycles through them from the start ...
    for (size_t k = c.size; k < full.size(); ++k) EXPECT_EQ(full[k], full[k % c.size]) << k;
    // ... and drop_last keeps a prefix of the same permutation.
    const std::vector<int64_t> kept = dropped.global_order();
    EXPECT_TRUE(std::equal(kept.begin(), kept.end(), full.begin()));
  }
}

std::vector<int64_t> order_for(uint64_t seed, int64_t epoch, int64_t size = 100) {
  DistributedSampler sampler(size, 1, 0, /*shuffle=*/true, seed, /*drop_last=*/false);
  sampler.set_epoch(epoch);
  return sampler.global_order();
}

TEST(DistributedSampler, ShuffleDependsOnSeedAndEpochOnly) {
  std::vector<int64_t> identity(100);
  std::iota(identity.begin(), identity.end(), int64_t{0});
  std::vector<std::vector<int64_t>> epochs;
  for (int64_t epoch = 0; epoch < 5; ++epoch) {
    epochs.push_back(order_for(42, epoch));
    EXPECT_NE(epochs.back(), identity) << "epoch " << epoch;
    EXPECT_EQ(order_for(42, epoch), epochs.back()) << "same seed and epoch, epoch " << epoch;
    EXPECT_NE(order_for(43, epoch), epochs.back()) << "other seed, epoch " << epoch;
    for (int64_t earlier = 0; earlier < epoch; ++earlier) {
      EXPECT_NE(epochs[earlier], epochs.back()) << "epochs " << earlier << " and " << epoch;
    }
  }
}

TEST(DistributedSampler, ShuffleDrawsEveryPermutationEvenly) {
  // 6000 shuffles of 3 elements: each of the 6 orders expects 1000 (sd ~ 29); allow +-15%.
  std::map<std::vector<int64_t>, int> seen;
  for (int64_t epoch = 0; epoch < 6000; ++epoch) ++seen[order_for(9, epoch, 3)];
  EXPECT_EQ(seen.size(), 6u);
  for (const auto& [order, count] : seen) {
    EXPECT_GT(count, 850) << order[0] << order[1] << order[2];
    EXPECT_LT(count, 1150) << order[0] << order[1] << order[2];
  }
}

TEST(DistributedSampler, EmptyDatasetGivesNoIndices) {
  DistributedSampler sampler(0, 3, 1, true, 0, false);
  EXPECT_EQ(sampler.num_samples(), 0);
  EXPECT_TRUE(sampler.indices().empty());
}

void expect_value_error(const std::function<void()>& body, const std::string& fragment) {
  try {
    body();
    ADD_FAILURE() << "expected a ValueError mentioning '" << fragment << "'";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(DistributedSampler, RejectsBadArguments) {
  expect_value_error([] { DistributedSampler(10, 0, 0, false, 0, false); }, "num_replicas is 0");
  expect_value_error([] { DistributedSampler(10, 2, 2, false, 0, false); },
                     "rank 2 is out of range");
  expect_value_error([] { DistributedSampler(10, 2, -1, false, 0, false); }, "rank -1");
  expect_value_error([] { DistributedSampler(-1, 2, 0, false, 0, false); }, "dataset_size is -1");
  DistributedSampler sampler(10, 2, 0, false, 0, false);
  expect_value_error([&] { sampler.set_epoch(-1); }, "epoch >= 0");
}

}  // namespace
}  // namespace dtrain::data
