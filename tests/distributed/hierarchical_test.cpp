// The hierarchical composition: 2 "processes" x 2 replicas (each process a local group of threads,
// the leaders joined by a third local group standing in for MPI) must give what 4 flat ranks give.
#include <gtest/gtest.h>

#include <thread>

#include "collective_cases.h"
#include "dtrain/distributed/backends/local/local_communicator.h"
#include "dtrain/distributed/hierarchical_communicator.h"

namespace dtrain {
namespace {

void for_each_hierarchical_rank(int processes, int per_process,
                                const std::function<void(dist::Communicator&)>& body) {
  auto cross = dist::make_local_group(processes);
  std::vector<std::shared_ptr<dist::HierarchicalCommunicator>> ranks;
  for (int p = 0; p < processes; ++p) {
    auto local = dist::make_local_group(per_process);
    for (int l = 0; l < per_process; ++l) {
      ranks.push_back(std::make_shared<dist::HierarchicalCommunicator>(
          local[l], l == 0 ? cross[p] : nullptr, p, processes));
    }
  }
  std::vector<std::thread> threads;
  for (auto& r : ranks) threads.emplace_back([&body, r] { body(*r); });
  for (auto& t : threads) t.join();
}

TEST(Hierarchical, CollectivesMatchAFlatGroupOfTheSameSize) {
  for_each_hierarchical_rank(2, 2, [](dist::Communicator& c) {
    EXPECT_EQ(c.size(), 4);
    for (DType dtype : testdist::collective_dtypes()) {
      for (int64_t count : {int64_t{0}, int64_t{1}, int64_t{11}}) {
        for (auto op : {dist::ReduceOp::kSum, dist::ReduceOp::kAvg, dist::ReduceOp::kMax,
                        dist::ReduceOp::kProduct}) {
          testdist::check_all_reduce(c, dtype, count, op);
        }
        for (int root = 0; root < c.size(); ++root)
          testdist::check_broadcast(c, dtype, count, root);
        testdist::check_reduce(c, dtype, count, 3);
        testdist::check_all_gather(c, dtype, count);
        testdist::check_reduce_scatter(c, dtype, count);
      }
    }
    c.barrier()->wait();
  });
}

TEST(Hierarchical, ThreeProcessesOfThreeReplicasHaveGlobalRanksInProcessOrder) {
  std::vector<int> seen(9, 0);
  for_each_hierarchical_rank(3, 3, [&](dist::Communicator& c) {
    Tensor in = full({1}, c.rank()), out({9});
    c.all_gather(in, out)->wait();
    for (int r = 0; r < 9; ++r) EXPECT_EQ(out.to_vector<float>()[r], r) << "rank " << c.rank();
    seen[c.rank()] += 1;
  });
  for (int r = 0; r < 9; ++r) EXPECT_EQ(seen[r], 1) << "global rank " << r;
}

}  // namespace
}  // namespace dtrain
