// CUDA backend parity: ops on cuda:0 agree with the CPU. Skipped where no CUDA device is usable.
#include <gtest/gtest.h>

#include "dtrain/tensor/cuda/cuda_backend.h"
#include "dtrain/tensor/ops.h"
#include "reference.h"
#include "testutil.h"

namespace dtrain {
namespace {

using kernels::Binary;
using kernels::Unary;
using testref::random_tensor;
using testutil::all_close;
using testutil::bit_equal;

class Cuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  }
  static Tensor gpu(const Tensor& t) { return to_device(t, Device::cuda(0)); }
  static Tensor cpu(const Tensor& t) { return to_device(t, Device::cpu()); }
};

TEST_F(Cuda, CopiesRoundTripBitExactly) {
  Tensor x = random_tensor({1000, 3}, 1);
  Tensor g = gpu(x);
  EXPECT_EQ(g.device(), Device::cuda(0));
  EXPECT_TRUE(bit_equal(cpu(g), x));
  EXPECT_EQ(g.to_vector<float>(), x.to_vector<float>());
}

TEST_F(Cuda, AddWithBroadcastingMatchesCpu) {
  Tensor a = random_tensor({64, 1, 128}, 2), b = random_tensor({1, 32, 128}, 3);
  Tensor out = ops::binary(Binary::kAdd, gpu(a), gpu(b));
  EXPECT_EQ(out.device(), Device::cuda(0));
  EXPECT_TRUE(bit_equal(cpu(out), ops::binary(Binary::kAdd, a, b)));
  Tensor lt = ops::binary(Binary::kLt, gpu(a), gpu(b));
  EXPECT_EQ(lt.dtype(), DType::kBool);
  EXPECT_TRUE(bit_equal(cpu(lt), ops::binary(Binary::kLt, a, b)));
}

TEST_F(Cuda, UnaryAndSumMatchCpu) {
  Tensor x = random_tensor({256, 300}, 4);
  EXPECT_TRUE(
      all_close(cpu(ops::unary(Unary::kTanh, gpu(x))), ops::unary(Unary::kTanh, x), 1e-6, 1e-6));
  for (int64_t dim : {0, 1}) {
    EXPECT_TRUE(all_close(cpu(ops::sum(gpu(x), {dim})), ops::sum(x, {dim}), 1e-5, 1e-5))
        << "dim " << dim;
  }
}

TEST_F(Cuda, FullSumOfMillionsMatchesTheCpusDoubleSumAndRepeatsBitForBit) {
  // Split over many blocks and added again in a second pass; float32 accumulates in double on
  // both sides, so the results agree far inside 1e-5.
  for (int64_t n : {int64_t{1} << 20, int64_t{3'000'017}}) {
    Tensor x = random_tensor({n}, 40 + n, 0.0, 1.0);
    Tensor on_gpu = ops::sum(gpu(x));
    EXPECT_TRUE(all_close(cpu(on_gpu), ops::sum(x), 1e-5, 0.0)) << "n " << n;
    EXPECT_TRUE(bit_equal(cpu(ops::sum(gpu(x))), cpu(on_gpu))) << "n " << n;
    EXPECT_TRUE(all_close(cpu(ops::mean(gpu(x))), ops::mean(x), 1e-5, 0.0)) << "n " << n;
  }
  Tensor x64 = random_tensor({1'000'003}, 45, -1.0, 2.0, DType::kFloat64);
  EXPECT_TRUE(all_close(cpu(ops::sum(gpu(x64))), ops::sum(x64), 1e-12, 1e-9));
}

TEST_F(Cuda, SumAlongEachRowShapeMatchesCpu) {
  struct Case {
    Shape shape;
    int64_t dim;
  };
  // Long rows split over blocks, a block per row, a thread per short row, strided columns.
  const std::vector<Case> cases = {{{3, 400'000}, 1}, {{2000, 700}, 1}, {{100'000, 7}, 1},
                                   {{300, 33}, 1},    {{5000, 40}, 0},  {{8, 1'200'000}, 1},
                                   {{4, 50, 60}, 1}};
  for (const Case& c : cases) {
    Tensor x = random_tensor(c.shape, 50 + c.dim, 0.0, 1.0);
    Tensor on_gpu = cpu(ops::sum(gpu(x), {c.dim}));
    EXPECT_TRUE(all_close(on_gpu, ops::sum(x, {c.dim}), 1e-5, 1e-6))
        << shape_str(c.shape) << " dim " << c.dim;
    EXPECT_TRUE(bit_equal(cpu(ops::sum(gpu(x), {c.dim})), on_gpu))
        << shape_str(c.shape) << " dim " << c.dim;
  }
}

TEST_F(Cuda, MatmulMatchesCpu) {
  for (int t = 0; t < 4; ++t) {
    const bool ta = t & 1, tb = t & 2;
    Tensor a = random_tensor(ta ? Shape{3, 65, 33} : Shape{3, 33, 65}, 10 + t);
    Tensor b = random_tensor(tb ? Shape{17, 65} : Shape{65, 17}, 20 + t);
    Tensor out = ops::matmul(gpu(a), gpu(b), ta, tb);
    EXPECT_EQ(out.device(), Device::cuda(0));
    EXPECT_TRUE(all_close(cpu(out), ops::matmul(a, b, ta, tb), 1e-4, 1e-4))
        << "trans_a " << ta << " trans_b " << tb;
  }
}

TEST_F(Cuda, FillAndConvertMatchCpu) {
  Tensor f = full({1000}, 2.5, DType::kFloat32, Device::cuda(0));
  EXPECT_TRUE(bit_equal(cpu(f), full({1000}, 2.5)));
  Tensor x = random_tensor({1000}, 30, -100, 100);
  for (DType dtype : {DType::kFloat64, DType::kFloat16, DType::kBFloat16}) {
    EXPECT_TRUE(bit_equal(cpu(to_dtype(gpu(x), dtype)), to_dtype(x, dtype))) << dtype_name(dtype);
  }
}

}  // namespace
}  // namespace dtrain
