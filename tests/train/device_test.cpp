// train.device placement rules, checked without a GPU: which device each replica of each process
// takes, and the errors when cuda cannot be honoured.
#include "dtrain/train/device.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dtrain/train/config.h"

namespace dtrain::train {
namespace {

using ::testing::HasSubstr;

DeviceRequest request(std::string setting, int local_rank, int replicas, int gpus) {
  DeviceRequest r;
  r.setting = std::move(setting);
  r.local_rank = local_rank;
  r.replicas_per_process = replicas;
  r.gpus = gpus;
  if (gpus == 0) r.why_no_gpu = "cudaGetDeviceCount failed with error 35 (no driver)";
  return r;
}

std::string message_of(const DeviceRequest& r, int replica) {
  try {
    replica_device(r, replica);
  } catch (const ConfigError& e) {
    return e.message();
  }
  return "(no error)";
}

TEST(TrainDevice, CpuIsCpuWhateverTheMachineHas) {
  EXPECT_EQ(replica_device(request("cpu", 3, 1, 8), 0), Device::cpu());
  EXPECT_FALSE(wants_cuda(request("cpu", 0, 1, 8)));
}

TEST(TrainDevice, AutoTakesAGpuOnlyWhenOneIsPresent) {
  EXPECT_EQ(replica_device(request("auto", 0, 1, 0), 0), Device::cpu());
  EXPECT_EQ(replica_device(request("auto", 1, 1, 2), 0), Device::cuda(1));
}

TEST(TrainDevice, DdpProcessesTakeTheirLocalRanksGpu) {
  for (int local_rank = 0; local_rank < 4; ++local_rank) {
    EXPECT_EQ(replica_device(request("cuda", local_rank, 1, 4), 0), Device::cuda(local_rank));
  }
}

TEST(TrainDevice, MirroredReplicasTakeConsecutiveGpusAfterLowerLocalRanks) {
  EXPECT_EQ(replica_device(request("cuda", 0, 2, 4), 1), Device::cuda(1));
  EXPECT_EQ(replica_device(request("cuda", 1, 2, 4), 0), Device::cuda(2));
  EXPECT_EQ(replica_device(request("cuda", 1, 2, 4), 1), Device::cuda(3));
}

TEST(TrainDevice, CudaWithoutAGpuNamesTheReasonAndTheFix) {
  const std::string m = message_of(request("cuda", 0, 1, 0), 0);
  EXPECT_THAT(m, HasSubstr("train.device: cuda, but no GPU can be used here"));
  EXPECT_THAT(m, HasSubstr("error 35 (no driver)"));
  EXPECT_THAT(m, HasSubstr("train.device=cpu"));
}

TEST(TrainDevice, MoreLocalReplicasThanGpusAreRefusedNamingTheRankAndTheCount) {
  const std::string m = message_of(request("cuda", 2, 2, 4), 0);
  EXPECT_THAT(m, HasSubstr("local rank 2, replica 0 needs GPU 4"));
  EXPECT_THAT(m, HasSubstr("this machine has 4 GPU(s)"));
  EXPECT_THAT(m, HasSubstr("at most 2 process(es) per machine"));
}

}  // namespace
}  // namespace dtrain::train
