// Backward on cuda:0 against the CPU for the functions whose backward builds new tensors (slice
// pads with zeros on the gradient's device). Skipped without a CUDA device.
#include <gtest/gtest.h>

#include "dtrain/autograd/functions.h"
#include "dtrain/tensor/cuda/cuda_backend.h"
#include "testutil.h"

namespace dtrain {
namespace {

TEST(CudaBackward, SliceGradientIsPaddedOnTheGradientsDevice) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  Generator gen(9);
  Tensor x = randn({3, 7}, gen);
  Tensor w = randn({3, 3}, gen);
  Tensor xh = x.detach().set_requires_grad(true);
  Tensor xg = to_device(x, Device::cuda(0)).set_requires_grad(true);
  // Columns 2..4 of 7: zero padding on both sides of the incoming gradient.
  sum(slice(xh, 1, 2, 5) * w).backward();
  sum(slice(xg, 1, 2, 5) * to_device(w, Device::cuda(0))).backward();
  ASSERT_EQ(xg.grad().device(), Device::cuda(0));
  EXPECT_TRUE(testutil::all_close(to_device(xg.grad(), Device::cpu()), xh.grad(), 1e-6, 1e-7));
}

}  // namespace
}  // namespace dtrain
