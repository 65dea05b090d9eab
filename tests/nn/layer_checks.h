// Checks shared by the layer test files: finite-difference gradcheck of a whole module (its input
// and every parameter, in float64) and clone() as an independent copy.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <typeinfo>
#include <vector>

#include "dtrain/autograd/gradcheck.h"
#include "dtrain/nn/module.h"
#include "testutil.h"

namespace dtrain::testutil {

/// Converts every floating parameter and buffer of m to float64 in place. The tensors stay the
/// same objects (as in Module::to), so the layers' members see the change.
inline void to_float64(nn::Module& m) {
  nn::NamedTensors all = m.named_parameters();
  for (auto& entry : m.named_buffers()) all.push_back(entry);
  for (auto& [name, t] : all) {
    if (!is_floating(t.dtype()) || t.dtype() == DType::kFloat64) continue;
    const Tensor converted = to_dtype(t.detach(), DType::kFloat64);
    detail::TensorImpl& impl = t.impl();
    impl.storage = converted.storage();
    impl.offset_bytes = converted.storage_offset_bytes();
    impl.dtype = DType::kFloat64;
    impl.grad.reset();
  }
}

/// gradcheck of sum(m(x) * w), for a fixed random w, with respect to x (a float64 leaf that
/// requires grad) and every parameter of m (already float64). `before_forward` runs before each
/// evaluation (to reset a dropout stream, say). On failure the message names the inputs.
inline GradcheckResult gradcheck_module(nn::Module& m, const Tensor& x, Generator& gen,
                                        const std::function<void()>& before_forward = {}) {
  Tensor w;
  {
    NoGradGuard no_grad;
    if (before_forward) before_forward();
    w = randn(m.forward(x).shape(), gen, DType::kFloat64);
  }
  std::vector<Tensor> inputs{x};
  std::string names = "input 0 = x";
  for (auto& [name, p] : m.named_parameters()) {
    names += ", input " + std::to_string(inputs.size()) + " = " + name;
    inputs.push_back(p);
  }
  GradcheckResult r = gradcheck(
      [&](const std::vector<Tensor>& in) {
        if (before_forward) before_forward();
        return sum(mul(m.forward(in[0]), w));
      },
      inputs, 1e-6, 1e-5, 1e-3);
  if (!r.ok) r.message += " (" + names + ")";
  return r;
}

/// clone() gives the same type, parameter names and outputs, with storage of its own.
inline ::testing::AssertionResult clones_independently(nn::Module& m, const Tensor& x) {
  const nn::ModulePtr copy = m.clone();
  if (typeid(*copy) != typeid(m)) {
    return ::testing::AssertionFailure() << "clone of " << m.describe() << " has another type";
  }
  const auto po = m.named_parameters(), pc = copy->named_parameters();
  if (po.size() != pc.size()) return ::testing::AssertionFailure() << "parameter counts differ";
  for (size_t i = 0; i < po.size(); ++i) {
    if (po[i].first != pc[i].first || pc[i].second.shares_storage(po[i].second) ||
        !bit_equal(po[i].second, pc[i].second)) {
      return ::testing::AssertionFailure() << "parameter " << po[i].first << " not copied";
    }
  }
  NoGradGuard no_grad;
  if (!bit_equal(copy->forward(x), m.forward(x))) {
    return ::testing::AssertionFailure() << "clone of " << m.describe() << " computes otherwise";
  }
  return ::testing::AssertionSuccess();
}

}  // namespace dtrain::testutil
