// DeviceRoutedCommunicator: host tensors through the host communicator, device tensors through the
// device one. On the CPU the device group is aborted first, so a collective routed there fails:
// the shared collective cases passing proves every host collective went through the host group.
#include <gtest/gtest.h>

#include <thread>

#include "collective_cases.h"
#include "dtrain/distributed/backends/local/local_communicator.h"
#include "dtrain/distributed/device_routed_communicator.h"
#include "dtrain/tensor/cuda/cuda_backend.h"

#if defined(DTRAIN_HAS_NCCL)
#include "dtrain/distributed/backends/nccl/nccl_communicator.h"
#endif

namespace dtrain {
namespace {

void abort_group(const dist::CommunicatorPtr& member, const std::string& reason) {
  dynamic_cast<dist::LocalCommunicator&>(*member).group_ptr()->abort(reason);
}

TEST(DeviceRouted, HostTensorsGoThroughTheHostCommunicator) {
  constexpr int kRanks = 3;
  auto host = dist::make_local_group(kRanks);
  auto device = dist::make_local_group(kRanks);
  abort_group(device[0], "a host collective was routed to the device communicator");
  std::vector<std::thread> threads;
  for (int r = 0; r < kRanks; ++r) {
    threads.emplace_back([&, r] {
      dist::DeviceRoutedCommunicator routed(host[r], device[r]);
      EXPECT_EQ(routed.backend_name(), "local+local");
      EXPECT_EQ(routed.rank(), r);
      try {
        testdist::check_everything(routed);
        testdist::check_all_reduce_now_matches_all_reduce(routed);
      } catch (const Error& e) {
        ADD_FAILURE() << "rank " << r << ": " << e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
}

TEST(DeviceRouted, BothCommunicatorsMustCoverTheSameRanks) {
  auto host = dist::make_local_group(2);
  auto device = dist::make_local_group(3);
  try {
    dist::DeviceRoutedCommunicator routed(host[1], device[1]);
    FAIL() << "a host group of 2 and a device group of 3 were accepted";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1 of 2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("rank 1 of 3"), std::string::npos) << e.what();
  }
}

#if defined(DTRAIN_HAS_NCCL)
TEST(DeviceRouted, GpuTensorsGoThroughNcclAndHostTensorsThroughTheHostGroup) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  auto host = dist::make_local_group(1);
  dist::DeviceRoutedCommunicator routed(host[0], dist::NcclCommunicator::create_local({0})[0]);
  EXPECT_EQ(routed.backend_name(), "local+nccl");
  Tensor on_gpu = from_vector<float>({1, 2, 3}, {}, Device::cuda(0));
  routed.all_reduce(on_gpu)->wait();
  EXPECT_EQ(on_gpu.to_vector<float>(), (std::vector<float>{1, 2, 3}));
  Tensor on_host = from_vector<float>({4, 5});
  routed.all_reduce(on_host)->wait();
  EXPECT_EQ(on_host.to_vector<float>(), (std::vector<float>{4, 5}));
  Tensor gathered({3}, DType::kFloat32);
  EXPECT_THROW(routed.all_gather(on_gpu, gathered), ValueError);  // one on each side
}
#else
TEST(DeviceRouted, NcclNotBuilt) {
  GTEST_SKIP() << "this build has no nccl backend, so no GPU routing to test";
}
#endif

}  // namespace
}  // namespace dtrain
