// Symmetric memory between ranks on one host: tcp ranks as threads (and one rank as a forked
// process) reduce allocate_symmetric buffers in place; the results match the local backend bit
// for bit, and a rank that is late or gone is named.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <future>
#include <thread>

#include "distributed/backends/local/local_communicator.h"
#include "tcp_ranks.h"

namespace dtrain {
namespace {

using dist::AsyncCommunicator;
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
    for_each_tcp_rank(world, [&](AsyncCommunicator& c) {
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
  for_each_tcp_rank(2, [](AsyncCommunicator& c) {
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
  for_each_tcp_rank(2, [](AsyncCommunicator& c) {
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
  for_each_tcp_rank(2, [&](AsyncCommunicator& c) {
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

}  // namespace
}  // namespace dtrain
