// Storage allocation through the device's allocator.
#include "dtrain/tensor/storage.h"

#include <cstdio>
#include <exception>
#include <utility>

#include "dtrain/tensor/allocator.h"

namespace dtrain {

Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  data_ = allocator_for(device).allocate(nbytes);
}

Storage::Storage(void* data, size_t nbytes, Device device, std::shared_ptr<const void> owner)
    : data_(data), nbytes_(nbytes), device_(device), owner_(std::move(owner)) {}

Storage::~Storage() {
  if (owner_) return;
  try {
    allocator_for(device_).deallocate(data_, nbytes_);
  } catch (const std::exception& e) {
    // A destructor that throws ends the process in std::terminate, far from the fault (after a
    // CUDA kernel fault every CUDA call fails); the report at the fault is the useful one.
    std::fprintf(stderr, "dtrain: leaking %zu bytes on %s that could not be freed: %s\n", nbytes_,
                 device_.str().c_str(), e.what());
  }
}

}  // namespace dtrain
