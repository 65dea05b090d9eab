// CUDA backend parity: ops on cuda:0 agree with the CPU. Skipped where no CUDA device is usable.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "dtrain/tensor/allocator.h"
#include "dtrain/tensor/cuda/cuda_backend.h"
#include "dtrain/tensor/dispatch.h"
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

// The CUDA binary and gather kernels run the coalesced map; its offsets must be the original's.
TEST(BroadcastCoalescing, EveryOutputReadsTheSameOffsetsWithFewerDims) {
  struct Case {
    Shape out, a, b;
    int expected_dims;
  };
  const std::vector<Case> cases = {
      {{4, 5, 6}, {4, 5, 6}, {4, 5, 6}, 1},  // equal shapes: one dim, strides 1 and 1
      {{4, 5, 6}, {4, 5, 6}, {}, 1},         // a scalar: stride 0
      {{64, 32}, {64, 32}, {32}, 2},         // a bias row
      {{3, 1, 4, 5}, {3, 1, 4, 5}, {1, 1, 4, 5}, 2},
      {{2, 3, 4, 5}, {2, 1, 4, 1}, {1, 3, 1, 5}, 4},
      {{6, 1, 7}, {6, 1, 1}, {1, 1, 7}, 2},
      {{1, 1}, {1, 1}, {1}, 0}};
  for (const Case& c : cases) {
    const kernels::BroadcastIndex full = detail::broadcast_index(c.out, c.a, c.b);
    const kernels::BroadcastIndex merged = kernels::coalesce(full);
    EXPECT_EQ(merged.ndim, c.expected_dims) << shape_str(c.a) << " with " << shape_str(c.b);
    for (int64_t i = 0; i < shape_numel(c.out); ++i) {
      int64_t a0, b0, a1, b1;
      full.offsets(i, a0, b0);
      merged.offsets(i, a1, b1);
      ASSERT_EQ(a0, a1) << shape_str(c.a) << " with " << shape_str(c.b) << " at " << i;
      ASSERT_EQ(b0, b1) << shape_str(c.a) << " with " << shape_str(c.b) << " at " << i;
    }
    EXPECT_TRUE(kernels::fits_32_bits(merged, shape_numel(c.out)));
  }
  kernels::BroadcastIndex big;  // [2, 2^29] reading every other 2^29 block of its source
  big.ndim = 2;
  big.shape[0] = 2;
  big.shape[1] = int64_t{1} << 29;
  big.a_stride[0] = int64_t{1} << 30;
  big.a_stride[1] = 1;
  EXPECT_TRUE(kernels::fits_32_bits(big, int64_t{1} << 30));
  big.a_stride[0] = int64_t{1} << 31;  // the last offset passes 2^31
  EXPECT_FALSE(kernels::fits_32_bits(big, int64_t{1} << 30));
  big.a_stride[0] = 0;
  EXPECT_FALSE(kernels::fits_32_bits(big, int64_t{1} << 31));  // so does the element count
}

TEST_F(Cuda, BinaryOpsOnEveryBroadcastPatternMatchCpuBitForBit) {
  struct Case {
    Shape a, b;
  };
  const std::vector<Case> cases = {{{1000, 1000}, {1000, 1000}}, {{1000, 1000}, {}},
                                   {{64, 1024}, {1024}},         {{64, 32, 28, 28}, {1, 32, 1, 1}},
                                   {{2, 1, 4, 5}, {1, 3, 1, 5}}, {{7}, {5, 1}}};
  for (const Case& c : cases) {
    Tensor a = random_tensor(c.a, 60), b = random_tensor(c.b, 61, 0.5, 1.5);
    for (Binary op :
         {Binary::kAdd, Binary::kMul, Binary::kDiv, Binary::kReluBackward, Binary::kGt}) {
      EXPECT_TRUE(bit_equal(cpu(ops::binary(op, gpu(a), gpu(b))), ops::binary(op, a, b)))
          << shape_str(c.a) << " with " << shape_str(c.b) << " op " << static_cast<int>(op);
    }
    if (ops::broadcast_shapes(c.a, c.b, "add") == c.a) {
      Tensor in_place = gpu(a);
      ops::binary_(Binary::kSub, in_place, gpu(b));
      EXPECT_TRUE(bit_equal(cpu(in_place), ops::binary(Binary::kSub, a, b)))
          << shape_str(c.a) << " with " << shape_str(c.b);
    }
  }
}

TEST_F(Cuda, ExpandAndPermuteGatherTheCpusElements) {
  Tensor bias = random_tensor({1024}, 62);
  EXPECT_TRUE(bit_equal(cpu(ops::expand(gpu(bias), {64, 1024})), ops::expand(bias, {64, 1024})));
  Tensor x = random_tensor({8, 16, 12, 10}, 63);
  for (const std::vector<int64_t>& perm :
       {std::vector<int64_t>{0, 2, 3, 1}, {3, 2, 1, 0}, {1, 0, 2, 3}}) {
    EXPECT_TRUE(bit_equal(cpu(ops::permute(gpu(x), perm)), ops::permute(x, perm)))
        << perm[0] << perm[1] << perm[2] << perm[3];
  }
}

TEST_F(Cuda, ScaleInPlaceMatchesCpuOnAViewAndAllocatesNothing) {
  Tensor x = random_tensor({1000, 37}, 70);
  Tensor on_gpu = gpu(x);
  // Rows 100..599 as a view with a storage offset; the rows around it must not change.
  const size_t row_bytes = 37 * sizeof(float);
  Tensor middle(on_gpu.storage(), on_gpu.storage_offset_bytes() + 100 * row_bytes, {500, 37},
                DType::kFloat32);
  const uint64_t allocs_before = allocator_for(Device::cuda(0)).stats().allocs;
  ops::scale_(middle, -1.75);
  EXPECT_EQ(allocator_for(Device::cuda(0)).stats().allocs, allocs_before)
      << "scale_ on CUDA allocated a temporary";
  Tensor expected = x.clone();
  Tensor expected_middle(expected.storage(), 100 * row_bytes, {500, 37}, DType::kFloat32);
  ops::scale_(expected_middle, -1.75);
  EXPECT_TRUE(bit_equal(cpu(on_gpu), expected));
}

TEST_F(Cuda, SoftmaxFamilyOnLongAndShortLinesMatchesCpu) {
  // [300, 1000] along dim 1: a block per row; [300, 10]: a thread per row; dim 0: strided lines.
  struct Case {
    Shape shape;
    int64_t dim;
  };
  for (const Case& c : {Case{{300, 1000}, 1}, Case{{300, 10}, 1}, Case{{40, 300}, 0}}) {
    Tensor x = random_tensor(c.shape, 80, -4.0, 4.0), gy = random_tensor(c.shape, 81);
    const std::string what = shape_str(c.shape) + " dim " + std::to_string(c.dim);
    Tensor y = ops::softmax(x, c.dim), ly = ops::log_softmax(x, c.dim);
    Tensor y_gpu = ops::softmax(gpu(x), c.dim), ly_gpu = ops::log_softmax(gpu(x), c.dim);
    EXPECT_TRUE(all_close(cpu(y_gpu), y, 1e-5, 1e-7)) << what;
    EXPECT_TRUE(all_close(cpu(ly_gpu), ly, 1e-5, 1e-6)) << what;
    EXPECT_TRUE(all_close(cpu(ops::softmax_backward(y_gpu, gpu(gy), c.dim)),
                          ops::softmax_backward(y, gy, c.dim), 1e-5, 1e-6))
        << what;
    EXPECT_TRUE(all_close(cpu(ops::log_softmax_backward(ly_gpu, gpu(gy), c.dim)),
                          ops::log_softmax_backward(ly, gy, c.dim), 1e-5, 1e-5))
        << what;
    EXPECT_TRUE(bit_equal(cpu(ops::softmax(gpu(x), c.dim)), cpu(y_gpu))) << what;
  }
}

TEST_F(Cuda, CrossEntropyOverManyClassesMatchesCpu) {
  for (int64_t classes : {10, 1000}) {
    Tensor logits = random_tensor({128, classes}, 90, -3.0, 3.0);
    std::vector<int64_t> labels(128);
    for (size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<int64_t>((i * 37) % classes);
    Tensor targets = from_vector<int64_t>(labels, {128});
    for (double smoothing : {0.0, 0.1}) {
      auto [loss, probs] = ops::softmax_cross_entropy(logits, targets, smoothing);
      auto [loss_gpu, probs_gpu] = ops::softmax_cross_entropy(gpu(logits), gpu(targets), smoothing);
      EXPECT_TRUE(all_close(cpu(loss_gpu), loss, 1e-5, 1e-6))
          << classes << " classes, smoothing " << smoothing;
      EXPECT_TRUE(all_close(cpu(probs_gpu), probs, 1e-5, 1e-7))
          << classes << " classes, smoothing " << smoothing;
    }
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
