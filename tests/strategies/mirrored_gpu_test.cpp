// MirroredStrategy's replica threads on GPUs: each runs with its own GPU current, so its copies and
// launches come from that GPU's context. Needs 2 GPUs; skipped otherwise.
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace dtrain
