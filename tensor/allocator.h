// Memory allocators with counters: a caching CPU allocator (64-byte aligned, power-of-two size
// classes) so a steady training loop reuses blocks instead of calling malloc, and the CUDA one.
#pragma once

#include <cstddef>
#include <cstdint>

#include "dtrain/tensor/dtype.h"

namespace dtrain {

/// Counters since start-up (or the last reset_counters()). "system" counts malloc/cudaMalloc calls;
/// a steady training loop should leave system_allocs unchanged from one step to the next.
struct AllocatorStats {
  uint64_t allocs = 0;         // allocate() calls
  uint64_t cache_hits = 0;     // allocate() calls served from the cache
  uint64_t system_allocs = 0;  // calls into the system allocator
  uint64_t system_frees = 0;
  uint64_t bytes_in_use = 0;   // handed out and not yet returned (rounded to size classes)
  uint64_t bytes_cached = 0;   // held in the cache for reuse
  uint64_t bytes_pending = 0;  // freed while another stream may still use them; not yet reusable
  uint64_t peak_bytes_in_use = 0;
};

/// Thread-safe.
class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t nbytes) = 0;
  /// nbytes must be the size passed to allocate().
  virtual void deallocate(void* ptr, size_t nbytes) = 0;
  virtual AllocatorStats stats() const = 0;
  /// Returns cached blocks to the system.
  virtual void empty_cache() = 0;
};

Allocator& cpu_allocator();
/// The allocator for device; throws UnsupportedError for CUDA in a build without CUDA.
Allocator& allocator_for(Device device);

}  // namespace dtrain
