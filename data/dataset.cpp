// Dataset helpers.
#include "data/dataset.h"

#include <cstring>

#include "tensor/check.h"

namespace dtrain::data {

Normalize parse_normalize(const std::string& name) {
  if (name == "none") return Normalize::kNone;
  if (name == "unit") return Normalize::kUnit;
  if (name == "standard") return Normalize::kStandard;
  DTRAIN_THROW(ValueError, "unknown normalisation '", name, "'; expected none, unit or standard");
}

namespace detail {

void fill_batch_from_rows(const Dataset& dataset, const std::vector<float>& rows,
                          const std::vector<int64_t>& labels, const std::vector<int64_t>& indices,
                          Tensor& x, Tensor& y) {
  const int64_t batch = static_cast<int64_t>(indices.size());
  const int64_t n = static_cast<int64_t>(labels.size());
  const int64_t example = shape_numel(dataset.example_shape());
  Shape expected_x{batch};
  for (int64_t d : dataset.example_shape()) expected_x.push_back(d);
  DTRAIN_CHECK(x.defined() && x.dtype() == DType::kFloat32 && x.device().is_cpu() &&
                   x.numel() == batch * example,
               dataset.describe(), ": fill_batch x is ", x.defined() ? x.describe() : "undefined",
               "; expected float32", shape_str(expected_x), " (or any shape with ", batch * example,
               " elements) on cpu");
  DTRAIN_CHECK(
      y.defined() && y.dtype() == DType::kInt64 && y.device().is_cpu() && y.shape() == Shape{batch},
      dataset.describe(), ": fill_batch y is ", y.defined() ? y.describe() : "undefined",
      "; expected int64[", batch, "] on cpu");
  float* xs = x.data<float>();
  int64_t* ys = y.data<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t i = indices[b];
    DTRAIN_CHECK(i >= 0 && i < n, dataset.describe(), ": index ", i, " at batch position ", b,
                 " is out of range [0, ", n, ")");
    std::memcpy(xs + b * example, rows.data() + i * example, example * sizeof(float));
    ys[b] = labels[i];
  }
}

}  // namespace detail
}  // namespace dtrain::data
