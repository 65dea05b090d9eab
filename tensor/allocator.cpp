// The caching CPU allocator.
#include "dtrain/tensor/allocator.h"

#include <cstdlib>

#include "dtrain/tensor/caching_allocator.h"
#include "dtrain/tensor/check.h"
#include "dtrain/tensor/cuda/cuda_backend.h"

namespace dtrain {
namespace {

constexpr size_t kAlignment = 64;
constexpr size_t kMinBlock = 64;
constexpr size_t kMaxCachedBlock = size_t{1} << 30;

class CachingCpuAllocator final : public detail::CachingAllocator {
 public:
  CachingCpuAllocator() : CachingAllocator(kMinBlock, kMaxCachedBlock) {}
  ~CachingCpuAllocator() override { empty_cache(); }

 protected:
  void* system_allocate(size_t nbytes) override { return std::aligned_alloc(kAlignment, nbytes); }
  void system_free(void* ptr) override { std::free(ptr); }
  [[noreturn]] void out_of_memory(size_t nbytes) override {
    DTRAIN_THROW(ValueError, "out of CPU memory allocating ", nbytes, " bytes");
  }
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
