// RangeDataset: a contiguous range of another dataset's examples, e.g. the train and test splits
// of one synthetic set (which share its target function).
#pragma once

#include <string>

#include "dtrain/data/dataset.h"

namespace dtrain::data {

class RangeDataset final : public Dataset {
 public:
  /// Examples [begin, begin + count) of `base`; `name` describes the range ("train split").
  RangeDataset(DatasetPtr base, int64_t begin, int64_t count, std::string name);
  int64_t size() const override { return count_; }
  Shape example_shape() const override { return base_->example_shape(); }
  DType example_dtype() const override { return base_->example_dtype(); }
  Shape label_shape() const override { return base_->label_shape(); }
  int64_t num_classes() const override { return base_->num_classes(); }
  void fill_batch(const std::vector<int64_t>& indices, Tensor& x, Tensor& y) const override;
  /// Forwards the epoch to `base` with the indices shifted by `begin`.
  void fill_batch_for_epoch(const std::vector<int64_t>& indices, int64_t epoch, Tensor& x,
                            Tensor& y) const override;
  std::string describe() const override { return name_ + " of " + base_->describe(); }

 private:
  DatasetPtr base_;
  int64_t begin_, count_;
  std::string name_;
};

}  // namespace dtrain::data
