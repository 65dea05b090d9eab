// Symmetric memory between ranks on one host: tcp ranks as threads (and one rank as a forked
// process) reduce allocate_symmetric buffers in place; the results match the local backend bit
// for bit, and a rank that is late or gone is named. A name left in /dev/shm by a rank killed
// during set-up is removed by the next set-up. Groups spanning hosts (threads given different
// host keys) share memory per host and exchange between hosts over tcp.
#include "dtrain/distributed/shared_memory.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <thread>

#include "collective_cases.h"
#include "dtrain/distributed/backends/local/local_communicator.h"
#include "dtrain/tensor/ops.h"
#include "tcp_ranks.h"

namespace dtrain {
namespace {

using dist::HostCommunicator;
using dist::ReduceOp;
using dist::SegmentName;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

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

// tcp all-reduces of ordinary tensors up to 64 KiB are copied through a shared slot.

TEST(StagedAllReduce, SmallOrdinaryTensorsReduceInASharedSlotBitIdenticalToTheLocalBackend) {
  const int64_t count = 1000;
  for (int world : {2, 3, 4}) {
    std::vector<Tensor> staged(world), local(world);
    for_each_tcp_rank(world, [&](HostCommunicator& c) {
      EXPECT_FALSE(c.stages_small_all_reduces()) << "before the first all-reduce";
      Tensor a = random_input(c.rank(), count), b = random_input(c.rank() + 10, count);
      Tensor n = full({3}, static_cast<double>(c.rank()), DType::kInt64);
      // Two issued before either is waited for: they take turns in the one slot.
      auto wa = c.all_reduce(a, {ReduceOp::kAvg});
      auto wb = c.all_reduce(b, {ReduceOp::kSum});
      wa->wait();
      wb->wait();
      c.all_reduce_now(n, {ReduceOp::kMax});
      EXPECT_TRUE(c.stages_small_all_reduces()) << "rank " << c.rank() << " of " << world;
      EXPECT_EQ(n.to_vector<int64_t>(), std::vector<int64_t>(3, world - 1));
      staged[c.rank()] = ops::cat({a, b}, 0);
    });
    auto comms = dist::make_local_group(world);
    std::vector<std::thread> threads;
    for (int r = 0; r < world; ++r) {
      threads.emplace_back([&, r] {
        Tensor a = random_input(r, count), b = random_input(r + 10, count);
        comms[r]->all_reduce(a, {ReduceOp::kAvg})->wait();
        comms[r]->all_reduce(b, {ReduceOp::kSum})->wait();
        local[r] = ops::cat({a, b}, 0);
      });
    }
    for (auto& t : threads) t.join();
    for (int r = 0; r < world; ++r) {
      EXPECT_EQ(std::memcmp(staged[r].data_ptr(), local[0].data_ptr(), local[0].nbytes()), 0)
          << "rank " << r << " of " << world << " differs from the local backend";
    }
  }
}

TEST(StagedAllReduce, TensorsAbove64KiBGoThroughTheBackendAndNegotiateNoSlot) {
  for_each_tcp_rank(2, [](HostCommunicator& c) {
    const int64_t limit = HostCommunicator::kStagedAllReduceBytes / 4;
    Tensor large = full({limit + 1}, 1.0);
    c.all_reduce(large)->wait();
    EXPECT_FALSE(c.stages_small_all_reduces());
    EXPECT_EQ(large.to_vector<float>()[limit], 2.0f);
    Tensor largest_staged = full({limit}, 2.0);
    c.all_reduce(largest_staged)->wait();
    EXPECT_TRUE(c.stages_small_all_reduces());
    EXPECT_EQ(largest_staged.to_vector<float>()[limit - 1], 4.0f);
  });
}

TEST(StagedAllReduce, DtrainSharedMemory0KeepsSmallAllReducesOnTheBackend) {
  setenv("DTRAIN_SHARED_MEMORY", "0", 1);
  for_each_tcp_rank(3, [](HostCommunicator& c) {
    Tensor t = full({10}, static_cast<double>(c.rank() + 1));
    c.all_reduce(t)->wait();
    EXPECT_FALSE(c.stages_small_all_reduces());
    EXPECT_EQ(t.to_vector<float>()[9], 6.0f);
  });
  unsetenv("DTRAIN_SHARED_MEMORY");
}

TEST(StagedAllReduce, DifferentSizesAreReportedInsteadOfMixingData) {
  std::vector<std::string> errors(2);
  for_each_tcp_rank(2, [&](HostCommunicator& c) {
    Tensor first({4});
    c.all_reduce(first)->wait();  // negotiates the slot
    Tensor t({c.rank() == 0 ? 8 : 9});
    try {
      c.all_reduce(t)->wait();
    } catch (const DistError& e) {
      errors[c.rank()] = e.message();
    }
  });
  for (int r : {0, 1}) {
    EXPECT_THAT(errors[r], HasSubstr("the ranks issued different collectives"));
    EXPECT_THAT(errors[r], HasSubstr("rank 0: sum of 8 float32"));
    EXPECT_THAT(errors[r], HasSubstr("rank 1: sum of 9 float32"));
  }
}

TEST(StagedAllReduce, ARankThatDoesNotArriveIsNamedWithTheCollective) {
  std::promise<void> reported;
  std::shared_future<void> done = reported.get_future().share();
  for_each_tcp_rank(2, [&](HostCommunicator& c) {
    Tensor t({16});
    c.all_reduce(t)->wait();
    ASSERT_TRUE(c.stages_small_all_reduces());
    if (c.rank() == 1) {
      done.wait();  // stays alive, but never joins the second all-reduce
      return;
    }
    try {
      c.all_reduce(t, {ReduceOp::kSum, std::chrono::milliseconds(300)})->wait();
      ADD_FAILURE() << "the all-reduce completed without rank 1";
    } catch (const TimeoutError& e) {
      EXPECT_THAT(e.message(), HasSubstr("shared memory: rank 0 in collective #2 all_reduce(sum)"));
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

/// The /dev/shm entries (no leading '/') of segments that process `pid` created.
std::vector<std::string> segments_created_by(pid_t pid) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm")) {
    const std::string entry = e.path().filename().string();
    const std::optional<SegmentName> name = SegmentName::parse(entry);
    if (name && name->pid == pid) out.push_back(entry);
  }
  return out;
}

bool in_dev_shm(const std::string& name) {  // name with its leading '/'
  return access(("/dev/shm" + name).c_str(), F_OK) == 0;
}

TEST(SharedMemory, SegmentNamesSayWhoCreatedThem) {
  const SegmentName name = SegmentName::fresh();
  EXPECT_EQ(name.pid, getpid());
  EXPECT_NE(name.start, 0u) << "the start time from /proc/self/stat";
  EXPECT_EQ(name.nonce % 2, 1u);
  ASSERT_EQ(name.str().rfind("/dtrain-", 0), 0u) << name.str();
  const std::optional<SegmentName> back = SegmentName::parse(name.str().substr(1));
  ASSERT_TRUE(back.has_value()) << name.str();
  EXPECT_EQ(back->host, name.host);
  EXPECT_EQ(back->pid, name.pid);
  EXPECT_EQ(back->start, name.start);
  EXPECT_EQ(back->nonce, name.nonce);
  for (const char* other : {"dtrain-7154-9422972817792570651", "dtrain-", "psm_1234",
                            "dtrain-0123456789abcdef-12-34-0123456789abcdeg",
                            "dtrain-0123456789abcdef-0-34-0123456789abcdef",
                            "dtrain-0123456789abcdef-12-34-0123456789abcdef-5"}) {
    EXPECT_FALSE(SegmentName::parse(other).has_value()) << other;
  }
}

TEST(SharedMemory, OnlyNamesOfThisHostWhoseCreatorIsGoneAreRemoved) {
  // This process's own name stays; the same pid with another start time is a process that has
  // exited (its pid now reused) and goes; another host tag's pids are not ours to judge.
  const SegmentName alive = SegmentName::fresh();
  SegmentName reused = alive, elsewhere = alive;
  reused.start += 1;
  reused.nonce ^= 2;
  elsewhere.start += 1;
  elsewhere.nonce ^= 4;
  elsewhere.host ^= 1;
  for (const SegmentName& n : {alive, reused, elsewhere}) {
    const int fd = shm_open(n.str().c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    ASSERT_GE(fd, 0) << n.str();
    close(fd);
  }
  const std::vector<std::string> removed = dist::remove_abandoned_segments();
  EXPECT_THAT(removed, Contains(reused.str()));
  EXPECT_THAT(removed, Not(Contains(alive.str())));
  EXPECT_THAT(removed, Not(Contains(elsewhere.str())));
  EXPECT_FALSE(in_dev_shm(reused.str()));
  EXPECT_TRUE(in_dev_shm(alive.str()));
  EXPECT_TRUE(in_dev_shm(elsewhere.str()));
  shm_unlink(alive.str().c_str());
  shm_unlink(elsewhere.str().c_str());
}

/// SIGKILLs and reaps a child process that the test has not reaped itself.
struct ChildGuard {
  pid_t pid;
  bool reaped = false;
  ~ChildGuard() {
    if (reaped) return;
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
};

TEST(SharedMemory, ANameLeftByARankKilledDuringSetUpIsRemovedByTheRestartedSetUp) {
  // Rank 0, a forked process, creates the segment of its second buffer and waits for rank 1 to
  // map it. Rank 1 (this process) never does: it watches /dev/shm for that name, and SIGKILLs
  // rank 0 while the name exists, as an OOM kill or the launcher would. Then a new group on this
  // host (the restarted job) sets up a buffer: afterwards no name of rank 0's remains.
  const int watch = inotify_init1(IN_CLOEXEC);
  ASSERT_GE(watch, 0);
  ASSERT_GE(inotify_add_watch(watch, "/dev/shm", IN_CREATE), 0);
  int alive[2];  // rank 0 holds the write end: end of file here when it exits
  ASSERT_EQ(pipe(alive), 0);
  TestStore store;
  std::fflush(nullptr);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(alive[0]);
    try {
      dist::TcpCommunicator comm(store.client(), 0, 2);
      comm.allocate_symmetric(64, DType::kFloat32);  // both ranks: they share this host
      comm.allocate_symmetric(64, DType::kFloat32);  // creates a segment, waits for rank 1
    } catch (...) {
    }
    _exit(1);
  }
  ChildGuard guard{child};
  close(alive[1]);
  std::string name;
  {
    dist::TcpCommunicator comm(store.client(), 1, 2);
    Tensor first = comm.allocate_symmetric(64, DType::kFloat32);
    ASSERT_TRUE(comm.in_shared_memory(first));
    // Rank 0's first buffer's name and its small all-reduces' staging slot (negotiated inside the
    // first allocation's own all-reduce) come before the second buffer's: the third is the one
    // it waits on.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    int seen = 0;
    while (name.empty()) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd fds[2] = {{watch, POLLIN, 0}, {alive[0], POLLIN, 0}};
      ASSERT_GT(poll(fds, 2, static_cast<int>(std::max<int64_t>(0, left.count()))), 0)
          << "rank 0 created no second segment within 30 s";
      ASSERT_EQ(fds[1].revents, 0) << "rank 0 exited before it created its second segment";
      alignas(inotify_event) char events[4096];
      const ssize_t got = read(watch, events, sizeof events);
      ASSERT_GT(got, 0);
      for (ssize_t at = 0; at < got;) {
        const auto* event = reinterpret_cast<const inotify_event*>(events + at);
        at += static_cast<ssize_t>(sizeof(inotify_event) + event->len);
        if (event->len == 0) continue;
        const std::optional<SegmentName> parsed = SegmentName::parse(event->name);
        if (parsed && parsed->pid == child && ++seen == 3) name = "/" + std::string(event->name);
      }
    }
    // Rank 0 is alive and waiting, so its name is there (and no sweep may remove it).
    EXPECT_TRUE(in_dev_shm(name)) << name;
    ASSERT_EQ(kill(child, SIGKILL), 0);
    // Dead, but left unreaped for now: a zombie creator counts as gone too.
    siginfo_t info{};
    ASSERT_EQ(waitid(P_PID, static_cast<id_t>(child), &info, WEXITED | WNOWAIT), 0);
    EXPECT_EQ(info.si_status, SIGKILL);
  }
  close(watch);
  close(alive[0]);

  for_each_tcp_rank(2, [](HostCommunicator& c) {
    Tensor t = c.allocate_symmetric(64, DType::kFloat32);
    EXPECT_TRUE(c.in_shared_memory(t));
  });
  EXPECT_FALSE(in_dev_shm(name)) << name;
  EXPECT_THAT(segments_created_by(child), IsEmpty());
  EXPECT_THAT(segments_created_by(getpid()), IsEmpty()) << "names are removed once mapped";
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  guard.reaped = true;
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

TEST(SharedMemoryAcrossHosts, SmallOrdinaryTensorsAreStagedPerHostAndExact) {
  for (const std::string hosts : {"aabb", "abab", "aab", "abc"}) {
    SCOPED_TRACE("hosts " + hosts);
    const int world = static_cast<int>(hosts.size());
    for_each_rank_on_hosts(hosts, [&](HostCommunicator& c) {
      Tensor t = full({100}, static_cast<double>(c.rank() + 1));
      c.all_reduce(t)->wait();
      EXPECT_EQ(t.to_vector<float>()[99], static_cast<float>(world * (world + 1) / 2));
      EXPECT_EQ(c.stages_small_all_reduces(), hosts != "abc") << "rank " << c.rank();
    });
  }
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
