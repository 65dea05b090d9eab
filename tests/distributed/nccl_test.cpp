// The nccl backend on the GPUs of this machine, against the values the local backend computes.
// Skipped, with the reason, where the build has no NCCL or the machine no GPU.
#include <gtest/gtest.h>

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
  EXPECT_TRUE(a->is_completed());
  EXPECT_EQ(a->info().sequence + 1, b->info().sequence);
  EXPECT_EQ(t.to_vector<float>(), (std::vector<float>{1, 2, 3}));
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
#else
TEST(Nccl, NotBuilt) {
  GTEST_SKIP()
      << "this build has no nccl backend (configure with CUDA and NCCL under the CUDA root)";
}
#endif

}  // namespace
}  // namespace dtrain
