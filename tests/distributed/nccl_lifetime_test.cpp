// The nccl backend's lifetimes and failure paths on one GPU: a Work keeps its tensors, a freed
// block NCCL's stream may still use is not handed out again, a waited collective past its deadline
// is reported and the aborted communicator refuses every later use, a failed check leaves no NCCL
// group open, and a clique whose peer never comes times out. Each case keeps the default stream
// busy in a known way (cuda::DefaultStreamHold) so NCCL's work is still pending when the case
// looks. Skipped without NCCL or a GPU.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "dtrain/tensor/allocator.h"
#include "dtrain/tensor/cuda/cuda_backend.h"
#include "dtrain/tensor/tensor.h"

#if defined(DTRAIN_HAS_NCCL)
#include "dtrain/distributed/backends/nccl/nccl_communicator.h"
#include "dtrain/distributed/store.h"
#endif

namespace dtrain {
namespace {

#if defined(DTRAIN_HAS_NCCL)
using ::testing::HasSubstr;

class NcclOneGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
    comm_ = dist::NcclCommunicator::create_local({0})[0];
    // One collective first: NCCL sets up its connections at the first one, and nothing of that
    // may queue behind a held default stream.
    Tensor warm = ones({4}, DType::kFloat32, Device::cuda(0));
    comm_->all_reduce(warm)->wait();
  }
  std::shared_ptr<dist::NcclCommunicator> comm_;
};

using NcclLifetime = NcclOneGpu;

TEST_F(NcclLifetime, AWorkKeepsItsTensorsUntilItIsDestroyed) {
  std::weak_ptr<Storage> storage;
  dist::WorkPtr work;
  {
    cuda::DefaultStreamHold hold(0);
    Tensor t = ones({256}, DType::kFloat32, Device::cuda(0));
    storage = t.storage();
    work = comm_->all_reduce(t);
    t = Tensor();
    EXPECT_FALSE(storage.expired()) << "the all-reduce's tensor was freed before it ran";
  }
  work->wait();
  work.reset();
  EXPECT_TRUE(storage.expired());
}

TEST_F(NcclLifetime, ABarriersBlockIsNotHandedOutWhileNcclsStreamMayStillUseIt) {
  Allocator& alloc = allocator_for(Device::cuda(0));
  alloc.empty_cache();  // a known cache: every 512-byte block below comes from the barrier or new
  {
    cuda::DefaultStreamHold hold(0);
    dist::WorkPtr barrier = comm_->barrier();  // its all-reduce waits behind the hold
    const AllocatorStats before = alloc.stats();
    barrier.reset();                                      // drops the barrier's tensor
    Tensor fresh({1}, DType::kFloat32, Device::cuda(0));  // same size class; launches nothing
    EXPECT_EQ(alloc.stats().cache_hits, before.cache_hits)
        << "the barrier's block was handed out while NCCL's stream may still use it";
    EXPECT_GT(alloc.stats().bytes_pending, 0u);
  }
  cuda::synchronize(0);
  const AllocatorStats done = alloc.stats();
  Tensor later({1}, DType::kFloat32, Device::cuda(0));
  EXPECT_EQ(alloc.stats().cache_hits, done.cache_hits + 1) << "the block never came back";
  EXPECT_EQ(alloc.stats().bytes_pending, 0u);
}

/// In a child process (an aborted NCCL communicator may leave the GPU in any state): wait() with
/// a zero timeout on a pending all-reduce returns at once (the default stream waits, not the
/// host). The next call on the communicator, a second Work's wait(), finds that all-reduce past
/// its deadline and throws TimeoutError naming it; a new collective and a barrier must then each
/// throw DistError "communicator aborted". Exits 3 when all did.
void use_after_abort() {
  auto comm = dist::NcclCommunicator::create_local({0})[0];
  Tensor warm = ones({4}, DType::kFloat32, Device::cuda(0));
  comm->all_reduce(warm)->wait();
  warm.to_vector<float>();
  int as_expected = 0;
  {
    cuda::DefaultStreamHold hold(0);
    Tensor a = ones({8}, DType::kFloat32, Device::cuda(0));
    Tensor b = ones({8}, DType::kFloat32, Device::cuda(0));
    dist::WorkPtr first = comm->all_reduce(a);
    dist::WorkPtr second = comm->all_reduce(b);
    try {
      first->wait(std::chrono::milliseconds(0));
      std::fprintf(stderr, "first wait: returned\n");
      ++as_expected;
    } catch (const Error& e) {
      std::fprintf(stderr, "first wait: %s\n", e.what());
    }
    try {
      second->wait(std::chrono::milliseconds(1000));
      std::fprintf(stderr, "second wait: no error\n");
    } catch (const TimeoutError& e) {
      std::fprintf(stderr, "second wait: %s\n", e.what());
      const std::string first_seq = "#" + std::to_string(first->info().sequence) + " ";
      if (std::string(e.what()).find(first_seq) != std::string::npos) ++as_expected;
    } catch (const Error& e) {
      std::fprintf(stderr, "second wait: not a timeout: %s\n", e.what());
    }
    const auto expect_refused = [&](const char* what, auto&& fn) {
      try {
        fn();
        std::fprintf(stderr, "%s: no error\n", what);
      } catch (const DistError& e) {
        std::fprintf(stderr, "%s: %s\n", what, e.what());
        if (std::string(e.what()).find("communicator aborted") != std::string::npos) ++as_expected;
      }
    };
    expect_refused("new all_reduce", [&] { comm->all_reduce(a); });
    expect_refused("barrier", [&] { comm->barrier(); });
  }
  std::fflush(stderr);
  std::_Exit(as_expected == 4 ? 3 : 4);
}

TEST(NcclFailure, AnAbortedCommunicatorRefusesEveryLaterUse) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // a fresh process, not a fork of a CUDA one
  EXPECT_EXIT(use_after_abort(), ::testing::ExitedWithCode(3), "communicator aborted");
}

/// In a child process: rank 0 of a two-GPU clique all-reduces alone, so its collective never
/// completes. wait() returns at once; a host read of the result blocks behind it on the default
/// stream until the watch, at the deadline, aborts the communicator, which releases the stream;
/// the next call then throws TimeoutError. Exits 3 when the read returned and the call threw.
void lone_rank_is_released_by_the_watch() {
  auto comms = dist::NcclCommunicator::create_local({0, 1});
  Tensor t = ones({16}, DType::kFloat32, Device::cuda(0));
  dist::WorkPtr work = comms[0]->all_reduce(t);
  work->wait(std::chrono::milliseconds(500));
  std::fprintf(stderr, "wait returned; completed: %d\n", work->is_completed() ? 1 : 0);
  t.to_vector<float>();  // blocks until the abort lets the default stream go on
  std::fprintf(stderr, "host read returned\n");
  int code = 4;
  try {
    comms[0]->all_reduce(t);
    std::fprintf(stderr, "next all_reduce: no error\n");
  } catch (const TimeoutError& e) {
    std::fprintf(stderr, "next all_reduce: %s\n", e.what());
    code = 3;
  }
  std::fflush(stderr);
  std::_Exit(code);
}

TEST(NcclFailure, AWaitedCollectivePastItsDeadlineReleasesAHostReadBehindIt) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  if (cuda::device_count() < 2) GTEST_SKIP() << "needs two GPUs; this machine has one";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(lone_rank_is_released_by_the_watch(), ::testing::ExitedWithCode(3),
              "did not complete within 500 ms");
}

using NcclGroup = NcclOneGpu;

TEST_F(NcclGroup, ARefusedTensorLeavesNoGroupOpenForTheNextCollective) {
  std::vector<Tensor> mixed{ones({4}, DType::kFloat32, Device::cuda(0)),
                            zeros({4}, DType::kBool, Device::cuda(0))};
  EXPECT_THROW(comm_->all_reduce_coalesced(mixed), UnsupportedError);
  // In a group left open this all-gather would be queued and never launched, its event done at
  // once and `out` still zeros.
  Tensor in = ones({3}, DType::kFloat32, Device::cuda(0));
  Tensor out = zeros({3}, DType::kFloat32, Device::cuda(0));
  comm_->all_gather(in, out)->wait(std::chrono::seconds(60));
  EXPECT_EQ(out.to_vector<float>(), (std::vector<float>{1, 1, 1}));
}

TEST(NcclInit, APeerThatNeverJoinsEndsInATimeoutNamingTheRank) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  dist::StoreServerOptions so;
  so.bind_address = "127.0.0.1";
  so.port = 0;
  so.token = "nccl-init-test-5e0b";
  dist::StoreServer server(so);
  dist::StoreClientOptions co;
  co.port = server.port();
  co.token = so.token;
  dist::StoreClient store(co);
  const auto start = std::chrono::steady_clock::now();
  try {
    // Rank 0 of 2; rank 1 never comes.
    dist::NcclCommunicator::create(0, 2, 0, store, "nccl_init_test/id", std::chrono::seconds(3));
    FAIL() << "joining a clique of 2 alone succeeded";
  } catch (const TimeoutError& e) {
    EXPECT_THAT(e.message(), HasSubstr("rank 0 of 2 on cuda:0"));
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(60));
}
#else
TEST(NcclLifetime, NotBuilt) {
  GTEST_SKIP() << "this build has no nccl backend (configure with CUDA and NCCL under the CUDA "
                  "root)";
}
#endif

}  // namespace
}  // namespace dtrain
