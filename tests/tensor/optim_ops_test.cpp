// The in-place optimiser updates of the tensor layer (ops::sgd_update_ and friends): the
// arithmetic against a plain scalar loop, and refusals that name the buffer at fault.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "dtrain/tensor/check.h"
#include "dtrain/tensor/kernels.h"
#include "dtrain/tensor/ops.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;

Tensor values(const std::vector<float>& v) {
  Tensor t({static_cast<int64_t>(v.size())}, DType::kFloat32);
  for (size_t i = 0; i < v.size(); ++i) t.data<float>()[i] = v[i];
  return t;
}

TEST(OptimOps, SgdWithNesterovMomentumMatchesTheScalarFormulaOverSteps) {
  // 3 steps of SGD with weight decay, dampening and Nesterov momentum, written out by hand.
  const std::vector<float> p0 = {0.5f, -1.25f, 2.0f, 0.0f, 3.5f},
                           g = {0.1f, 0.2f, -0.3f, 1.0f, 0.0f};
  Tensor p = values(p0), grad = values(g), buf = values({0, 0, 0, 0, 0});
  std::vector<float> ref_p = p0, ref_buf(p0.size());
  const float lr = 0.1f, momentum = 0.9f, dampening = 0.1f, decay = 0.01f;
  for (int step = 0; step < 3; ++step) {
    const kernels::SgdParams s{lr, momentum, dampening, decay, /*nesterov=*/true, step == 0};
    ops::sgd_update_(p, grad, buf, s);
    for (size_t i = 0; i < ref_p.size(); ++i) {
      float d = g[i] + decay * ref_p[i];
      const float b = step == 0 ? d : momentum * ref_buf[i] + (1 - dampening) * d;
      ref_buf[i] = b;
      d = d + momentum * b;
      ref_p[i] -= lr * d;
    }
  }
  for (size_t i = 0; i < ref_p.size(); ++i) {
    EXPECT_NEAR(p.data<float>()[i], ref_p[i], 1e-6f) << "parameter " << i;
    EXPECT_NEAR(buf.data<float>()[i], ref_buf[i], 1e-6f) << "momentum buffer " << i;
  }
}

TEST(OptimOps, AdamStepsTowardsTheNegativeGradientByAboutTheLearningRate) {
  // The first Adam step moves every parameter by lr * sign(g) (m/sqrt(v) = g/|g| after bias
  // correction), up to eps.
  Tensor p = values({1, 1, 1}), g = values({0.5f, -2.0f, 1e-3f});
  Tensor m = values({0, 0, 0}), v = values({0, 0, 0});
  const float beta1 = 0.9f, beta2 = 0.999f;
  const kernels::AdamParams s{0.01f, beta1, beta2, 1e-8f, 0.0f, 1 - beta1, 1 - beta2, false};
  ops::adam_update_(p, g, m, v, s);
  EXPECT_NEAR(p.data<float>()[0], 0.99f, 1e-5f);
  EXPECT_NEAR(p.data<float>()[1], 1.01f, 1e-5f);
  EXPECT_NEAR(p.data<float>()[2], 0.99f, 1e-4f);
  EXPECT_NEAR(m.data<float>()[1], (1 - beta1) * -2.0f, 1e-6f);
  EXPECT_NEAR(v.data<float>()[1], (1 - beta2) * 4.0f, 1e-6f);
}

TEST(OptimOps, AMismatchedBufferIsRefusedNamingIt) {
  Tensor p = values({1, 2, 3}), g = values({1, 2, 3}), short_buf = values({0, 0});
  const kernels::SgdParams s{0.1f, 0.9f, 0.0f, 0.0f, false, false};
  try {
    ops::sgd_update_(p, g, short_buf, s);
    ADD_FAILURE() << "a momentum buffer of the wrong shape was accepted";
  } catch (const ValueError& e) {
    EXPECT_THAT(e.message(), HasSubstr("sgd_update_: momentum buffer is"));
    EXPECT_THAT(e.message(), HasSubstr("must match in device, dtype and shape"));
  }
  Tensor g64 = zeros({3}, DType::kFloat64);
  try {
    ops::sgd_update_(p, g64, short_buf, {0.1f, 0.0f, 0.0f, 0.0f, false, false});
    ADD_FAILURE() << "a float64 gradient for a float32 parameter was accepted";
  } catch (const ValueError& e) {
    EXPECT_THAT(e.message(), HasSubstr("sgd_update_: grad is"));
  }
}

}  // namespace
}  // namespace dtrain
