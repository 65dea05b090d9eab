// Host access to device memory, the caching allocator's blocks that another stream still uses,
// the DTRAIN_CUDA_SYNC switch, and the current device of threads. The GPU cases skip without a
// CUDA device; the rest run everywhere.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "dtrain/tensor/caching_allocator.h"
#include "dtrain/tensor/cuda/cuda_backend.h"
#include "dtrain/tensor/kernels_nn.h"
#include "dtrain/tensor/ops.h"
#include "dtrain/tensor/run.h"
#include "dtrain/tensor/tensor.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;

/// A tensor that claims to live on cuda:0 but views host memory (never dereferenced as device
/// memory): it lets the host-side checks run on a machine without a GPU.
Tensor fake_cuda_tensor(std::vector<float>& host) {
  auto owner = std::make_shared<int>(0);
  auto storage =
      std::make_shared<Storage>(host.data(), host.size() * sizeof(float), Device::cuda(0), owner);
  return Tensor(storage, 0, {static_cast<int64_t>(host.size())}, DType::kFloat32);
}

TEST(DeviceMemoryAccess, TypedHostPointerIsRefusedNamingTheDeviceAndTheWayOut) {
  std::vector<float> host(4, 1.f);
  Tensor t = fake_cuda_tensor(host);
  try {
    (void)t.data<float>();
    FAIL() << "data<float>() on " << t.describe() << " returned a pointer";
  } catch (const ValueError& e) {
    EXPECT_THAT(e.message(), HasSubstr("cuda:0"));
    EXPECT_THAT(e.message(), HasSubstr("to_device(t, Device::cpu())"));
    EXPECT_THAT(e.message(), HasSubstr("data_ptr()"));
  }
  // The raw and typed device pointers stay available for kernels; the dtype is still checked.
  EXPECT_EQ(t.data_ptr<float>(), host.data());
  EXPECT_THROW((void)t.data_ptr<double>(), ValueError);
  EXPECT_THROW((void)t.data<double>(), ValueError);
}

TEST(CudaHostAccess, RealDeviceTensorsAreRefusedAndCopiesToTheHostAreNot) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  Tensor t = full({3}, 2.0, DType::kFloat32, Device::cuda(0));
  EXPECT_THROW((void)t.data<float>(), ValueError);
  EXPECT_NE(t.data_ptr<float>(), nullptr);
  Tensor host = to_device(t, Device::cpu());
  EXPECT_EQ(host.data<float>()[2], 2.f);
}

// ---- blocks still in use elsewhere ----------------------------------------------------------

/// A caching allocator over malloc whose pending uses the test finishes by hand.
class MallocCache final : public detail::CachingAllocator {
 public:
  MallocCache() : CachingAllocator(64, size_t{1} << 20) {}
  ~MallocCache() override { empty_cache(); }

 protected:
  void* system_allocate(size_t nbytes) override { return std::malloc(nbytes); }
  void system_free(void* p) override { std::free(p); }
  [[noreturn]] void out_of_memory(size_t) override { std::abort(); }
};

struct FlagUse final : detail::CachingAllocator::PendingUse {
  explicit FlagUse(const bool* finished) : finished(finished) {}
  bool done() override { return *finished; }
  const bool* finished;
};

TEST(CachingAllocatorStreams, ABlockStillUsedElsewhereIsHandedOutOnlyAfterThatUseFinished) {
  MallocCache cache;
  bool finished = false;
  void* block = cache.allocate(100);
  cache.deallocate_after(block, 100, std::make_unique<FlagUse>(&finished));
  AllocatorStats s = cache.stats();
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.bytes_pending, 128u);
  EXPECT_EQ(s.bytes_cached, 0u);

  void* other = cache.allocate(100);  // same size class, while the use is still queued
  EXPECT_NE(other, block);
  EXPECT_EQ(cache.stats().system_allocs, 2u);
  cache.empty_cache();  // a pending block is not the cache's to give back yet
  EXPECT_EQ(cache.stats().bytes_pending, 128u);

  finished = true;
  void* again = cache.allocate(120);
  EXPECT_EQ(again, block);
  s = cache.stats();
  EXPECT_EQ(s.cache_hits, 1u);
  EXPECT_EQ(s.bytes_pending, 0u);
  EXPECT_EQ(s.bytes_in_use, 256u);
  cache.deallocate(again, 120);
  cache.deallocate(other, 100);
}

// ---- DTRAIN_CUDA_SYNC -----------------------------------------------------------------------

TEST(DebugSyncSwitch, OffUnlessOneAndAnythingElseIsAnErrorNamingTheVariable) {
  EXPECT_FALSE(cuda::parse_cuda_sync(nullptr));
  EXPECT_FALSE(cuda::parse_cuda_sync(""));
  EXPECT_FALSE(cuda::parse_cuda_sync("0"));
  EXPECT_TRUE(cuda::parse_cuda_sync("1"));
  for (const char* bad : {"yes", "2", " 1", "true"}) {
    try {
      cuda::parse_cuda_sync(bad);
      ADD_FAILURE() << "DTRAIN_CUDA_SYNC='" << bad << "' was accepted";
    } catch (const ValueError& e) {
      EXPECT_THAT(e.message(), HasSubstr(std::string("DTRAIN_CUDA_SYNC='") + bad + "'"));
    }
  }
}

/// In a child process (a device fault poisons its CUDA context): with DTRAIN_CUDA_SYNC=1 a kernel
/// that writes through a bad pointer is reported at its own launch, by name, and a device tensor
/// freed after the fault is not a std::terminate. Exits 3 when both held.
void fault_under_sync_switch() {
  setenv("DTRAIN_CUDA_SYNC", "1", 1);
  Tensor survivor = zeros({16}, DType::kFloat32, Device::cuda(0));
  std::string message;
  try {
    cuda::launch(
        64,
        kernels::UniformFill<float>{reinterpret_cast<float*>(uintptr_t{64}), 1, 0, 0, 0.0f, 1.0f},
        0);
  } catch (const ValueError& e) {
    message = e.what();
  }
  survivor = Tensor();  // ~Storage on a faulted device
  std::fprintf(stderr, "reported: %s\n", message.c_str());
  std::fflush(stderr);
  const bool named = message.find("UniformFill") != std::string::npos &&
                     message.find("DTRAIN_CUDA_SYNC") != std::string::npos;
  std::_Exit(named ? 3 : 4);
}

TEST(CudaSync, AFaultIsReportedAtItsKernelAndLaterFreesDoNotTerminate) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // a fresh process, not a fork of a CUDA one
  EXPECT_EXIT(fault_under_sync_switch(), ::testing::ExitedWithCode(3), "UniformFill");
}

// ---- current device per thread --------------------------------------------------------------

TEST(CudaDevice, AThreadKeepsTheFirstDeviceItUsedAndAChosenDeviceIsPutBack) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  if (cuda::device_count() < 2) {
    GTEST_SKIP() << "needs 2 CUDA devices (a guard on one GPU never changes the device); this "
                    "machine has "
                 << cuda::device_count();
  }
  int fresh = -1, chosen = -1;
  std::thread([&] {
    Tensor t = full({4}, 1.0, DType::kFloat32, Device::cuda(1));
    fresh = cuda::current_device();  // no context on GPU 0 was made for this thread
  }).join();
  std::thread([&] {
    cuda::set_device(0);
    Tensor t = full({4}, 1.0, DType::kFloat32, Device::cuda(1));
    chosen = cuda::current_device();
  }).join();
  EXPECT_EQ(fresh, 1);
  EXPECT_EQ(chosen, 0);
}

TEST(CudaDevice, CopiesOfAnotherDevicesTensorsAreRightFromAnyThread) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  if (cuda::device_count() < 2) {
    GTEST_SKIP() << "needs 2 CUDA devices; this machine has " << cuda::device_count();
  }
  std::vector<float> got, sliced;
  std::thread([&] {
    cuda::set_device(0);
    Tensor x = from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3}, Device::cuda(1));
    got = to_device(x, Device::cpu()).to_vector<float>();
    sliced = ops::slice(x, 1, 1, 3).to_vector<float>();  // a strided copy (copy_2d) on cuda:1
  }).join();
  EXPECT_EQ(got, (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(sliced, (std::vector<float>{2, 3, 5, 6}));
}

}  // namespace
}  // namespace dtrain
