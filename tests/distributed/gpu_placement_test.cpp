// Which GPU a process of a one-process-per-GPU job takes, and the refusal of more local ranks than
// GPUs (pure rules, run everywhere); a GPU job's world makes that GPU current (skipped without
// NCCL or a GPU).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dtrain/distributed/job.h"
#include "dtrain/distributed/registry.h"
#include "dtrain/tensor/cuda/cuda_backend.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;

dist::WorldInfo world(int rank, int size, int local_rank, int local_size) {
  dist::WorldInfo w;
  w.rank = rank;
  w.size = size;
  w.local_rank = local_rank;
  w.local_size = local_size;
  w.source = "dtrain";
  return w;
}

TEST(LocalRankDevice, EachLocalRankTakesTheDeviceOfItsNumber) {
  EXPECT_EQ(dist::device_for_local_rank(world(0, 4, 0, 2), 2), Device::cuda(0));
  EXPECT_EQ(dist::device_for_local_rank(world(3, 4, 1, 2), 2), Device::cuda(1));
  EXPECT_EQ(dist::device_for_local_rank(world(1, 2, 1, 2), 8), Device::cuda(1));
}

TEST(LocalRankDevice, MoreLocalRanksThanDevicesAreRefusedOnEveryRankNamingTheRanksWithout) {
  for (int local = 0; local < 4; ++local) {
    try {
      dist::device_for_local_rank(world(4 + local, 8, local, 4), 2);
      ADD_FAILURE() << "local rank " << local << " of 4 on 2 GPUs was given a GPU";
    } catch (const ValueError& e) {
      EXPECT_THAT(e.message(), HasSubstr("runs 4 local ranks but has 2 GPUs"));
      EXPECT_THAT(e.message(), HasSubstr("local ranks 2, 3 would share a GPU"));
      EXPECT_THAT(e.message(), HasSubstr("--nproc-per-node 2"));
      EXPECT_THAT(e.message(), HasSubstr("rank " + std::to_string(4 + local) + " of 8"));
    }
  }
  try {
    dist::device_for_local_rank(world(0, 40, 0, 40), 4);
    ADD_FAILURE() << "40 local ranks on 4 GPUs were accepted";
  } catch (const ValueError& e) {
    EXPECT_THAT(e.message(), HasSubstr("local ranks 4, 5, 6, 7, 8, 9, 10, 11, ... 39"));
  }
}

TEST(LocalRankDevice, NoDeviceIsUnsupportedWithTheReason) {
  EXPECT_THROW(dist::device_for_local_rank(world(0, 1, 0, 1), 0), UnsupportedError);
}

TEST(GpuJob, TheWorldOfANcclJobMakesItsGpuCurrent) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  if (!dist::backend_unavailable_reason("nccl").empty()) {
    GTEST_SKIP() << dist::backend_unavailable_reason("nccl");
  }
  dist::JobSpec spec;
  spec.backend = "nccl";
  dist::Job job(spec);
  EXPECT_EQ(job.device(), Device::cuda(0));
  dist::CommunicatorPtr world = job.world();
  EXPECT_EQ(cuda::current_device(), 0);
  Tensor t = full({5}, 2.0, DType::kFloat32, Device::cuda(0));
  world->all_reduce(t)->wait();
  EXPECT_EQ(t.to_vector<float>(), (std::vector<float>(5, 2.f)));
}

}  // namespace
}  // namespace dtrain
