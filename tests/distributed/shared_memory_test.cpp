// Symmetric memory between ranks on one host: tcp ranks as threads (and one rank as a forked
// process) reduce allocate_symmetric buffers in place; the results match the local backend bit
// for bit, and a rank that is late or gone is named. Groups spanning hosts (threads given
// different host keys) share memory per host and exchange between hosts over tcp.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <future>
#include <thread>

#include "collective_cases.h"
#include "distributed/backends/local/local_communicator.h"
#include "tcp_ranks.h"

namespace dtrain {
namespace {

using dist::HostCommunicator;
using dist::ReduceOp;
using ::testing::HasSubstr;

Tensor random_input(int rank, int64_t count) {
  Tensor t({count});
  Generator gen(5, static_cast<uint64_t>(rank));
  uniform_(t, -1, 1, gen);
  return t;
}

TEST(SharedMemory, RanksOnOneHostReduceInPlaceBitIdenticalToTheLocalBackend) {
  // Sums of random floats round, so the order of the additions shows in the bits.
  const int64_t count = 70001;
  for (int world : {2, 3, 4}) {
    std::vector<Tensor> shared(world), local(world);
    for_each_tcp_rank(world, [&](HostCommunicator& c) {
      Tensor t = c.allocate_symmetric(count, DType::kFloat32);
      EXPECT_TRUE(c.uses_shared_memory()) << "rank " << c.rank() << " of " << world;
      EXPECT_TRUE(c.in_shared_memory(t));
      t.copy_(random_input(c.rank(), count));
      c.all_reduce(t, {ReduceOp::kAvg})->wait();
      c.all_reduce(t, {ReduceOp::kSum})->wait();  // a second one reuses the segment's flags
      shared[c.rank()] = t.clone();
    });
    auto comms = dist::make_local_group(world);
    std::vector<std::thread> threads;
    for (int r = 0; r < world; ++r) {
      threads.emplace_back([&, r] {
        Tensor t = random_input(r, count);
        comms[r]->all_reduce(t, {ReduceOp::kAvg})->wait();
        comms[r]->all_reduce(t, {ReduceOp::kSum})->wait();
        local[r] = t;
      });
    }
    for (auto& t : threads) t.join();
    for (int r = 0; r < world; ++r) {
      EXPECT_EQ(std::memcmp(shared[r].data_ptr(), local[0].data_ptr(), local[0].nbytes()), 0)
          << "rank " << r << " of " << world << " differs from the local backend";
    }
  }
}

TEST(SharedMemory, DtrainSharedMemory0GivesOrdinaryBuffersThatStillReduce) {
  setenv("DTRAIN_SHARED_MEMORY", "0", 1);
  for_each_tcp_rank(2, [](HostCommunicator& c) {
    Tensor t = c.allocate_symmetric(1000, DType::kFloat32);
    EXPECT_FALSE(c.uses_shared_memory());
    EXPECT_FALSE(c.in_shared_memory(t));
    t.fill_(static_cast<double>(c.rank() + 1));
    c.all_reduce(t)->wait();
    EXPECT_EQ(t.to_vector<float>()[999], 3.0f);
  });
  unsetenv("DTRAIN_SHARED_MEMORY");
}

TEST(SharedMemory, BuffersAboveTheSizeLimitAreOrdinaryMemory) {
  setenv("DTRAIN_SHARED_MEMORY_MAX_MB", "0.5", 1);
  for_each_tcp_rank(2, [](HostCommunicator& c) {
    Tensor small = c.allocate_symmetric(1000, DType::kFloat32);
    Tensor large = c.allocate_symmetric(200000, DType::kFloat32);  // 800 KB > 0.5 MiB
    EXPECT_TRUE(c.in_shared_memory(small));
    EXPECT_FALSE(c.in_shared_memory(large));
    large.fill_(1.0);
    c.all_reduce(large)->wait();
    EXPECT_EQ(large.to_vector<float>()[199999], 2.0f);
  });
  unsetenv("DTRAIN_SHARED_MEMORY_MAX_MB");
}

TEST(SharedMemory, ARankThatDoesNotArriveIsNamedAfterTheTimeout) {
  std::promise<void> reported;
  std::shared_future<void> done = reported.get_future().share();
  for_each_tcp_rank(2, [&](HostCommunicator& c) {
    Tensor t = c.allocate_symmetric(64, DType::kFloat32);
    if (c.rank() == 1) {
      done.wait();  // stays alive, but never joins the all-reduce
      return;
    }
    try {
      c.all_reduce(t, {ReduceOp::kSum, std::chrono::milliseconds(300)})->wait();
      ADD_FAILURE() << "the all-reduce completed without rank 1";
    } catch (const TimeoutError& e) {
      EXPECT_THAT(e.message(), HasSubstr("shared memory: rank 0 in collective #"));
      EXPECT_THAT(e.message(), HasSubstr("rank(s) 1 did not enter it within 300 ms"));
    }
    reported.set_value();
  });
}

TEST(SharedMemory, APeerProcessThatDiesIsNamedWithItsPid) {
  // Rank 1 is a forked process that maps the buffer, then exits instead of reducing it. Until
  // this process reaps it, it is a zombie: the check must count that as gone too.
  TestStore store;
  std::fflush(nullptr);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    int code = 0;
    try {
      dist::TcpCommunicator comm(store.client(), 1, 2);
      comm.allocate_symmetric(64, DType::kFloat32);
    } catch (...) {
      code = 1;
    }
    _exit(code == 0 ? 7 : 1);
  }
  {
    dist::TcpCommunicator comm(store.client(), 0, 2);
    Tensor t = comm.allocate_symmetric(64, DType::kFloat32);
    EXPECT_TRUE(comm.in_shared_memory(t));
    try {
      comm.all_reduce(t, {ReduceOp::kSum, std::chrono::seconds(20)})->wait();
      ADD_FAILURE() << "the all-reduce completed without rank 1";
    } catch (const DistError& e) {
      EXPECT_THAT(e.message(), HasSubstr("rank 1 (pid " + std::to_string(child) + ") exited"));
      EXPECT_THAT(e.message(), HasSubstr("peer lost"));
    }
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 7) << "the child rank failed to set up";
}

/// Runs body on tcp ranks as threads, rank r claiming to be on host hosts[r].
void for_each_rank_on_hosts(const std::string& hosts,
                            const std::function<void(HostCommunicator&)>& body) {
  std::vector<std::string> errors;
  for_each_tcp_rank(
      static_cast<int>(hosts.size()),
      [&](HostCommunicator& c) {
        c.set_shared_memory_host_key(std::string("host-") + hosts[c.rank()]);
        body(c);
      },
      {}, &errors);
  for (size_t r = 0; r < errors.size(); ++r) {
    EXPECT_EQ(errors[r], "") << "rank " << r << " failed";
  }
}

std::vector<int> ranks_on(const std::string& hosts, char host) {
  std::vector<int> out;
  for (size_t r = 0; r < hosts.size(); ++r) {
    if (hosts[r] == host) out.push_back(static_cast<int>(r));
  }
  return out;
}

TEST(SharedMemoryAcrossHosts, EachHostsRanksShareMemoryAndEveryCollectiveCaseHolds) {
  // Two hosts, hosts of one rank, interleaved ranks, three hosts: the exact inputs of the shared
  // collective cases give exact results whatever the order of the additions.
  for (const std::string hosts : {"aabb", "aab", "abab", "aabbcc", "abbba"}) {
    SCOPED_TRACE("hosts " + hosts);
    for_each_rank_on_hosts(hosts, [&](HostCommunicator& c) {
      Tensor t = c.allocate_symmetric(1000, DType::kFloat32);
      EXPECT_TRUE(c.uses_shared_memory()) << "rank " << c.rank();
      EXPECT_TRUE(c.in_shared_memory(t)) << "rank " << c.rank();
      EXPECT_EQ(c.ranks_sharing_memory(), ranks_on(hosts, hosts[c.rank()])) << "rank " << c.rank();
      testdist::check_symmetric_all_reduce(c);
    });
  }
}

TEST(SharedMemoryAcrossHosts, RoundedSumsAreBitIdenticalOnEveryRankAndCloseToTheLocalBackend) {
  const int64_t count = 70001;  // uneven ring chunks and several 16 KB blocks per rank
  const std::string hosts = "aabbb";
  const int world = static_cast<int>(hosts.size());
  std::vector<Tensor> shared(world);
  for_each_rank_on_hosts(hosts, [&](HostCommunicator& c) {
    Tensor t = c.allocate_symmetric(count, DType::kFloat32);
    t.copy_(random_input(c.rank(), count));
    c.all_reduce(t, {ReduceOp::kAvg})->wait();
    c.all_reduce(t, {ReduceOp::kSum})->wait();  // a second one reuses the segment's flags
    shared[c.rank()] = t.clone();
  });
  std::vector<double> want(count, 0.0);  // the average, then summed over the ranks: the sum
  for (int r = 0; r < world; ++r) {
    const auto input = random_input(r, count).to_vector<float>();
    for (int64_t i = 0; i < count; ++i) want[i] += input[i];
  }
  for (int r = 0; r < world; ++r) {
    EXPECT_EQ(std::memcmp(shared[r].data_ptr(), shared[0].data_ptr(), shared[0].nbytes()), 0)
        << "rank " << r << " differs from rank 0";
  }
  const auto got = shared[0].to_vector<float>();
  for (int64_t i = 0; i < count; i += 997) EXPECT_NEAR(got[i], want[i], 1e-5) << "element " << i;
}

TEST(SharedMemoryAcrossHosts, RanksAllOnDifferentHostsShareNothing) {
  for_each_rank_on_hosts("abc", [](HostCommunicator& c) {
    Tensor t = c.allocate_symmetric(100, DType::kFloat32);
    EXPECT_FALSE(c.uses_shared_memory());
    EXPECT_FALSE(c.in_shared_memory(t));
    t.fill_(1.0);
    c.all_reduce(t)->wait();
    EXPECT_EQ(t.to_vector<float>()[99], 3.0f);
  });
}

TEST(SharedMemoryAcrossHosts, ALateRankIsNamedByItsRankInTheGroup) {
  // Ranks 1 and 2 share host b; rank 2 never joins, so rank 1 names it (not as slot 1).
  std::promise<void> reported;
  std::shared_future<void> done = reported.get_future().share();
  for_each_rank_on_hosts("abb", [&](HostCommunicator& c) {
    Tensor t = c.allocate_symmetric(64, DType::kFloat32);
    if (c.rank() == 2) {
      done.wait();
      return;
    }
    try {
      c.all_reduce(t, {ReduceOp::kSum, std::chrono::milliseconds(300)})->wait();
      ADD_FAILURE() << "rank " << c.rank() << "'s all-reduce completed without rank 2";
    } catch (const TimeoutError& e) {
      if (c.rank() == 1) {
        EXPECT_THAT(e.message(), HasSubstr("shared memory: rank 1 in collective #"));
        EXPECT_THAT(e.message(), HasSubstr("rank(s) 2 did not enter it within 300 ms"));
      }
    } catch (const Error& e) {
      EXPECT_EQ(c.rank(), 0) << e.what();  // host a's rank waits for host b over tcp
    }
    if (c.rank() == 1) reported.set_value();
  });
}

}  // namespace
}  // namespace dtrain
