// MappedFile: a read-only memory map of a whole file, for data sets too big to read into memory
// (.npy arrays, token streams).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace dtrain::data {

/// The pages are read from disk on first touch, so a big file costs address space, not memory.
/// Immutable after construction: any number of threads may read it. The file must not shrink while
/// mapped (reading a page past its new end raises SIGBUS); data sets are not rewritten in place.
class MappedFile {
 public:
  /// `what` names the kind of file in errors ("npy file"); throws ValueError naming `path` when it
  /// is missing, not a regular file, or cannot be opened or mapped. An empty file maps to size 0.
  MappedFile(std::string path, const char* what);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace dtrain::data
