// Dataset helpers.
#include "dtrain/data/dataset.h"

#include <cstring>
#include <sstream>

#include "dtrain/tensor/check.h"

namespace dtrain::data {

Normalize parse_normalize(const std::string& name) {
  if (name == "none") return Normalize::kNone;
  if (name == "unit") return Normalize::kUnit;
  if (name == "standard") return Normalize::kStandard;
  DTRAIN_THROW(ValueError, "unknown normalisation '", name, "'; expected none, unit or standard");
}

const char* normalize_name(Normalize normalize) {
  switch (normalize) {
    case Normalize::kNone:
      return "none";
    case Normalize::kUnit:
      return "unit";
    case Normalize::kStandard:
      return "standard";
  }
  return "?";
}

namespace detail {

void check_batch(const Dataset& dataset, const std::vector<int64_t>& indices, const Tensor& x,
                 const Tensor& y) {
  const int64_t batch = static_cast<int64_t>(indices.size());
  const int64_t example = shape_numel(dataset.example_shape());
  const DType x_dtype = dataset.example_dtype();
  Shape expected_x{batch}, expected_y{batch};
  for (int64_t d : dataset.example_shape()) expected_x.push_back(d);
  for (int64_t d : dataset.label_shape()) expected_y.push_back(d);
  DTRAIN_CHECK(
      x.defined() && x.dtype() == x_dtype && x.device().is_cpu() && x.numel() == batch * example,
      dataset.describe(), ": fill_batch x is ", x.defined() ? x.describe() : "undefined",
      "; expected ", dtype_name(x_dtype), shape_str(expected_x), " (or any shape with ",
      batch * example, " elements) on cpu");
  DTRAIN_CHECK(
      y.defined() && y.dtype() == DType::kInt64 && y.device().is_cpu() && y.shape() == expected_y,
      dataset.describe(), ": fill_batch y is ", y.defined() ? y.describe() : "undefined",
      "; expected int64", shape_str(expected_y), " on cpu");
  const int64_t n = dataset.size();
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t i = indices[b];
    DTRAIN_CHECK(i >= 0 && i < n, dataset.describe(), ": index ", i, " at batch position ", b,
                 " is out of range [0, ", n, ")");
  }
}

void fill_batch_from_rows(const Dataset& dataset, const std::vector<float>& rows,
                          const std::vector<int64_t>& labels, const std::vector<int64_t>& indices,
                          Tensor& x, Tensor& y) {
  check_batch(dataset, indices, x, y);
  const int64_t example = shape_numel(dataset.example_shape());
  float* xs = x.data<float>();
  int64_t* ys = y.data<int64_t>();
  for (size_t b = 0; b < indices.size(); ++b) {
    const int64_t i = indices[b];
    std::memcpy(xs + b * example, rows.data() + i * example, example * sizeof(float));
    ys[b] = labels[i];
  }
}

std::string bytes_str(uint64_t bytes) {
  const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 6) {
    value /= 1024;
    ++unit;
  }
  std::ostringstream os;
  if (unit == 0) {
    os << bytes << " bytes";
  } else {
    os.precision(value < 10 ? 2 : 3);
    os << value << ' ' << units[unit] << " (" << bytes << " bytes)";
  }
  return os.str();
}

}  // namespace detail
}  // namespace dtrain::data
