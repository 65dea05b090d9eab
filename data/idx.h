// IDX files (the MNIST format): big-endian header, gzip-compressed or plain. Fashion-MNIST is a
// pair of image and label files per split.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dtrain/data/dataset.h"

namespace dtrain::data {

/// Default location of Debian's dataset-fashion-mnist package.
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

/// Images (idx3, unsigned bytes, [N, H, W]) with their labels (idx1, [N]). Headers are validated
/// (magic, rank, dims, sizes against the file length, label range); an error names the file and
/// what is wrong (e.g. "truncated: header says 60000 x 28 x 28 = 47040000 bytes, file has 1024").
/// Gzip is detected by its magic bytes, so .gz and plain files both load. The header is read
/// first: a plain file's size is compared with what the header implies before its data is read, and
/// a gzip stream is inflated no further than the header's size plus one byte (a header claiming
/// more than the compressed file can hold is refused before anything is inflated).
class IdxDataset final : public Dataset {
 public:
  IdxDataset(const std::string& images_path, const std::string& labels_path, Normalize normalize,
             int64_t num_classes = 10);
  int64_t size() const override;
  Shape example_shape() const override;  // [1, H, W]
  int64_t num_classes() const override;
  void fill_batch(const std::vector<int64_t>& indices, Tensor& x, Tensor& y) const override;
  std::string describe() const override;

 private:
  std::string images_path_;
  int64_t n_ = 0, h_ = 0, w_ = 0, classes_ = 10;
  Normalize normalize_;        // for describe()
  std::vector<float> pixels_;  // normalised, [N * H * W]
  std::vector<int64_t> labels_;
};

/// Pixel bytes to the floats IdxDataset holds for `normalize` (kStandard: the Fashion-MNIST
/// training split's mean and std). The one implementation, so that other readers (`dtrain predict`)
/// match the dataset bit for bit.
void normalize_pixels(const uint8_t* pixels, size_t count, Normalize normalize, float* out);

/// An unsigned-byte IDX file's dimensions and the data after its header.
struct IdxContents {
  std::vector<int64_t> dims;
  std::vector<uint8_t> bytes;
  const uint8_t* data() const { return bytes.data(); }
};
/// Reads and validates an unsigned-byte IDX file of rank `expected_rank` as IdxDataset does; `what`
/// names the expected content in messages ("images [N, H, W]"). Throws ValueError naming the file.
IdxContents read_idx(const std::string& path, int expected_rank, const char* what);

/// The four Fashion-MNIST files in a directory, each plain or .gz.
struct FashionMnistFiles {
  std::string train_images, train_labels, test_images, test_labels;
};

/// Finds the four files in `dir` without reading them; throws ValueError naming the directory, the
/// first file missing and how to get them.
FashionMnistFiles locate_fashion_mnist(const std::string& dir);

/// The train and test splits from `dir` (train-*-idx*-ubyte[.gz], t10k-*-idx*-ubyte[.gz]).
Splits load_fashion_mnist(const std::string& dir, Normalize normalize);

}  // namespace dtrain::data
