// GzipReader over zlib's gzFile.
#include "dtrain/data/gzip_reader.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "dtrain/tensor/check.h"

namespace dtrain::data::detail {

GzipReader::GzipReader(std::string path, std::string what)
    : path_(std::move(path)), what_(std::move(what)) {
  std::error_code ec;
  DTRAIN_CHECK(std::filesystem::is_regular_file(path_, ec), what_, " '", path_,
               "': not found (or not a regular file)");
  file_size_ = std::filesystem::file_size(path_, ec);
  DTRAIN_CHECK(!ec, what_, " '", path_, "': cannot read its size: ", ec.message());
  gzFile file = gzopen(path_.c_str(), "rb");
  DTRAIN_CHECK(file != nullptr, what_, " '", path_, "': cannot open: ", std::strerror(errno));
  file_ = file;
  gzip_ = gzdirect(file) == 0;  // zlib looks at the magic bytes
}

GzipReader::~GzipReader() { gzclose(static_cast<gzFile>(file_)); }

size_t GzipReader::read(void* out, size_t n) {
  gzFile file = static_cast<gzFile>(file_);
  size_t total = 0;
  while (total < n) {
    const unsigned want = static_cast<unsigned>(std::min<size_t>(n - total, size_t{1} << 30));
    const int got = gzread(file, static_cast<uint8_t*>(out) + total, want);
    if (got <= 0) {
      int code = Z_OK;
      const std::string msg = gzerror(file, &code);
      // A gzip stream cut short still yields its prefix; zlib reports it as Z_BUF_ERROR.
      DTRAIN_CHECK(got == 0 && code == Z_OK, what_, " '", path_,
                   "': gzip stream is truncated or corrupt (", msg, ")");
      break;
    }
    total += static_cast<size_t>(got);
  }
  return total;
}

}  // namespace dtrain::data::detail
