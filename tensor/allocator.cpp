// The caching CPU allocator.
#include "tensor/allocator.h"

#include <array>
#include <bit>
#include <cstdlib>
#include <mutex>
#include <new>
#include <vector>

#include "tensor/check.h"
#include "tensor/cuda/cuda_backend.h"

namespace dtrain {
namespace {

constexpr size_t kAlignment = 64;
constexpr size_t kMinBlock = 64;
// Blocks above this size go straight back to the system: caching them would pin a lot of memory
// for allocations that are rare anyway.
constexpr size_t kMaxCachedBlock = size_t{1} << 30;

class CachingCpuAllocator final : public Allocator {
 public:
  ~CachingCpuAllocator() override { empty_cache(); }

  void* allocate(size_t nbytes) override {
    const size_t block = block_size(nbytes);
    const int cls = std::countr_zero(block);
    {
      std::lock_guard lock(mu_);
      ++stats_.allocs;
      stats_.bytes_in_use += block;
      stats_.peak_bytes_in_use = std::max(stats_.peak_bytes_in_use, stats_.bytes_in_use);
      if (block <= kMaxCachedBlock && !free_[cls].empty()) {
        void* p = free_[cls].back();
        free_[cls].pop_back();
        ++stats_.cache_hits;
        stats_.bytes_cached -= block;
        return p;
      }
      ++stats_.system_allocs;
    }
    void* p = std::aligned_alloc(kAlignment, block);
    if (p == nullptr) {
      empty_cache();
      p = std::aligned_alloc(kAlignment, block);
    }
    if (p == nullptr) {
      DTRAIN_THROW(ValueError, "out of CPU memory allocating ", nbytes, " bytes");
    }
    return p;
  }

  void deallocate(void* ptr, size_t nbytes) override {
    if (ptr == nullptr) return;
    const size_t block = block_size(nbytes);
    std::lock_guard lock(mu_);
    stats_.bytes_in_use -= block;
    if (block <= kMaxCachedBlock) {
      free_[std::countr_zero(block)].push_back(ptr);
      stats_.bytes_cached += block;
    } else {
      ++stats_.system_frees;
      std::free(ptr);
    }
  }

  AllocatorStats stats() const override {
    std::lock_guard lock(mu_);
    return stats_;
  }

  void empty_cache() override {
    std::lock_guard lock(mu_);
    for (auto& list : free_) {
      stats_.system_frees += list.size();
      for (void* p : list) std::free(p);
      list.clear();
    }
    stats_.bytes_cached = 0;
  }

 private:
  static size_t block_size(size_t nbytes) { return std::bit_ceil(std::max(nbytes, kMinBlock)); }

  mutable std::mutex mu_;
  std::array<std::vector<void*>, 64> free_;
  AllocatorStats stats_;
};

}  // namespace

Allocator& cpu_allocator() {
  // Leaked on purpose: tensors in static objects may be freed after a function-local static dies.
  static auto* allocator = new CachingCpuAllocator();
  return *allocator;
}

Allocator& allocator_for(Device device) {
  if (device.is_cpu()) return cpu_allocator();
  return cuda::allocator(device.index);
}

}  // namespace dtrain
