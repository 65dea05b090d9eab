// SyntheticDataset: Gaussian inputs labelled by a fixed random linear map, all drawn from Philox
// at construction.
#include "dtrain/data/synthetic.h"

#include <cstring>

#include "dtrain/tensor/check.h"
#include "dtrain/tensor/kernels.h"

namespace dtrain::data {
namespace {
// Philox streams, so inputs and weights are independent draws from one seed.
constexpr uint64_t kInputStream = 0;
constexpr uint64_t kWeightStream = 1;
}  // namespace

SyntheticDataset::SyntheticDataset(int64_t size, Shape example_shape, int64_t num_classes,
                                   uint64_t seed)
    : n_(size), classes_(num_classes), features_(0), shape_(std::move(example_shape)) {
  DTRAIN_CHECK(size >= 0, "SyntheticDataset: size is ", size, "; expected >= 0");
  DTRAIN_CHECK(num_classes >= 1, "SyntheticDataset: num_classes is ", num_classes,
               "; expected >= 1");
  DTRAIN_CHECK(!shape_.empty(), "SyntheticDataset: example_shape is empty; expected e.g. [784]");
  for (int64_t d : shape_) {
    DTRAIN_CHECK(d > 0, "SyntheticDataset: example_shape ", shape_str(shape_),
                 " has a non-positive dimension");
  }
  features_ = shape_numel(shape_);

  inputs_.resize(static_cast<size_t>(n_ * features_));
  for (size_t i = 0; i < inputs_.size(); ++i) {
    inputs_[i] = static_cast<float>(kernels::philox_normal(seed, kInputStream, 0, i));
  }
  std::vector<double> weight(static_cast<size_t>(classes_ * features_));  // [classes, features]
  for (size_t i = 0; i < weight.size(); ++i) {
    weight[i] = kernels::philox_normal(seed, kWeightStream, 0, i);
  }
  labels_.resize(static_cast<size_t>(n_));
  for (int64_t e = 0; e < n_; ++e) {
    const float* x = inputs_.data() + e * features_;
    int64_t best = 0;
    double best_score = 0;
    for (int64_t c = 0; c < classes_; ++c) {
      const double* w = weight.data() + c * features_;
      double score = 0;
      for (int64_t f = 0; f < features_; ++f) score += w[f] * x[f];
      if (c == 0 || score > best_score) {
        best = c;
        best_score = score;
      }
    }
    labels_[e] = best;
  }
}

void SyntheticDataset::fill_batch(const std::vector<int64_t>& indices, Tensor& x, Tensor& y) const {
  detail::fill_batch_from_rows(*this, inputs_, labels_, indices, x, y);
}

std::string SyntheticDataset::describe() const {
  return dtrain::detail::concat("SyntheticDataset(", n_, " x ", shape_str(shape_), ", ", classes_,
                                " classes)");
}

}  // namespace dtrain::data
