// The parity suite: every collective case of collective_cases.h on every backend that
// dist::available_backends() lists, with 1, 2, 3, 4 and 8 ranks as threads of this process,
// against the exact expected values, the bits of the local backend, and sums that round taken in
// rank order. A new backend joins it by one branch in for_each_rank; until then its tests fail,
// naming that function.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <numeric>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "collective_cases.h"
#include "dtrain/distributed/backends/local/local_communicator.h"
#include "dtrain/distributed/backends/tcp/tcp_communicator.h"
#include "dtrain/distributed/registry.h"
#include "dtrain/tensor/cuda/cuda_backend.h"
#include "tcp_ranks.h"

namespace dtrain {
namespace {

using RankBody = std::function<void(dist::Communicator&)>;

/// Runs body on one rank thread. Failures inside carry `where` and the rank; an exception becomes
/// a test failure instead of terminating the process from a thread. Returns false on one.
bool run_rank(dist::Communicator& c, const std::string& where, const RankBody& body) {
  SCOPED_TRACE(where + ", rank " + std::to_string(c.rank()) + " of " + std::to_string(c.size()));
  try {
    body(c);
    return true;
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what();
    return false;
  }
}

/// Runs body(comm) on every rank of a new group of `world` ranks of `backend`, one thread each.
/// This is the one place the tests name backends: a backend that available_backends() gains
/// needs a branch here, and fails every parity test until it has one.
void for_each_rank(const std::string& backend, int world, const RankBody& body) {
  if (backend == "local") {
    auto comms = dist::make_local_group(world);
    std::vector<std::thread> threads;
    for (int r = 0; r < world; ++r) {
      threads.emplace_back([&, r] {
        if (run_rank(*comms[r], "local", body)) return;
        // The other ranks would wait for this one until their timeout: stop them now.
        dynamic_cast<dist::LocalCommunicator&>(*comms[r]).group().abort(
            "rank " + std::to_string(r) + " of the parity test failed");
      });
    }
    for (auto& t : threads) t.join();
    return;
  }
  if (backend == "tcp") {
    // Both data paths: ranks that are threads of one process share one host, so every peer's data
    // is read by address unless that is switched off; off, it all goes over the sockets.
    for (bool by_address : {true, false}) {
      dist::TcpOptions options;
      options.cross_memory = by_address;
      const std::string where = by_address ? "tcp by address" : "tcp over sockets";
      std::vector<std::string> errors;
      for_each_tcp_rank(
          world,
          [&](dist::HostCommunicator& c) {
            // A rank that fails returns and closes its connections, so its peers fail at once.
            run_rank(c, where, [&](dist::Communicator&) {
              EXPECT_EQ(static_cast<dist::TcpCommunicator&>(c).cross_memory_peers(),
                        by_address ? c.size() - 1 : 0);
              body(c);
            });
          },
          options, &errors);
      for (int r = 0; r < world; ++r) {
        EXPECT_EQ(errors[r], "") << where << ": rank " << r << " could not join the group";
      }
    }
    return;
  }
  if (backend == "mpi") {
    GTEST_SKIP() << "mpi ranks are processes: the mpirun suite (mpi_collectives_np2/3/4) runs "
                    "these cases";
  }
  if (backend == "nccl") {
    if (!cuda::available())
      GTEST_SKIP() << "nccl needs a CUDA device: " << cuda::unavailable_reason();
    // Routing these host tensors through a host group beside nccl would test that host group.
    GTEST_SKIP() << "nccl carries device tensors only and these cases use host tensors; "
                    "nccl_test.cpp checks nccl's collectives on the GPUs";
  }
  FAIL() << "backend '" << backend
         << "' is in dist::available_backends() but the parity suite cannot make its ranks: add a "
            "branch for it to for_each_rank in tests/distributed/parity_test.cpp";
}

/// (backend, ranks).
class CommunicatorParity : public ::testing::TestWithParam<std::tuple<std::string, int>> {
 protected:
  const std::string& backend() const { return std::get<0>(GetParam()); }
  int world() const { return std::get<1>(GetParam()); }
};

TEST_P(CommunicatorParity, EveryCollectiveDtypeAndCount) {
  for_each_rank(backend(), world(), [](dist::Communicator& c) { testdist::check_everything(c); });
}

TEST_P(CommunicatorParity, LargeMessagesOfEveryCollective) {
  for_each_rank(backend(), world(),
                [](dist::Communicator& c) { testdist::check_large_messages(c); });
}

TEST_P(CommunicatorParity, AllReduceNowHasTheBitsOfAllReduce) {
  for_each_rank(backend(), world(), [](dist::Communicator& c) {
    testdist::check_all_reduce_now_matches_all_reduce(c);
  });
}

TEST_P(CommunicatorParity, AllReduceNowRunsAfterTheAllReducesIssuedBeforeIt) {
  for_each_rank(backend(), world(),
                [](dist::Communicator& c) { testdist::check_all_reduce_now_keeps_issue_order(c); });
}

TEST_P(CommunicatorParity, RoundedAveragesAreBitIdenticalOnEveryRankToTheLocalBackend) {
  // Values whose float sums round, unlike collective_cases' exact inputs: the backend must reduce
  // in the local backend's order, and every rank must end with the same bits.
  const auto averaged = [](dist::Communicator& c) {
    Tensor t({1001});
    Generator gen(11, c.rank());
    uniform_(t, -1, 1, gen);
    c.all_reduce(t, {dist::ReduceOp::kAvg})->wait();
    return t;
  };
  Tensor reference;
  for_each_rank("local", world(), [&](dist::Communicator& c) {
    Tensor t = averaged(c);
    if (c.rank() == 0) reference = t;
  });
  ASSERT_TRUE(reference.defined()) << "the local backend gave no reference";
  for_each_rank(backend(), world(), [&](dist::Communicator& c) {
    const Tensor t = averaged(c);
    EXPECT_EQ(std::memcmp(t.data_ptr(), reference.data_ptr(), reference.nbytes()), 0)
        << "differs from rank 0 of the local backend";
  });
}

/// Float values whose sums round (1e8 + 1 is 1e8) or keep a sign (-0 + -0 is -0, 0 + -0 is 0).
constexpr float kRoundingValues[] = {1e8f, 1.0f, -1e8f, -0.0f};
constexpr int64_t kNumRoundingValues = 4;

/// Assignments of kRoundingValues to `world` ranks: kNumRoundingValues ^ world.
int64_t rounding_assignments(int world) {
  int64_t n = 1;
  for (int r = 0; r < world; ++r) n *= kNumRoundingValues;
  return n;
}

/// Rank `rank`'s element i: digit `rank` of i mod rounding_assignments(world), in base
/// kNumRoundingValues, picks its value. A run of rounding_assignments(world) elements starting at
/// a multiple of it thus holds every assignment of values to ranks once.
float rounding_value(int rank, int64_t i, int world) {
  int64_t digits = i % rounding_assignments(world);
  for (int r = 0; r < rank; ++r) digits /= kNumRoundingValues;
  return kRoundingValues[digits % kNumRoundingValues];
}

/// Element i summed in float over the ranks in `order`: ((x[o0] + x[o1]) + x[o2]) + ...
float sum_in_order(const std::vector<int>& order, int64_t i, int world) {
  float acc = rounding_value(order[0], i, world);
  for (size_t k = 1; k < order.size(); ++k) acc += rounding_value(order[k], i, world);
  return acc;
}

/// Compares the bits of every element (so -0 differs from 0) with expected[i % expected.size()].
void expect_bits(const Tensor& t, const std::vector<float>& expected, int world,
                 const std::string& what) {
  int reported = 0;
  for (int64_t i = 0; i < t.numel() && reported < 3; ++i) {
    const float got = t.data<float>()[i];
    const float want = expected[size_t(i) % expected.size()];
    if (std::bit_cast<uint32_t>(got) != std::bit_cast<uint32_t>(want)) {
      std::string inputs;
      for (int r = 0; r < world; ++r) {
        inputs += (r ? ", " : "") + std::to_string(rounding_value(r, i, world));
      }
      ADD_FAILURE() << what << ": element " << i << " is " << got << ", expected " << want
                    << ", the sum of [" << inputs << "] in rank order";
      ++reported;
    }
  }
}

TEST_P(CommunicatorParity, RoundingSumsAreInRankOrderBitForBitOnEveryRank) {
  // Every backend sums in rank order, ((x0 + x1) + x2) + ..., which makes results the same on
  // every rank and in every run. Each rank's chunk of these inputs holds every assignment of
  // kRoundingValues to ranks, so any other order gives different bits in every chunk.
  const int n = world();
  const int64_t per_chunk = rounding_assignments(n);
  std::vector<int> rank_order(n);
  std::iota(rank_order.begin(), rank_order.end(), 0);
  std::vector<float> expected(per_chunk);
  for (int64_t i = 0; i < per_chunk; ++i) expected[i] = sum_in_order(rank_order, i, n);
  if (n <= 4) {
    // That claim, checked for every order that is not the same sum (swapping the first two ranks
    // is, since a + b == b + a).
    std::vector<int> order = rank_order;
    while (std::next_permutation(order.begin(), order.end())) {
      if (std::equal(order.begin() + 2, order.end(), rank_order.begin() + 2)) continue;
      bool differs = false;
      for (int64_t i = 0; i < per_chunk && !differs; ++i) {
        differs = std::bit_cast<uint32_t>(sum_in_order(order, i, n)) !=
                  std::bit_cast<uint32_t>(expected[i]);
      }
      EXPECT_TRUE(differs) << "no input tells an order starting with ranks " << order[0] << ", "
                           << order[1] << ", " << order[2] << " from rank order";
    }
  }
  for_each_rank(backend(), n, [&](dist::Communicator& c) {
    // Chunk r of an all_reduce (and of reduce_scatter's input) is elements
    // [r * per_chunk, (r + 1) * per_chunk): a multiple of per_chunk elements splits evenly.
    Tensor input({n * per_chunk});
    for (int64_t i = 0; i < input.numel(); ++i) {
      input.data<float>()[i] = rounding_value(c.rank(), i, n);
    }
    Tensor summed({n * per_chunk});
    summed.copy_(input);
    c.all_reduce(summed)->wait();
    expect_bits(summed, expected, n, "all_reduce on rank " + std::to_string(c.rank()));
    Tensor scattered({per_chunk});
    c.reduce_scatter(input, scattered)->wait();
    expect_bits(scattered, expected, n, "reduce_scatter on rank " + std::to_string(c.rank()));
  });
}

INSTANTIATE_TEST_SUITE_P(AllBackends, CommunicatorParity,
                         ::testing::Combine(::testing::ValuesIn(dist::available_backends()),
                                            ::testing::Values(1, 2, 3, 4, 8)),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_" +
                                  std::to_string(std::get<1>(info.param)) + "ranks";
                         });

}  // namespace
}  // namespace dtrain
