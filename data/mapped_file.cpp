// MappedFile: open, fstat, mmap (read-only, private), then close the descriptor.
#include "dtrain/data/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "dtrain/tensor/check.h"

namespace dtrain::data {

MappedFile::MappedFile(std::string path, const char* what) : path_(std::move(path)) {
  // O_NONBLOCK: opening a FIFO by mistake must fail below, not wait for a writer.
  const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  DTRAIN_CHECK(fd >= 0, what, " '", path_, "': cannot open: ", std::strerror(errno),
               errno == ENOENT ? " (no such file)" : "");
  struct stat st {};
  const bool stat_ok = ::fstat(fd, &st) == 0;
  const int stat_err = errno;
  if (!stat_ok || !S_ISREG(st.st_mode)) {
    ::close(fd);
    DTRAIN_THROW(ValueError, what, " '", path_,
                 "': ", stat_ok ? "not a regular file" : std::strerror(stat_err));
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    const int err = errno;
    ::close(fd);  // the mapping keeps the file open
    DTRAIN_CHECK(p != MAP_FAILED, what, " '", path_, "': cannot map its ", size_,
                 " bytes: ", std::strerror(err));
    data_ = static_cast<const uint8_t*>(p);
  } else {
    ::close(fd);
  }
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

}  // namespace dtrain::data
