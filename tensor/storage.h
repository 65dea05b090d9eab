// Storage: a reference-counted block of device memory that tensors view.
#pragma once

#include <cstddef>
#include <memory>

#include "dtrain/tensor/dtype.h"

namespace dtrain {

/// Owns nbytes of memory on one device, returned to its allocator on destruction, or views
/// memory owned elsewhere (a shared-memory mapping) that `owner` keeps alive.
/// Shared between tensors through std::shared_ptr; not copyable. Destruction never throws: a block
/// its allocator cannot take back is reported on stderr and left allocated.
class Storage {
 public:
  Storage(size_t nbytes, Device device);
  /// Memory that is not ours: nothing is freed here; `owner` lives as long as this storage.
  Storage(void* data, size_t nbytes, Device device, std::shared_ptr<const void> owner);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }
  /// False for memory owned elsewhere (the allocator never sees it).
  bool from_allocator() const { return !owner_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
  std::shared_ptr<const void> owner_;  // set for memory owned elsewhere
};

}  // namespace dtrain
