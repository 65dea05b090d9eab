// CIFAR-10 and CIFAR-100 in their binary versions (cifar-10-binary.tar.gz,
// cifar-100-binary.tar.gz).
#pragma once

#include <string>
#include <vector>

#include "dtrain/data/dataset.h"

namespace dtrain::data {

/// Records of one or more CIFAR binary files, in file order. CIFAR-10 records are 1 label byte +
/// 3072 pixel bytes; CIFAR-100 records are a coarse label byte, a fine label byte (the label used)
/// and 3072 pixel bytes. Pixels are channel-major (1024 red, 1024 green, 1024 blue, rows of 32),
/// which is the example layout [3, 32, 32]. Each file's size is checked to be a positive multiple
/// of the record size before it is read; labels are checked against 10 (CIFAR-10) or 100 fine and
/// 20 coarse classes (CIFAR-100). Errors name the file.
class CifarDataset final : public Dataset {
 public:
  /// variant: 10 or 100. kStandard uses the per-channel mean and std of the variant's training set.
  CifarDataset(std::vector<std::string> files, int variant, Normalize normalize);
  int64_t size() const override { return n_; }
  Shape example_shape() const override { return {3, 32, 32}; }
  int64_t num_classes() const override { return variant_; }
  void fill_batch(const std::vector<int64_t>& indices, Tensor& x, Tensor& y) const override;
  std::string describe() const override;

 private:
  std::vector<std::string> files_;
  int variant_;
  Normalize normalize_;
  int64_t n_ = 0;
  float scale_[3], shift_[3];    // per channel: pixel * scale + shift
  std::vector<uint8_t> pixels_;  // [N, 3, 32, 32]
  std::vector<int64_t> labels_;
};

/// The train and test splits of CIFAR-`variant` (10 or 100) from `dir`: CIFAR-10's
/// data_batch_1.bin ... data_batch_5.bin and test_batch.bin, CIFAR-100's train.bin and test.bin.
/// `dir` may also be the directory the archive was extracted into (holding cifar-10-batches-bin/
/// or cifar-100-binary/). A missing file is named together with the files expected.
Splits load_cifar(const std::string& dir, int variant, Normalize normalize);

}  // namespace dtrain::data
