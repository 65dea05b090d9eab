// Comparing the model tensors of two checkpoints, for tests of runs that must train alike.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "dtrain/train/checkpoint.h"

namespace dtrain::testutil {

/// The largest |a - b| over two tensors of one shape (infinity when the shapes differ).
inline double max_abs_difference(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return std::numeric_limits<double>::infinity();
  const std::vector<double> va = a.to_vector<double>(), vb = b.to_vector<double>();
  double worst = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    const double d = std::fabs(va[i] - vb[i]);
    if (!(d <= worst)) worst = d;  // NaN wins
  }
  return worst;
}

/// Every model tensor of the two checkpoints within `tolerance` (max absolute difference).
inline void expect_same_model(const std::string& a_path, const std::string& b_path,
                              double tolerance) {
  const train::CheckpointData a = train::load_checkpoint(a_path);
  const train::CheckpointData b = train::load_checkpoint(b_path);
  EXPECT_EQ(a.step, b.step);
  ASSERT_EQ(a.model.size(), b.model.size());
  ASSERT_FALSE(a.model.empty());
  for (size_t i = 0; i < a.model.size(); ++i) {
    EXPECT_EQ(a.model[i].first, b.model[i].first);
    EXPECT_LE(max_abs_difference(a.model[i].second, b.model[i].second), tolerance)
        << "model tensor " << a.model[i].first;
  }
}

}  // namespace dtrain::testutil
