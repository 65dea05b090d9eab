// safetensors reader (train.init_from): a header that reads must describe tensors whose bytes are
// all inside the file; loading them into a model must end in a dtrain error or a loaded model.
#include <cstddef>
#include <cstdint>
#include <string>

#include "dtrain/nn/layers.h"
#include "dtrain/train/safetensors.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dtrain;
  static const fuzz::ScratchFile file("weights.safetensors");
  file.write(std::string(reinterpret_cast<const char*>(data), size));
  fuzz::only_dtrain_errors([&] {
    const train::SafetensorsFile read = train::read_safetensors(file.path());
    for (const auto& [name, t] : read.tensors) {
      fuzz::require(t.numel() >= 0, "numel >= 0");
      // Touch every byte (ASan checks the bounds).
      const auto* bytes = static_cast<const uint8_t*>(t.data_ptr());
      uint64_t sum = 0;
      for (int64_t i = 0; i < t.numel() * static_cast<int64_t>(dtype_size(t.dtype())); ++i) {
        sum += bytes[i];
      }
      (void)sum;
    }
    nn::Linear model(2, 2);
    train::load_weights(model, read.tensors, file.path());
  });
  return 0;
}
