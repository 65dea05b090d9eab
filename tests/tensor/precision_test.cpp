// train.precision's autocast in the tensor layer: under a MatmulPrecisionGuard, GEMM and
// convolution (forward and both backward products) equal the float32 kernels on operands rounded
// to bfloat16 or float16, bit for bit; the guard is per thread and restores; all_finite's fast
// path finds an Inf or NaN wherever it is.
#include "dtrain/tensor/precision.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <thread>

#include "dtrain/tensor/cuda/cuda_backend.h"
#include "dtrain/tensor/kernels.h"
#include "dtrain/tensor/ops.h"
#include "testutil.h"

namespace dtrain {
namespace {

Tensor rounded(const Tensor& t, DType precision) {
  Tensor out(t.shape(), DType::kFloat32);
  round_floats(t.data<float>(), out.data<float>(), t.numel(), precision);
  return out;
}

class AtPrecision : public ::testing::TestWithParam<DType> {};

TEST_P(AtPrecision, GemmEqualsFloat32OnRoundedOperandsInEveryTransposition) {
  const DType precision = GetParam();
  Generator gen(3);
  const Tensor a = randn({37, 53}, gen), b = randn({53, 29}, gen), at = randn({53, 37}, gen),
               bt = randn({29, 53}, gen);
  for (const auto& [x, y, ta, tb] :
       {std::tuple{a, b, false, false}, std::tuple{at, b, true, false},
        std::tuple{a, bt, false, true}, std::tuple{at, bt, true, true}}) {
    Tensor mixed;
    {
      MatmulPrecisionGuard guard(precision);
      mixed = ops::matmul(x, y, ta, tb);
    }
    const Tensor expected = ops::matmul(rounded(x, precision), rounded(y, precision), ta, tb);
    EXPECT_TRUE(testutil::bit_equal(mixed, expected)) << ta << tb;
    // And it is not float32's result: the rounding happened.
    EXPECT_FALSE(testutil::bit_equal(mixed, ops::matmul(x, y, ta, tb))) << ta << tb;
  }
}

TEST_P(AtPrecision, ConvolutionForwardAndBackwardEqualFloat32OnRoundedOperands) {
  const DType precision = GetParam();
  Generator gen(5);
  const Tensor x = randn({2, 8, 9, 9}, gen), w = randn({6, 8, 3, 3}, gen), bias = randn({6}, gen),
               gy = randn({2, 6, 9, 9}, gen);
  const ops::Conv2dArgs args{1, 1};
  Tensor y, dx, dw;
  {
    MatmulPrecisionGuard guard(precision);
    y = ops::conv2d(x, w, bias, args);
    dx = ops::conv2d_backward_input(gy, w, x.shape(), args);
    dw = ops::conv2d_backward_weight(gy, x, w.shape(), args);
  }
  const Tensor xr = rounded(x, precision), wr = rounded(w, precision), gyr = rounded(gy, precision);
  EXPECT_TRUE(testutil::bit_equal(y, ops::conv2d(xr, wr, bias, args)));
  EXPECT_TRUE(testutil::bit_equal(dx, ops::conv2d_backward_input(gyr, wr, x.shape(), args)));
  EXPECT_TRUE(testutil::bit_equal(dw, ops::conv2d_backward_weight(gyr, xr, w.shape(), args)));
  EXPECT_FALSE(testutil::bit_equal(y, ops::conv2d(x, w, bias, args)));
}

INSTANTIATE_TEST_SUITE_P(Halves, AtPrecision, ::testing::Values(DType::kBFloat16, DType::kFloat16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST_P(AtPrecision, CudaGemmOn16BitOperandsMatchesTheCpuToAccumulationOrder) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  const DType precision = GetParam();
  Generator gen(11);
  const Tensor a = randn({64, 96}, gen), b = randn({96, 48}, gen);
  const Tensor cpu = ops::matmul(rounded(a, precision), rounded(b, precision));
  Tensor gpu;
  {
    MatmulPrecisionGuard guard(precision);
    gpu = to_device(ops::matmul(to_device(a, Device::cuda(0)), to_device(b, Device::cuda(0))),
                    Device::cpu());
  }
  // The same exact products, summed in another order by cuBLAS's tensor cores.
  EXPECT_TRUE(testutil::all_close(gpu, cpu, 1e-5, 1e-4));
  EXPECT_FALSE(testutil::all_close(gpu, ops::matmul(a, b), 1e-6, 1e-6));
}

TEST(MatmulPrecision, RoundingIsNearestEvenAndMatchesTheScalarConversions) {
  Generator gen(7);
  Tensor t = randn({5000}, gen);
  ops::scale_(t, 1000.0);
  const Tensor b = rounded(t, DType::kBFloat16), h = rounded(t, DType::kFloat16);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float v = t.data<float>()[i];
    ASSERT_EQ(b.data<float>()[i], kernels::bf16_to_float(kernels::float_to_bf16(v))) << v;
    ASSERT_EQ(h.data<float>()[i], kernels::half_to_float(kernels::float_to_half(v))) << v;
  }
  // 1 + 2^-8 is halfway between two bfloat16 values: it rounds to the even one, 1.
  const float halfway = 1.0f + std::ldexp(1.0f, -8);
  float out = 0;
  round_floats(&halfway, &out, 1, DType::kBFloat16);
  EXPECT_EQ(out, 1.0f);
  // float16 overflows to infinity past 65504, which is what loss scaling guards against.
  const float big = 70000.f;
  round_floats(&big, &out, 1, DType::kFloat16);
  EXPECT_TRUE(std::isinf(out));
}

TEST(MatmulPrecision, TheGuardIsPerThreadAndRestores) {
  EXPECT_EQ(matmul_precision(), DType::kFloat32);
  {
    MatmulPrecisionGuard outer(DType::kBFloat16);
    {
      MatmulPrecisionGuard inner(DType::kFloat16);
      EXPECT_EQ(matmul_precision(), DType::kFloat16);
    }
    EXPECT_EQ(matmul_precision(), DType::kBFloat16);
    DType other = DType::kBFloat16;
    std::thread([&] { other = matmul_precision(); }).join();
    EXPECT_EQ(other, DType::kFloat32);
  }
  EXPECT_EQ(matmul_precision(), DType::kFloat32);
  EXPECT_THROW(MatmulPrecisionGuard guard(DType::kFloat64), Error);
}

TEST(AllFinite, FindsAnInfOrNanAnywhereAndAcceptsSignedZeros) {
  Tensor t = zeros({10000});
  t.data<float>()[17] = -0.0f;
  t.data<float>()[9000] = std::numeric_limits<float>::max();
  EXPECT_TRUE(ops::all_finite(t));
  for (int64_t at : {0, 4095, 4096, 9999}) {
    for (float bad :
         {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
          std::numeric_limits<float>::quiet_NaN()}) {
      Tensor u = t.clone();
      u.data<float>()[at] = bad;
      EXPECT_FALSE(ops::all_finite(u)) << at << " " << bad;
    }
  }
}

}  // namespace
}  // namespace dtrain
