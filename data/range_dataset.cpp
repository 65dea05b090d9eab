// RangeDataset.
#include "dtrain/data/range_dataset.h"

#include "dtrain/tensor/check.h"

namespace dtrain::data {

RangeDataset::RangeDataset(DatasetPtr base, int64_t begin, int64_t count, std::string name)
    : base_(std::move(base)), begin_(begin), count_(count), name_(std::move(name)) {
  DTRAIN_CHECK(base_ != nullptr, "RangeDataset: needs a dataset");
  DTRAIN_CHECK(begin_ >= 0 && count_ >= 0 && begin_ + count_ <= base_->size(), "RangeDataset '",
               name_, "': examples [", begin_, ", ", begin_ + count_, ") are not inside ",
               base_->describe(), " (", base_->size(), " examples)");
}

void RangeDataset::fill_batch(const std::vector<int64_t>& indices, Tensor& x, Tensor& y) const {
  fill_batch_for_epoch(indices, 0, x, y);
}

void RangeDataset::fill_batch_for_epoch(const std::vector<int64_t>& indices, int64_t epoch,
                                        Tensor& x, Tensor& y) const {
  // The base checks only its own range; an index past this range would read the next split.
  detail::check_batch(*this, indices, x, y);
  std::vector<int64_t> shifted(indices);
  for (auto& i : shifted) i += begin_;
  base_->fill_batch_for_epoch(shifted, epoch, x, y);
}

}  // namespace dtrain::data
