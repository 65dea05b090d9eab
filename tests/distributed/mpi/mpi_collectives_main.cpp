// The mpi backend in real ranks: run under `mpiexec -n N` (ctest: mpi_collectives_np{2,3,4}),
// every rank runs the same GoogleTest cases; rank 0 prints the full report, the others only their
// failures, and the exit code is non-zero on every rank when any rank failed.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "collective_cases.h"
#include "dtrain/distributed/backends/mpi/mpi_communicator.h"
#include "dtrain/distributed/job.h"
#include "dtrain/distributed/reduce.h"
#include "dtrain/distributed/registry.h"
#include "dtrain/tensor/ops.h"

namespace dtrain {
namespace {

using dist::MpiCommunicator;
using dist::ReduceOp;
using ::testing::HasSubstr;

/// The communicator every case shares; created in main, after InitGoogleTest.
std::shared_ptr<MpiCommunicator> g_comm;
MpiCommunicator& comm() { return *g_comm; }

/// FNV-1a over a tensor's bytes: equal on every rank iff the results are bit-identical.
int64_t checksum(const Tensor& t) {
  uint64_t h = 1469598103934665603ull;
  const auto* p = static_cast<const unsigned char*>(t.data_ptr());
  for (size_t i = 0; i < t.nbytes(); ++i) h = (h ^ p[i]) * 1099511628211ull;
  return static_cast<int64_t>(h);
}

/// Gathers every rank's checksum of t and expects them all equal to rank 0's.
void expect_same_on_every_rank(const Tensor& t, const std::string& what) {
  Tensor mine = full({1}, 0.0, DType::kInt64);
  mine.data<int64_t>()[0] = checksum(t);
  Tensor all({comm().size()}, DType::kInt64);
  comm().all_gather(mine, all)->wait();
  for (int r = 1; r < comm().size(); ++r) {
    EXPECT_EQ(all.data<int64_t>()[r], all.data<int64_t>()[0])
        << what << ": rank " << r << "'s result differs from rank 0's";
  }
}

TEST(MpiCollectives, EveryCollectiveDtypeAndCount) { testdist::check_everything(comm()); }

TEST(MpiCollectives, ChunkedPathsGiveTheSameResults) {
  // Counts above INT_MAX are split into chunks; a chunk of 5 elements takes those paths (including
  // the packed all_gather/reduce_scatter) with counts the test can afford.
  comm().set_max_chunk_elements(5);
  testdist::check_everything(comm());
  comm().set_max_chunk_elements(INT_MAX);
}

TEST(MpiCollectives, RoundedResultsAreBitIdenticalOnEveryRank) {
  for (DType dtype : {DType::kFloat32, DType::kFloat64, DType::kFloat16, DType::kBFloat16}) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kProduct}) {
      // Values whose sums round, unlike collective_cases' exact inputs.
      Tensor t({1001});
      Generator gen(11, comm().rank());
      uniform_(t, -1, 1, gen);
      t = to_dtype(t, dtype);
      comm().all_reduce(t, {op})->wait();
      expect_same_on_every_rank(t, "all_reduce(" + std::string(dist::reduce_op_name(op)) + ") " +
                                       std::string(dtype_name(dtype)));
    }
  }
}

/// Rank r's input in the rank-order cases: every rank can make every rank's input, and so the
/// expected result.
Tensor rank_input(int r, int64_t n, DType dtype) {
  Tensor t({n});
  Generator gen(23, r);
  uniform_(t, -1, 1, gen);
  return to_dtype(t, dtype);
}

/// What the tcp backend and shared memory compute: ((x0 + x1) + x2) + ..., then / N for kAvg.
/// float32 spelled out, the other dtypes through the reduce_into and divide_in_place they use.
Tensor rank_ordered(const std::vector<Tensor>& xs, ReduceOp op) {
  const int n = static_cast<int>(xs.size());
  const int64_t count = xs[0].numel();
  Tensor out = xs[0].clone();
  if (out.dtype() == DType::kFloat32) {
    float* o = out.data<float>();
    for (int64_t i = 0; i < count; ++i) {
      float acc = xs[0].data<float>()[i];
      for (int r = 1; r < n; ++r) acc += xs[r].data<float>()[i];
      o[i] = op == ReduceOp::kAvg ? acc / static_cast<float>(n) : acc;
    }
    return out;
  }
  for (int r = 1; r < n; ++r) {
    dist::reduce_into(out.data_ptr(), xs[r].data_ptr(), count, out.dtype(), ReduceOp::kSum);
  }
  if (op == ReduceOp::kAvg) dist::divide_in_place(out.data_ptr(), count, out.dtype(), n);
  return out;
}

/// How many elements of a and b differ in their bits (both of one dtype and size).
int64_t differing_elements(const Tensor& a, const Tensor& b) {
  const size_t es = dtype_size(a.dtype());
  const auto* pa = static_cast<const char*>(a.data_ptr());
  const auto* pb = static_cast<const char*>(b.data_ptr());
  int64_t differ = 0;
  for (int64_t i = 0; i < a.numel(); ++i) differ += std::memcmp(pa + i * es, pb + i * es, es) != 0;
  return differ;
}

// docs/cluster.md: mpirun gives the bits of `dtrain launch`. From 3 ranks on, Open MPI's own
// order (DTRAIN_MPI_REDUCTION_ORDER=native) sums in another order and fails this.
TEST(MpiCollectives, ReductionsSumInTheTcpBackendsRankOrderBitForBit) {
  const int n = comm().size();
  // 1001 elements take the all-gather path, 100003 the reduce-scatter one; chunks of 7919
  // elements split the latter into many calls.
  for (int64_t max_chunk : {int64_t{INT_MAX}, int64_t{7919}}) {
    comm().set_max_chunk_elements(max_chunk);
    for (int64_t count : {int64_t{1001}, int64_t{100003}}) {
      for (DType dtype : {DType::kFloat32, DType::kFloat64, DType::kFloat16, DType::kBFloat16}) {
        std::vector<Tensor> xs;
        for (int r = 0; r < n; ++r) xs.push_back(rank_input(r, count, dtype));
        for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg}) {
          Tensor t = xs[comm().rank()].clone();
          comm().all_reduce(t, {op})->wait();
          EXPECT_EQ(differing_elements(t, rank_ordered(xs, op)), 0)
              << "all_reduce(" << dist::reduce_op_name(op) << ") " << dtype_name(dtype) << " x "
              << count << ", max chunk " << max_chunk << ", on rank " << comm().rank();
        }
      }
    }
  }
  comm().set_max_chunk_elements(INT_MAX);
  // reduce_scatter: rank r gets block r of every rank's input, reduced in rank order.
  const int64_t block = 30011;
  std::vector<Tensor> ins, mine;
  for (int r = 0; r < n; ++r) {
    ins.push_back(rank_input(r, block * n, DType::kFloat32));
    mine.push_back(ops::slice(ins.back(), 0, block * comm().rank(), block * (comm().rank() + 1)));
  }
  Tensor out({block});
  comm().reduce_scatter(ins[comm().rank()], out, {ReduceOp::kSum})->wait();
  EXPECT_EQ(differing_elements(out, rank_ordered(mine, ReduceOp::kSum)), 0)
      << "reduce_scatter on rank " << comm().rank();
  // reduce to the last rank.
  std::vector<Tensor> xs;
  for (int r = 0; r < n; ++r) xs.push_back(rank_input(r, 100003, DType::kFloat32));
  Tensor t = xs[comm().rank()].clone();
  comm().reduce(t, {ReduceOp::kAvg, n - 1})->wait();
  if (comm().rank() == n - 1) {
    EXPECT_EQ(differing_elements(t, rank_ordered(xs, ReduceOp::kAvg)), 0)
        << "reduce to rank " << n - 1;
  }
}

TEST(MpiCollectives, RanksGivenDifferentReductionOrdersAreRefused) {
  dist::MpiOptions options;
  options.reduction_order =
      comm().rank() == 0 ? dist::MpiReductionOrder::kNative : dist::MpiReductionOrder::kRank;
  try {
    MpiCommunicator::world(options);
    ADD_FAILURE() << "expected different reduction orders to be refused";
  } catch (const ValueError& e) {
    EXPECT_THAT(e.message(), HasSubstr("different reduction orders"));
  }
  options.reduction_order = dist::MpiReductionOrder::kNative;
  EXPECT_EQ(MpiCommunicator::world(options)->reduction_order(), dist::MpiReductionOrder::kNative);
}

TEST(MpiCollectives, SymmetricBuffersAreSharedMemoryWithTheSameBitsOnEveryRank) {
  // Under mpi, buffers above 4 MiB stay out of shared memory by default; main() allows them.
  Tensor t = comm().allocate_symmetric(100003, DType::kFloat32);
  EXPECT_TRUE(comm().uses_shared_memory()) << "the ranks of this job share one host";
  EXPECT_TRUE(comm().in_shared_memory(t));
  Generator gen(3, comm().rank());
  Tensor input({100003});
  uniform_(input, -1, 1, gen);
  t.copy_(input);
  comm().all_reduce(t, {ReduceOp::kAvg})->wait();
  expect_same_on_every_rank(t, "symmetric all_reduce(avg)");
}

TEST(MpiCollectives, WithoutASizeLimitSetBuffersUpTo4MiBAreSharedMemoryAndLargerOnesAreNot) {
  // main() sets DTRAIN_SHARED_MEMORY_MAX_MB; the limit is read at each allocation.
  const std::string saved = std::getenv("DTRAIN_SHARED_MEMORY_MAX_MB");
  unsetenv("DTRAIN_SHARED_MEMORY_MAX_MB");
  const int64_t limit_floats =
      static_cast<int64_t>(MpiCommunicator::kSharedMemoryDefaultMaxBytes) / 4;
  Tensor at_limit = comm().allocate_symmetric(limit_floats, DType::kFloat32);
  Tensor above = comm().allocate_symmetric(limit_floats + 1, DType::kFloat32);
  setenv("DTRAIN_SHARED_MEMORY_MAX_MB", saved.c_str(), 1);
  EXPECT_TRUE(comm().in_shared_memory(at_limit)) << "a 4 MiB bucket, ranks on one host";
  EXPECT_FALSE(comm().in_shared_memory(above)) << "above 4 MiB Open MPI reduces it";
  for (Tensor* t : {&at_limit, &above}) {
    Generator gen(5, comm().rank());
    Tensor input({t->numel()});
    uniform_(input, -1, 1, gen);
    t->copy_(input);
    comm().all_reduce(*t, {ReduceOp::kSum})->wait();
    expect_same_on_every_rank(*t, "all_reduce(sum) of a default-placed symmetric buffer");
  }
}

TEST(MpiCollectives, RanksPretendingToBeOnTwoHostsShareMemoryPerHostAndMeetOverMpi) {
  // Ranks 0, 1 on "host 0", 2, 3 on "host 1" (np 3: a host with one rank): the hosts' first
  // ranks exchange through the mpi backend's send and recv.
  if (comm().size() < 3) GTEST_SKIP() << "needs 3 ranks or more for two hosts with a shared one";
  auto c = MpiCommunicator::world();
  c->set_shared_memory_host_key("host-" + std::to_string(c->rank() / 2));
  Tensor t = c->allocate_symmetric(100003, DType::kFloat32);
  EXPECT_TRUE(c->in_shared_memory(t));
  const int first = c->rank() / 2 * 2;
  std::vector<int> mates = {first};
  if (first + 1 < c->size()) mates.push_back(first + 1);
  EXPECT_EQ(c->ranks_sharing_memory(), mates);
  testdist::check_symmetric_all_reduce(*c);
  Generator gen(7, c->rank());
  Tensor input({100003});
  uniform_(input, -1, 1, gen);
  t.copy_(input);
  c->all_reduce(t, {ReduceOp::kAvg})->wait();
  expect_same_on_every_rank(t, "symmetric all_reduce(avg) across pretend hosts");
}

TEST(MpiCollectives, AllReduce64MiB) {
  const int64_t count = (int64_t{64} << 20) / 4;
  Tensor t = testdist::check_all_reduce(comm(), DType::kFloat32, count, ReduceOp::kSum);
  expect_same_on_every_rank(t, "64 MiB all_reduce");
}

TEST(MpiCollectives, RunInIssueOrderWhileTheCallerContinues) {
  Tensor a = full({4}, comm().rank() + 1.0), b = full({1 << 20}, 10.0 * (comm().rank() + 1));
  const uint64_t first = comm().next_sequence();
  dist::WorkPtr wa = comm().all_reduce(a);
  dist::WorkPtr wb = comm().all_reduce(b);  // issued before the first finished
  EXPECT_EQ(wa->info().sequence, first);
  EXPECT_EQ(wb->info().sequence, first + 1);
  wb->wait();
  EXPECT_TRUE(wa->is_completed());
  const float n = comm().size();
  EXPECT_EQ(a.to_vector<float>()[0], n * (n + 1) / 2);
  EXPECT_EQ(b.to_vector<float>()[0], 10 * n * (n + 1) / 2);
}

TEST(MpiCollectives, AllReduceNowHasTheBitsOfAllReduce) {
  testdist::check_all_reduce_now_matches_all_reduce(comm());
}

TEST(MpiCollectives, AllReduceNowRunsAfterTheAllReducesIssuedBeforeIt) {
  testdist::check_all_reduce_now_keeps_issue_order(comm());
}

// float32 elements of a tensor too large for the staged small all-reduce (64 KiB).
constexpr int64_t kAboveStaging = 20000;

TEST(MpiCollectives, SmallAllReducesAreStagedInSharedMemoryWithTheBitsOfTheMessages) {
  auto staged = MpiCommunicator::world();
  dist::MpiOptions native;
  native.reduction_order = dist::MpiReductionOrder::kNative;
  auto unstaged = MpiCommunicator::world(native);  // Open MPI's order: never staged
  for (int64_t count : {int64_t{1}, int64_t{1000}, int64_t{16384}}) {
    Generator gen(11, staged->rank());
    Tensor input({count});
    uniform_(input, -1, 1, gen);
    Tensor via_slot = input.clone(), via_messages = input.clone();
    staged->all_reduce_now(via_slot, {ReduceOp::kAvg});
    // The same rank-order sums through the backend's own messages: a tensor just above the
    // staging size whose first `count` elements are the input.
    Tensor padded = zeros({kAboveStaging});
    Tensor(padded.storage(), 0, {count}, DType::kFloat32).copy_(input);
    staged->all_reduce_now(padded, {ReduceOp::kAvg});
    via_messages.copy_(Tensor(padded.storage(), 0, {count}, DType::kFloat32));
    EXPECT_EQ(std::memcmp(via_slot.data_ptr(), via_messages.data_ptr(), via_slot.nbytes()), 0)
        << count << " elements: the staged sums differ from the messages' bits";
    expect_same_on_every_rank(via_slot, "staged all_reduce(avg)");
    Tensor native_input = input.clone();
    unstaged->all_reduce_now(native_input, {ReduceOp::kSum});
  }
  EXPECT_TRUE(staged->stages_small_all_reduces()) << "the ranks of this job share one host";
  EXPECT_FALSE(unstaged->stages_small_all_reduces());
}

TEST(MpiCollectives, AStagedAllReduceThatTimesOutLeavesTheCommunicatorUnusable) {
  auto c = MpiCommunicator::world();
  Tensor t = full({8}, 1.0);
  c->all_reduce_now(t);  // every rank: the shared slot is set up
  ASSERT_TRUE(c->stages_small_all_reduces());
  if (c->rank() == 0) {
    // Rank 0 issues alone; the others join the barrier only after it has given up.
    try {
      c->all_reduce(t, {ReduceOp::kSum, std::chrono::milliseconds(300)})->wait();
      ADD_FAILURE() << "expected a timeout";
    } catch (const TimeoutError& e) {
      EXPECT_THAT(e.message(), HasSubstr("all_reduce(sum) float32 x 8"));
      EXPECT_THAT(e.message(), HasSubstr("within 300 ms"));
    }
    for (int64_t count : {int64_t{8}, kAboveStaging}) {  // staged or not, refused
      Tensor u = full({count}, 1.0);
      try {
        c->all_reduce(u)->wait();
        ADD_FAILURE() << "expected the communicator to refuse further collectives";
      } catch (const Error& e) {
        EXPECT_THAT(e.message(), HasSubstr("unusable after an earlier failure"));
        EXPECT_THAT(e.message(), HasSubstr("failed in shared memory on rank 0"));
      }
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(MpiCollectives, AllReduceNowTimesOutNamingTheCollective) {
  // A communicator of its own, as a timed-out one is unusable afterwards. Open MPI's order: the
  // call is one MPI collective (not staged in shared memory), which the late ranks complete.
  dist::MpiOptions native;
  native.reduction_order = dist::MpiReductionOrder::kNative;
  auto c = MpiCommunicator::world(native);
  Tensor t = full({8}, 1.0);
  if (c->rank() == 0) {
    // Rank 0 calls alone; the others join only after it has given up (the first barrier).
    try {
      c->all_reduce_now(t, {ReduceOp::kSum, std::chrono::milliseconds(300)});
      ADD_FAILURE() << "expected a timeout";
    } catch (const TimeoutError& e) {
      EXPECT_THAT(e.message(), HasSubstr("all_reduce(sum) float32 x 8 timed out after 300 ms "
                                         "on rank 0 of " +
                                         std::to_string(c->size())));
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  // The late ranks complete the abandoned collective, so MPI can still be finalised at exit.
  if (c->rank() != 0) c->all_reduce_now(t);
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(MpiCollectives, RecvOfTheWrongSizeIsReported) {
  if (comm().rank() > 1) return;
  Tensor t = zeros({comm().rank() == 0 ? 3 : 4});
  if (comm().rank() == 0) {
    comm().send(t, 1, {3})->wait();
  } else {
    try {
      comm().recv(t, 0, {3})->wait();
      ADD_FAILURE() << "a 3-element message into a 4-element receive should fail";
    } catch (const Error& e) {
      EXPECT_THAT(e.message(), HasSubstr("rank 0 sent 3 elements but the receive expects 4"));
    }
  }
}

TEST(MpiCollectives, RegistryCreatesTheWorld) {
  const auto names = dist::available_backends();
  ASSERT_GE(names.size(), 3u);
  EXPECT_THAT(std::vector<std::string>(names.begin(), names.begin() + 3),
              ::testing::ElementsAre("local", "tcp", "mpi"));
  auto c = dist::create_world_communicator("mpi", dist::job_spec_from_env(), nullptr);
  EXPECT_EQ(c->backend_name(), "mpi");
  EXPECT_EQ(c->rank(), comm().rank());
  EXPECT_EQ(c->size(), comm().size());
  Tensor t = full({3}, 1.0);
  c->all_reduce(t)->wait();
  EXPECT_EQ(t.to_vector<float>()[2], comm().size());
}

// With debug checks, ranks compare their calls before running them: a different count or a
// different collective is an error listing every rank's call, not a hang or garbage.
TEST(MpiCollectives, DebugChecksCatchDifferentCounts) {
  auto c = MpiCommunicator::world();
  c->set_debug_checks(true);
  Tensor t = zeros({c->rank() == 1 ? 5 : 4});
  try {
    c->all_reduce(t)->wait();
    ADD_FAILURE() << "expected the debug check to catch different counts";
  } catch (const Error& e) {
    EXPECT_THAT(e.message(), HasSubstr("DTRAIN_DISTRIBUTED_DEBUG"));
    EXPECT_THAT(e.message(), HasSubstr("rank 0: collective #1 all_reduce(sum) float32 x 4"));
    EXPECT_THAT(e.message(), HasSubstr("rank 1: collective #1 all_reduce(sum) float32 x 5"));
  }
}

TEST(MpiCollectives, DebugChecksCatchDifferentCollectives) {
  auto c = MpiCommunicator::world();
  c->set_debug_checks(true);
  Tensor t = zeros({4});
  try {
    if (c->rank() == 0) {
      c->broadcast(t)->wait();
    } else {
      c->all_reduce(t)->wait();
    }
    ADD_FAILURE() << "expected the debug check to catch different collectives";
  } catch (const Error& e) {
    EXPECT_THAT(e.message(), HasSubstr("rank 0: collective #1 broadcast(root 0) float32 x 4"));
    EXPECT_THAT(e.message(), HasSubstr("rank 1: collective #1 all_reduce(sum) float32 x 4"));
  }
}

TEST(MpiCollectives, TheJobFromEnvFindsOpenMpisRankAndSize) {
  dist::Job job = dist::Job::from_env();
  EXPECT_EQ(job.backend(), "mpi");
  auto c = job.world();
  EXPECT_EQ(c->backend_name(), "mpi");
  EXPECT_EQ(c->rank(), comm().rank());
  EXPECT_EQ(c->size(), comm().size());
}

TEST(MpiCollectives, ATimeoutNamesTheCollectiveAndLeavesTheCommunicatorUnusable) {
  // A communicator of its own, as this one ends up unusable. Open MPI's order: the call is one
  // MPI collective (not staged in shared memory), which the late ranks complete.
  dist::MpiOptions native;
  native.reduction_order = dist::MpiReductionOrder::kNative;
  auto c = MpiCommunicator::world(native);
  Tensor t = full({8}, 1.0);
  if (c->rank() == 0) {
    // Rank 0 issues alone; the others join only after it has given up (the first barrier).
    try {
      c->all_reduce(t, {ReduceOp::kSum, std::chrono::milliseconds(300)})->wait();
      ADD_FAILURE() << "expected a timeout";
    } catch (const TimeoutError& e) {
      EXPECT_THAT(e.message(), HasSubstr("all_reduce(sum) float32 x 8 timed out after 300 ms "
                                         "on rank 0 of " +
                                         std::to_string(c->size())));
      EXPECT_THAT(e.message(), HasSubstr("unusable"));
    }
    try {
      c->barrier()->wait();
      ADD_FAILURE() << "expected the communicator to refuse further collectives";
    } catch (const Error& e) {
      EXPECT_THAT(e.message(), HasSubstr("unusable after an earlier failure"));
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  // The late ranks complete the abandoned collective, so MPI can still be finalised at exit.
  if (c->rank() != 0) c->all_reduce(t)->wait();
  MPI_Barrier(MPI_COMM_WORLD);
}

/// On ranks other than 0: prints only failures, prefixed with the rank.
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestStart(const ::testing::TestInfo& info) override {
    test_ = std::string(info.test_suite_name()) + "." + info.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s: %s:%d: Failure\n%s\n", rank_, test_.c_str(),
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.message());
  }

 private:
  int rank_;
  std::string test_;
};

}  // namespace
}  // namespace dtrain

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  // Shared-memory buffers of any size, so the symmetric cases take that path under mpi too.
  setenv("DTRAIN_SHARED_MEMORY_MAX_MB", "1024", 1);
  int rank = 0, size = 1, failed = 0;
  {
    dtrain::g_comm = dtrain::dist::MpiCommunicator::world();  // initialises MPI
    rank = dtrain::g_comm->rank();
    size = dtrain::g_comm->size();
    if (rank != 0) {
      auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
      delete listeners.Release(listeners.default_result_printer());
      listeners.Append(new dtrain::FailurePrinter(rank));
    }
    failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
    dtrain::g_comm.reset();
  }
  // Every rank learns which ranks failed, so mpiexec's exit status does not depend on which rank
  // it reports.
  std::vector<int> failures(size);
  MPI_Allgather(&failed, 1, MPI_INT, failures.data(), 1, MPI_INT, MPI_COMM_WORLD);
  int any = 0;
  std::string report = "[mpi] " + std::to_string(size) + " ranks: ";
  for (int r = 0; r < size; ++r) {
    if (!failures[r]) continue;
    report += any ? ", " : "failed on rank ";
    report += std::to_string(r);
    any = 1;
  }
  if (rank == 0) std::printf("%s\n", any ? report.c_str() : (report + "all passed").c_str());
  return any;  // MPI is finalised at exit by the backend
}
