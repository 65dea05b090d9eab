// The caching allocator shared by the CPU and CUDA allocators: power-of-two size classes whose
// freed blocks are kept for reuse, with the counters of AllocatorStats. Subclasses supply the
// system calls.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "dtrain/tensor/allocator.h"

namespace dtrain::detail {

class CachingAllocator : public Allocator {
 public:
  /// Work still queued somewhere that uses a freed block (CUDA events on another stream).
  struct PendingUse {
    virtual ~PendingUse() = default;
    /// True once the block is free to reuse; must not throw.
    virtual bool done() = 0;
  };

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
      const int size_class = std::countr_zero(block);
      reclaim_finished(size_class);
      auto& list = free_[size_class];
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

  /// Like deallocate, for a block that work queued elsewhere may still use: it joins the cache only
  /// once use->done(), checked when its size class is next allocated and in empty_cache().
  void deallocate_after(void* ptr, size_t nbytes, std::unique_ptr<PendingUse> use) {
    if (ptr == nullptr) return;
    const size_t block = block_size(nbytes);
    std::lock_guard lock(mu_);
    stats_.bytes_in_use -= block;
    stats_.bytes_pending += block;
    pending_[std::countr_zero(block)].emplace_back(ptr, std::move(use));
  }

  AllocatorStats stats() const override {
    std::lock_guard lock(mu_);
    return stats_;
  }

  void empty_cache() override {
    std::lock_guard lock(mu_);
    before_release();
    for (size_t c = 0; c < pending_.size(); ++c) reclaim_finished(static_cast<int>(c));
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

  /// Moves the pending blocks of one size class whose use has finished into the cache. Holds mu_.
  void reclaim_finished(int size_class) {
    auto& list = pending_[size_class];
    const size_t block = size_t{1} << size_class;
    for (size_t i = 0; i < list.size();) {
      if (!list[i].second->done()) {
        ++i;
        continue;
      }
      stats_.bytes_pending -= block;
      if (block <= max_cached_) {
        free_[size_class].push_back(list[i].first);
        stats_.bytes_cached += block;
      } else {
        ++stats_.system_frees;
        system_free(list[i].first);
      }
      list[i] = std::move(list.back());
      list.pop_back();
    }
  }

  const size_t min_block_, max_cached_;
  mutable std::mutex mu_;
  std::array<std::vector<void*>, 64> free_;
  std::array<std::vector<std::pair<void*, std::unique_ptr<PendingUse>>>, 64> pending_;
  AllocatorStats stats_;
};

}  // namespace dtrain::detail
