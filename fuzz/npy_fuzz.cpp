// .npy reader: magic, header length, then a text dictionary of dtype and shape, from untrusted
// files.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "dtrain/data/npy.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dtrain;
  static const fuzz::ScratchFile file("array.npy");
  file.write(std::string(reinterpret_cast<const char*>(data), size));
  fuzz::only_dtrain_errors([&] {
    const data::NpyArray array = data::read_npy(file.path());
    // A header that loads promises numel values after it: read them all (ASan checks the bounds).
    const int64_t n = array.numel();
    fuzz::require(n >= 0, "numel >= 0");
    if (array.is_integer()) {
      std::vector<int64_t> values(static_cast<size_t>(n));
      array.read_int64(0, n, values.data());
    } else {
      std::vector<float> values(static_cast<size_t>(n));
      array.read_float(0, n, 1.0f, values.data());
    }
  });
  return 0;
}
