// The nccl backend on the GPUs of this machine, against the values the local backend computes.
// Skipped, with the reason, where the build has no NCCL or the machine no GPU.
#include <gtest/gtest.h>

#include <chrono>
#include <vector>

#include "dtrain/tensor/cuda/cuda_backend.h"
#include "dtrain/tensor/tensor.h"

#if defined(DTRAIN_HAS_NCCL)
#include "dtrain/distributed/backends/local/local_communicator.h"
#include "dtrain/distributed/backends/nccl/nccl_communicator.h"
#endif

namespace dtrain {
namespace {

#if defined(DTRAIN_HAS_NCCL)
TEST(Nccl, GroupAllReduceOverEveryLocalGpuMatchesTheHostSum) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  const int n = cuda::device_count();
  std::vector<int> devices(n);
  for (int d = 0; d < n; ++d) devices[d] = d;
  auto comms = dist::NcclCommunicator::create_local(devices);
  std::vector<Tensor> tensors;
  for (int d = 0; d < n; ++d)
    tensors.push_back(full({1000}, d + 1.0, DType::kFloat32, Device::cuda(d)));
  for (auto& w : dist::NcclCommunicator::group_all_reduce(comms, tensors)) w->wait();
  const float expected = n * (n + 1) / 2.0f;
  for (int d = 0; d < n; ++d) {
    const auto v = tensors[d].to_vector<float>();
    EXPECT_EQ(v.front(), expected) << "cuda:" << d;
    EXPECT_EQ(v.back(), expected) << "cuda:" << d;
  }
}

TEST(Nccl, SingleGpuCollectivesKeepValuesAndCountSequences) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  auto comms = dist::NcclCommunicator::create_local({0});
  Tensor t = from_vector<float>({1, 2, 3}, {}, Device::cuda(0));
  dist::WorkPtr a = comms[0]->all_reduce(t);
  dist::WorkPtr b = comms[0]->broadcast(t);
  b->wait();
  // The host read waits for the default stream, which wait() ordered after b (and so after a).
  EXPECT_EQ(t.to_vector<float>(), (std::vector<float>{1, 2, 3}));
  EXPECT_TRUE(a->is_completed());
  EXPECT_EQ(a->info().sequence + 1, b->info().sequence);
  Tensor host = zeros({3});
  EXPECT_THROW(comms[0]->all_reduce(host), ValueError);  // host tensors belong to mpi/local
}
TEST(Nccl, CreatedThroughAHostCommunicatorWithoutAStore) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  auto host = dist::make_local_group(1);
  auto nccl = dist::NcclCommunicator::create(*host[0], 0);
  EXPECT_EQ(nccl->device(), 0);
  Tensor t = from_vector<float>({1, 2}, {}, Device::cuda(0));
  nccl->all_reduce(t, {dist::ReduceOp::kMax})->wait();
  EXPECT_EQ(t.to_vector<float>(), (std::vector<float>{1, 2}));
}

TEST(Nccl, WaitOrdersTheDefaultStreamAfterTheCollectiveWithoutBlockingTheHost) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  auto comm = dist::NcclCommunicator::create_local({0})[0];
  Tensor warm = ones({4}, DType::kFloat32, Device::cuda(0));
  comm->all_reduce(warm)->wait();
  warm.to_vector<float>();  // NCCL's connections are set up before the default stream is held
  // all_gather on one rank is a copy from `in` to `out`: `seen` copies `out` behind wait(), so it
  // holds `in`'s values only if the default stream waited for the collective.
  Tensor in = full({4096}, 7.0, DType::kFloat32, Device::cuda(0));
  Tensor out = zeros({4096}, DType::kFloat32, Device::cuda(0));
  Tensor seen = zeros({4096}, DType::kFloat32, Device::cuda(0));
  dist::WorkPtr work;
  {
    cuda::DefaultStreamHold hold(0);  // NCCL's stream waits for the default one: pending
    work = comm->all_gather(in, out);
    work->wait(std::chrono::seconds(60));
    EXPECT_FALSE(work->is_completed())
        << "wait() returned only once the collective had run: it blocked the host";
    seen.copy_(out);  // device to device on the default stream; no host wait
  }
  const std::vector<float> expected(4096, 7.0f);
  EXPECT_EQ(seen.to_vector<float>(), expected) << "a copy queued after wait() ran before NCCL";
  EXPECT_EQ(out.to_vector<float>(), expected);
  EXPECT_TRUE(work->is_completed());
}

TEST(Nccl, WaitingTwiceAndWaitingOnACompletedCollectiveAreHarmless) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  auto comm = dist::NcclCommunicator::create_local({0})[0];
  Tensor t = full({8}, 3.0, DType::kFloat32, Device::cuda(0));
  dist::WorkPtr work = comm->all_reduce(t, {dist::ReduceOp::kMax});
  work->wait();
  work->wait();
  cuda::synchronize(0);
  ASSERT_TRUE(work->is_completed());
  work->wait(std::chrono::milliseconds(0));  // already done: no deadline to miss
  Tensor next = full({2}, 5.0, DType::kFloat32, Device::cuda(0));
  comm->all_reduce(next)->wait();  // a zero timeout on a done collective aborted nothing
  EXPECT_EQ(next.to_vector<float>(), (std::vector<float>{5, 5}));
  EXPECT_EQ(t.to_vector<float>(), std::vector<float>(8, 3.0f));
}
#else
TEST(Nccl, NotBuilt) {
  GTEST_SKIP()
      << "this build has no nccl backend (configure with CUDA and NCCL under the CUDA root)";
}
#endif

}  // namespace
}  // namespace dtrain
