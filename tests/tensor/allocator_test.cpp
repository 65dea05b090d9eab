// The caching CPU allocator: a steady allocate/free loop is served from the cache, the byte
// counters balance, and every block is 64-byte aligned.
#include "dtrain/tensor/allocator.h"

#include <gtest/gtest.h>

#include <bit>
#include <cstdint>

#include "dtrain/tensor/cuda/cuda_backend.h"
#include "dtrain/tensor/tensor.h"

namespace dtrain {
namespace {

TEST(CpuAllocator, SteadyLoopReusesCachedBlocks) {
  Allocator& alloc = cpu_allocator();
  const Shape shapes[] = {{1000}, {3, 77}, {256, 256}};
  {
    // Warm up: one live tensor of each size at a time, as in the loop below.
    for (const Shape& s : shapes) Tensor t(s);
  }
  const AllocatorStats before = alloc.stats();
  for (int step = 0; step < 100; ++step) {
    for (const Shape& s : shapes) {
      Tensor t(s);
    }
  }
  const AllocatorStats after = alloc.stats();
  EXPECT_EQ(after.system_allocs, before.system_allocs);
  EXPECT_EQ(after.allocs - before.allocs, 300u);
  EXPECT_EQ(after.cache_hits - before.cache_hits, 300u);
  EXPECT_EQ(after.bytes_in_use, before.bytes_in_use);
  EXPECT_EQ(after.bytes_cached, before.bytes_cached);
}

TEST(CpuAllocator, BytesInUseCountsPowerOfTwoSizeClasses) {
  Allocator& alloc = cpu_allocator();
  const AllocatorStats start = alloc.stats();
  {
    Tensor a({100});               // 400 bytes -> 512
    Tensor b({3}, DType::kUInt8);  // 3 bytes -> the 64-byte minimum
    const AllocatorStats live = alloc.stats();
    EXPECT_EQ(live.bytes_in_use - start.bytes_in_use, 512u + 64u);
    EXPECT_GE(live.peak_bytes_in_use, live.bytes_in_use);
  }
  EXPECT_EQ(alloc.stats().bytes_in_use, start.bytes_in_use);
}

TEST(CpuAllocator, DataIsSixtyFourByteAligned) {
  std::vector<Tensor> live;  // keep them alive so each gets a distinct block
  for (int64_t n : {1, 3, 17, 64, 1000, 4097, 1 << 20}) {
    for (DType dtype : {DType::kFloat32, DType::kFloat64, DType::kUInt8, DType::kFloat16}) {
      live.emplace_back(Shape{n}, dtype);
      EXPECT_EQ(reinterpret_cast<uintptr_t>(live.back().data_ptr()) % 64, 0u)
          << n << " " << dtype_name(dtype);
    }
  }
  Allocator& alloc = cpu_allocator();
  void* p = alloc.allocate(12345);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
  alloc.deallocate(p, 12345);
}

TEST(CpuAllocator, FreedBlockIsHandedOutAgain) {
  Allocator& alloc = cpu_allocator();
  void* p = alloc.allocate(3000);
  alloc.deallocate(p, 3000);
  // Same size class (4096): served from the cache, not the system.
  const AllocatorStats before = alloc.stats();
  void* q = alloc.allocate(2500);
  const AllocatorStats after = alloc.stats();
  EXPECT_EQ(after.cache_hits, before.cache_hits + 1);
  EXPECT_EQ(after.system_allocs, before.system_allocs);
  EXPECT_EQ(after.bytes_cached, before.bytes_cached - 4096);
  alloc.deallocate(q, 2500);
}

TEST(CpuAllocator, EmptyCacheReturnsBlocksToTheSystem) {
  Allocator& alloc = cpu_allocator();
  { Tensor t({5000}); }  // leaves at least one cached block
  const AllocatorStats before = alloc.stats();
  ASSERT_GT(before.bytes_cached, 0u);
  alloc.empty_cache();
  const AllocatorStats after = alloc.stats();
  EXPECT_EQ(after.bytes_cached, 0u);
  EXPECT_GT(after.system_frees, before.system_frees);
  EXPECT_EQ(after.bytes_in_use, before.bytes_in_use);
  // The next allocation of that size has to go to the system.
  { Tensor t({5000}); }
  EXPECT_EQ(alloc.stats().system_allocs, after.system_allocs + 1);
}

TEST(CpuAllocator, ViewsDoNotAllocate) {
  Tensor t({64, 64});
  const AllocatorStats before = cpu_allocator().stats();
  Tensor v = t.view({4096});
  Tensor d = t.detach();
  Tensor copy = t;
  EXPECT_EQ(cpu_allocator().stats().allocs, before.allocs);
  EXPECT_TRUE(v.shares_storage(t) && d.shares_storage(t) && copy.shares_storage(t));
}

TEST(AllocatorFor, CpuIsTheCachingAllocatorAndCudaNeedsCuda) {
  EXPECT_EQ(&allocator_for(Device::cpu()), &cpu_allocator());
  if (!cuda::available()) {
    EXPECT_THROW(allocator_for(Device::cuda(0)), UnsupportedError);
  }
}

}  // namespace
}  // namespace dtrain
