// The caching allocator shared by the CPU and CUDA allocators: power-of-two size classes whose
// freed blocks are kept for reuse, with the counters of AllocatorStats. Subclasses supply the
// system calls.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <mutex>
#include <vector>

#include "tensor/allocator.h"

namespace dtrain::detail {

class CachingAllocator : public Allocator {
 public:
  /// Blocks are at least `min_block` bytes; blocks above `max_cached` go straight back to the
  /// system on free (caching them would pin a lot of memory for rare allocations).
  CachingAllocator(size_t min_block, size_t max_cached)
      : min_block_(min_block), max_cached_(max_cached) {}

  void* allocate(size_t nbytes) override {
    const size_t block = block_size(nbytes);
    {
      std::lock_guard lock(mu_);
      ++stats_.allocs;
      stats_.bytes_in_use += block;
      stats_.peak_bytes_in_use = std::max(stats_.peak_bytes_in_use, stats_.bytes_in_use);
      auto& list = free_[std::countr_zero(block)];
      if (block <= max_cached_ && !list.empty()) {
        void* p = list.back();
        list.pop_back();
        ++stats_.cache_hits;
        stats_.bytes_cached -= block;
        return p;
      }
      ++stats_.system_allocs;
    }
    void* p = system_allocate(block);
    if (p == nullptr) {
      empty_cache();  // return cached blocks to the system, then try once more
      p = system_allocate(block);
    }
    if (p == nullptr) out_of_memory(nbytes);
    return p;
  }

  void deallocate(void* ptr, size_t nbytes) override {
    if (ptr == nullptr) return;
    const size_t block = block_size(nbytes);
    std::lock_guard lock(mu_);
    stats_.bytes_in_use -= block;
    if (block <= max_cached_) {
      free_[std::countr_zero(block)].push_back(ptr);
      stats_.bytes_cached += block;
    } else {
      ++stats_.system_frees;
      system_free(ptr);
    }
  }

  AllocatorStats stats() const override {
    std::lock_guard lock(mu_);
    return stats_;
  }

  void empty_cache() override {
    std::lock_guard lock(mu_);
    before_release();
    for (auto& list : free_) {
      stats_.system_frees += list.size();
      for (void* p : list) system_free(p);
      list.clear();
    }
    stats_.bytes_cached = 0;
  }

 protected:
  /// nullptr when the system has no memory left.
  virtual void* system_allocate(size_t nbytes) = 0;
  virtual void system_free(void* ptr) = 0;
  /// Throws the allocator's out-of-memory error.
  [[noreturn]] virtual void out_of_memory(size_t nbytes) = 0;
  /// Runs before cached blocks go back to the system (e.g. wait for the device).
  virtual void before_release() {}

 private:
  size_t block_size(size_t nbytes) const { return std::bit_ceil(std::max(nbytes, min_block_)); }

  const size_t min_block_, max_cached_;
  mutable std::mutex mu_;
  std::array<std::vector<void*>, 64> free_;
  AllocatorStats stats_;
};

}  // namespace dtrain::detail
