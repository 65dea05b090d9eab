// MirroredStrategy's replica threads on GPUs: each runs with its own GPU current, so its copies and
// launches come from that GPU's context. Needs 2 GPUs; skipped otherwise. multi_worker_mirrored's
// replica communicators on GPUs (a Job of this one process): host tensors through the host
// groups, device tensors through one NCCL clique over every replica. Skipped without a GPU.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "dtrain/distributed/job.h"
#include "dtrain/nn/layers.h"
#include "dtrain/strategies/mirrored.h"
#include "dtrain/tensor/cuda/cuda_backend.h"

namespace dtrain {
namespace {

TEST(GpuMirrored, EachReplicaThreadRunsWithItsOwnGpuCurrent) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  if (cuda::device_count() < 2) {
    GTEST_SKIP() << "needs 2 CUDA devices (one replica runs on the calling thread); this machine "
                    "has "
                 << cuda::device_count();
  }
  nn::Linear model(4, 2);
  MirroredStrategy strategy(model, {Device::cuda(0), Device::cuda(1)});
  std::vector<int> current(2, -1);
  for (int step = 0; step < 2; ++step) {  // the threads are new at every step
    strategy.run([&](ReplicaContext& ctx) { current[ctx.replica] = cuda::current_device(); });
    EXPECT_EQ(current, (std::vector<int>{0, 1})) << "step " << step;
  }
}

TEST(GpuMultiWorkerMirrored, ReplicaCommunicatorsReduceHostAndDeviceTensorsOverEveryReplica) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  const int n = cuda::device_count();
  std::vector<Device> devices;
  for (int d = 0; d < n; ++d) devices.push_back(Device::cuda(d));
  dist::Job job = dist::Job::from_env("nccl");
  std::vector<dist::CommunicatorPtr> comms =
      job.replica_communicators(devices, /*span_processes=*/true);
  ASSERT_EQ(static_cast<int>(comms.size()), n);
  std::vector<double> host_sums(n, -1), device_sums(n, -1);
  std::vector<int> ranks(n, -1);
  std::vector<std::string> names(n);
  job.run_replicas(n, [&](int r) {
    cuda::set_device(r);
    dist::Communicator& comm = *comms[r];
    ranks[r] = comm.rank();
    names[r] = std::string(comm.backend_name());
    Tensor on_host = full({3}, r + 1.0, DType::kFloat64);
    comm.all_reduce(on_host)->wait();
    host_sums[r] = on_host.to_vector<double>()[2];
    Tensor on_gpu = full({5}, r + 1.0, DType::kFloat32, Device::cuda(r));
    comm.all_reduce(on_gpu)->wait();
    device_sums[r] = on_gpu.to_vector<float>()[4];
  });
  const double expected = n * (n + 1) / 2.0;
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(ranks[r], r);
    EXPECT_NE(names[r].find("nccl"), std::string::npos) << names[r];
    EXPECT_EQ(host_sums[r], expected) << "replica " << r;
    EXPECT_EQ(device_sums[r], expected) << "replica " << r;
  }
}

}  // namespace
}  // namespace dtrain
