// GzipReader: a file read through zlib, inflated when it is gzip and passed through otherwise, for
// the IDX and text readers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace dtrain::data::detail {

/// Reads sequentially; one thread. Errors name `what` and the path ("IDX file '...': ...").
class GzipReader {
 public:
  /// Throws ValueError when `path` is missing, not a regular file, or cannot be opened.
  GzipReader(std::string path, std::string what);
  ~GzipReader();
  GzipReader(const GzipReader&) = delete;
  GzipReader& operator=(const GzipReader&) = delete;

  /// Whether the file is a gzip stream (by its magic bytes, not its name).
  bool is_gzip() const { return gzip_; }
  /// Size on disk (compressed for gzip).
  uint64_t file_size() const { return file_size_; }
  /// Up to `n` bytes, fewer only at the end of the data. Throws ValueError when zlib reports an
  /// error, e.g. a gzip stream that is corrupt or cut short (its CRC and length are checked at the
  /// end, so read until a short read to verify them).
  size_t read(void* out, size_t n);

 private:
  std::string path_, what_;
  void* file_ = nullptr;  // gzFile
  bool gzip_ = false;
  uint64_t file_size_ = 0;
};

}  // namespace dtrain::data::detail
