// Helpers shared by the fuzz targets: scratch files for readers that take paths, and the rule that
// bad input may only end in a dtrain::Error (which names what was wrong), nothing else.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <string>
#include <string_view>

#include "dtrain/tensor/check.h"

namespace dtrain::fuzz {

/// A path of this process under $TMPDIR (default /tmp), named `name`; removed at exit.
class ScratchFile {
 public:
  explicit ScratchFile(const std::string& name) {
    const char* dir = std::getenv("TMPDIR");
    path_ = std::string(dir && *dir ? dir : "/tmp") + "/dtrain-fuzz-" + std::to_string(::getpid()) +
            "-" + name;
  }
  ~ScratchFile() { std::remove(path_.c_str()); }
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;
  const std::string& path() const { return path_; }
  /// Replaces the file's content with `bytes`.
  void write(std::string_view bytes) const {
    std::ofstream out(path_, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out.flush()) {
      std::fprintf(stderr, "fuzz: cannot write %s\n", path_.c_str());
      std::abort();
    }
  }

 private:
  std::string path_;
};

/// Runs fn; a dtrain::Error is the expected answer to bad input. Any other exception is a finding
/// (e.g. std::out_of_range from a bare stoul names neither the file nor the key): it aborts, so
/// libFuzzer saves the input.
template <class Fn>
void only_dtrain_errors(Fn&& fn) {
  try {
    fn();
  } catch (const Error&) {
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz: escaped a non-dtrain exception: %s\n", e.what());
    std::abort();
  }
}

/// Aborts with `what` when `ok` is false: a property that must hold for every input.
inline void require(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "fuzz: property violated: %s\n", what);
  std::abort();
}

}  // namespace dtrain::fuzz
