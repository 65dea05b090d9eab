// Helpers shared by the test suites: closeness checks with useful failure messages, and the
// reader for the PyTorch golden-value fixtures (tests/fixtures/*.txt, see
// scripts/make_golden_fixtures.py for the format).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "dtrain/tensor/tensor.h"

namespace dtrain::testutil {

/// Every element within atol + rtol * |expected|; reports the worst element otherwise.
inline ::testing::AssertionResult all_close(const Tensor& actual, const Tensor& expected,
                                            double rtol = 1e-5, double atol = 1e-6) {
  if (actual.shape() != expected.shape()) {
    return ::testing::AssertionFailure() << "shape " << shape_str(actual.shape()) << " vs expected "
                                         << shape_str(expected.shape());
  }
  const auto a = actual.to_vector<double>();
  const auto e = expected.to_vector<double>();
  double worst = -1;
  size_t at = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double excess = std::fabs(a[i] - e[i]) - (atol + rtol * std::fabs(e[i]));
    if (!(excess <= 0) && (worst < 0 || excess > worst || std::isnan(a[i]))) {
      worst = std::isnan(excess) ? 1e300 : excess;
      at = i;
    }
  }
  if (worst < 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "element " << at << ": " << a[at] << " vs expected "
                                       << e[at] << " (rtol " << rtol << ", atol " << atol << ")";
}

/// Bit-for-bit equality of two tensors' bytes.
inline bool bit_equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  const auto va = a.to_vector<double>();
  const auto vb = b.to_vector<double>();
  for (size_t i = 0; i < va.size(); ++i) {
    if (std::memcmp(&va[i], &vb[i], sizeof(double)) != 0) return false;
  }
  return true;
}

/// Tensors of one fixture file by name (float32; integer tensors are converted by the caller).
class Fixture {
 public:
  explicit Fixture(const std::string& file) {
    const std::string path = std::string(DTRAIN_FIXTURE_DIR) + "/" + file;
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot open fixture " + path);
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty() || line[0] == '#') continue;
      std::istringstream is(line);
      std::string name;
      int ndim = 0;
      is >> name >> ndim;
      Shape shape(ndim);
      for (auto& d : shape) is >> d;
      std::vector<float> values(shape_numel(shape));
      for (auto& v : values) is >> v;
      if (!is) throw std::runtime_error("malformed fixture line for " + name + " in " + path);
      tensors_[name] = from_vector(values, shape);
    }
  }
  Tensor operator[](const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) throw std::runtime_error("fixture has no tensor " + name);
    return it->second.clone();
  }
  Tensor labels(const std::string& name) const { return to_dtype((*this)[name], DType::kInt64); }

 private:
  std::map<std::string, Tensor> tensors_;
};

}  // namespace dtrain::testutil
