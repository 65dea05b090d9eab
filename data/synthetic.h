// A seeded synthetic classification set with a learnable target, for tests and benchmarks.
#pragma once

#include "dtrain/data/dataset.h"

namespace dtrain::data {

/// Inputs x ~ N(0, 1) of shape example_shape, labels = argmax(W x) for a fixed random W, so a
/// linear model can reach 100% and an MLP learns it quickly. Everything is generated from
/// Philox(seed) at construction: the same seed gives the same set on every machine.
class SyntheticDataset final : public Dataset {
 public:
  SyntheticDataset(int64_t size, Shape example_shape, int64_t num_classes, uint64_t seed);
  int64_t size() const override { return n_; }
  Shape example_shape() const override { return shape_; }
  int64_t num_classes() const override { return classes_; }
  void fill_batch(const std::vector<int64_t>& indices, Tensor& x, Tensor& y) const override;
  std::string describe() const override;

 private:
  int64_t n_, classes_, features_;
  Shape shape_;
  std::vector<float> inputs_;
  std::vector<int64_t> labels_;
};

}  // namespace dtrain::data
