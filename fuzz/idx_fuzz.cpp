// IDX reader (images and labels, plain or gzip). The first byte says which of the two files the
// harness gzips (bit 0 images, bit 1 labels), so the inflate bound is exercised with headers the
// fuzzer chose; the images file comes next (length-prefixed by FuzzedDataProvider), then labels.
#include <fuzzer/FuzzedDataProvider.h>
#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "dtrain/data/idx.h"
#include "fuzz/fuzz_util.h"

namespace {

std::string gzipped(const std::string& raw) {
  z_stream z{};
  // windowBits 15 + 16: a gzip wrapper, as in the .gz files of Fashion-MNIST.
  if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    std::abort();
  std::string out(deflateBound(&z, raw.size()) + 32, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(raw.data()));
  z.avail_in = static_cast<uInt>(raw.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  if (deflate(&z, Z_FINISH) != Z_STREAM_END) std::abort();
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dtrain;
  static const fuzz::ScratchFile images("images-idx3-ubyte");
  static const fuzz::ScratchFile labels("labels-idx1-ubyte");
  FuzzedDataProvider in(data, size);
  const uint8_t mode = in.ConsumeIntegral<uint8_t>();
  const std::string image_bytes = in.ConsumeRandomLengthString(size);
  const std::string label_bytes = in.ConsumeRemainingBytesAsString();
  images.write(mode & 1 ? gzipped(image_bytes) : image_bytes);
  labels.write(mode & 2 ? gzipped(label_bytes) : label_bytes);
  fuzz::only_dtrain_errors([&] {
    const data::IdxDataset set(images.path(), labels.path(), data::Normalize::kStandard);
    if (set.size() == 0) return;
    // The first and last examples must be readable (ASan checks the bounds).
    const std::vector<int64_t> indices = {0, set.size() - 1};
    Shape x_shape = set.example_shape();
    x_shape.insert(x_shape.begin(), int64_t(indices.size()));
    Tensor x(x_shape), y({int64_t(indices.size())}, DType::kInt64);
    set.fill_batch(indices, x, y);
    for (int64_t i = 0; i < y.numel(); ++i) {
      fuzz::require(y.data<int64_t>()[i] >= 0 && y.data<int64_t>()[i] < set.num_classes(),
                    "labels lie in [0, num_classes)");
    }
  });
  return 0;
}
