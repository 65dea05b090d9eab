// Storage allocation through the device's allocator.
#include "tensor/storage.h"

#include <utility>

#include "tensor/allocator.h"

namespace dtrain {

Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  data_ = allocator_for(device).allocate(nbytes);
}

Storage::Storage(void* data, size_t nbytes, Device device, std::shared_ptr<const void> owner)
    : data_(data), nbytes_(nbytes), device_(device), owner_(std::move(owner)) {}

Storage::~Storage() {
  if (!owner_) allocator_for(device_).deallocate(data_, nbytes_);
}

}  // namespace dtrain
