// Checkpoint reader. The first byte picks the form: odd, the rest is the whole file; even, the rest
// is the payload, framed here with a valid header (magic, version 1, length, CRC-32C) so that the
// fuzzer reaches the protobuf and tensor checks behind the checksum.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "dtrain/train/checkpoint.h"
#include "dtrain/train/encoding.h"
#include "fuzz/fuzz_util.h"

namespace {

// The layout save_checkpoint writes (train/checkpoint.cpp).
std::string framed(const std::string& payload) {
  const uint32_t version = 1;
  const uint64_t length = payload.size();
  const uint32_t crc = dtrain::train::crc32c(payload.data(), payload.size());
  std::string file = "DTCK";
  file.append(reinterpret_cast<const char*>(&version), sizeof version);
  file.append(reinterpret_cast<const char*>(&length), sizeof length);
  file.append(reinterpret_cast<const char*>(&crc), sizeof crc);
  return file + payload;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dtrain;
  if (size == 0) return 0;
  static const fuzz::ScratchFile file("ckpt-0000000001.dtck");
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  file.write(data[0] % 2 ? rest : framed(rest));
  fuzz::only_dtrain_errors([&] {
    const train::CheckpointData ckpt = train::load_checkpoint(file.path());
    // Every tensor that loads must be readable to its last byte (ASan checks the bounds).
    size_t sum = 0;
    auto touch = [&](const Tensor& t) {
      if (!t.defined()) return;
      const auto* bytes = static_cast<const unsigned char*>(t.data_ptr());
      for (size_t i = 0; i < t.nbytes(); ++i) sum += bytes[i];
    };
    for (const auto& [name, t] : ckpt.model) touch(t);
    for (const auto& [name, t] : ckpt.optimizer_tensors) touch(t);
    fuzz::require(sum != SIZE_MAX, "unreachable; keeps the reads");
  });
  return 0;
}
