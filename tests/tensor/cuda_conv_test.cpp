// Convolution on CUDA against the CPU, through cuDNN and through its im2col + cuBLAS fallback,
// batched matmul on CUDA, and the host-side parts of the cuDNN path (the DTRAIN_CUDNN switch, the
// dlopen loader, the algorithm-cache key). The CUDA suites skip where no device is usable.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <string>

#include "dtrain/tensor/cuda/cuda_backend.h"
#include "dtrain/tensor/cuda/cuda_conv2d.h"
#include "dtrain/tensor/cuda/cudnn_conv.h"
#include "dtrain/tensor/ops.h"
#include "reference.h"
#include "testutil.h"

namespace dtrain {
namespace {

using testref::error_message;
using testref::random_tensor;
using testutil::all_close;
using testutil::bit_equal;

// ---- host-side logic (no GPU needed) -----------------------------------------------------------

TEST(CudnnSwitch, ParsesDtrainCudnn) {
  EXPECT_TRUE(cuda::parse_cudnn_env(nullptr));
  EXPECT_TRUE(cuda::parse_cudnn_env(""));
  EXPECT_TRUE(cuda::parse_cudnn_env("1"));
  EXPECT_FALSE(cuda::parse_cudnn_env("0"));
  for (const char* bad : {"yes", "off", " 0", "2"}) {
    const std::string msg = error_message([bad] { cuda::parse_cudnn_env(bad); });
    EXPECT_NE(msg.find("DTRAIN_CUDNN='" + std::string(bad) + "'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("expected 1"), std::string::npos) << msg;
  }
}

TEST(CudnnSwitch, SetCudnnAllowedOverridesTheEnvironment) {
  const bool saved = cuda::cudnn_allowed();
  cuda::set_cudnn_allowed(false);
  EXPECT_FALSE(cuda::cudnn_allowed());
  cuda::set_cudnn_allowed(true);
  EXPECT_TRUE(cuda::cudnn_allowed());
  cuda::set_cudnn_allowed(saved);
}

// scripts/gpu_check.sh runs this binary's CudaConv tests a second time with DTRAIN_CUDNN=0.
TEST(CudnnSwitch, EnvironmentZeroKeepsConvolutionsOffCudnn) {
  const char* env = std::getenv("DTRAIN_CUDNN");
  if (env == nullptr || std::string(env) != "0") {
    GTEST_SKIP() << "runs with DTRAIN_CUDNN=0 in the environment (scripts/gpu_check.sh sets it)";
  }
  EXPECT_FALSE(cuda::cudnn_allowed());
}

TEST(CudnnLoader, ReportsDlerrorOfEveryNameWhenNoneLoads) {
  const cuda::SharedLibrary lib =
      cuda::open_shared_library({"libdtrain-absent-one.so.9", "libdtrain-absent-two.so"});
  EXPECT_EQ(lib.handle, nullptr);
  EXPECT_TRUE(lib.name.empty());
  EXPECT_NE(lib.error.find("libdtrain-absent-one.so.9"), std::string::npos) << lib.error;
  EXPECT_NE(lib.error.find("libdtrain-absent-two.so"), std::string::npos) << lib.error;
}

TEST(CudnnLoader, OpensTheFirstNameThatLoads) {
  const cuda::SharedLibrary lib = cuda::open_shared_library({"libdtrain-absent.so", "libc.so.6"});
  EXPECT_NE(lib.handle, nullptr) << lib.error;
  EXPECT_EQ(lib.name, "libc.so.6");
  EXPECT_TRUE(lib.error.empty()) << lib.error;
}

// Loading and resolving needs no GPU: this checks every entry point name against the installed
// library.
TEST(CudnnLoader, ResolvesEveryEntryPointWhereCudnnIsInstalled) {
#if defined(DTRAIN_HAS_CUDA)
  const cuda::SharedLibrary probe = cuda::open_shared_library({"libcudnn.so.9", "libcudnn.so"});
  if (probe.handle == nullptr) GTEST_SKIP() << "cuDNN is not installed here: " << probe.error;
  EXPECT_TRUE(cuda::cudnn_loaded()) << cuda::cudnn_unavailable_reason();
  EXPECT_EQ(cuda::cudnn_unavailable_reason(), "");
#else
  EXPECT_FALSE(cuda::cudnn_loaded());
  EXPECT_NE(cuda::cudnn_unavailable_reason().find("without CUDA"), std::string::npos);
#endif
}

TEST(ConvAlgoKey, EveryFieldTellsKeysApart) {
  const cuda::ConvAlgoKey base{0, cuda::ConvPass::kForward, {64, 32, 14, 14, 64, 5, 5, 1, 2}};
  const cuda::ConvAlgoKeyHash hash;
  EXPECT_EQ(hash(base), hash(cuda::ConvAlgoKey(base)));
  std::vector<cuda::ConvAlgoKey> changed(11, base);
  changed[0].device = 1;
  changed[1].pass = cuda::ConvPass::kBackwardFilter;
  changed[2].shape.n = 63;
  changed[3].shape.c = 31;
  changed[4].shape.h = 15;
  changed[5].shape.w = 15;
  changed[6].shape.o = 65;
  changed[7].shape.kh = 3;
  changed[8].shape.kw = 3;
  changed[9].shape.stride = 2;
  changed[10].shape.padding = 1;
  for (size_t i = 0; i < changed.size(); ++i) {
    EXPECT_FALSE(changed[i] == base) << "field " << i;
    EXPECT_NE(hash(changed[i]), hash(base)) << "field " << i;
  }
}

TEST(ConvAlgoKey, ShapeOutputSizeMatchesConv2d) {
  for (const cuda::ConvShape& s :
       {cuda::ConvShape{1, 2, 9, 7, 3, 3, 2, 2, 1}, cuda::ConvShape{2, 1, 28, 28, 4, 5, 5, 1, 2},
        cuda::ConvShape{1, 1, 10, 10, 1, 3, 3, 3, 0}}) {
    const Tensor y =
        ops::conv2d(random_tensor({s.n, s.c, s.h, s.w}, 1),
                    random_tensor({s.o, s.c, s.kh, s.kw}, 2), Tensor(), {s.stride, s.padding});
    EXPECT_EQ(y.shape(), (Shape{s.n, s.o, s.oh(), s.ow()}));
  }
}

// ---- CUDA against the CPU -----------------------------------------------------------------------

struct ConvCase {
  int64_t n, c, h, w, o, kh, kw, stride, padding;
};

std::string describe(const ConvCase& c) {
  std::ostringstream os;
  os << "x [" << c.n << ", " << c.c << ", " << c.h << ", " << c.w << "] w [" << c.o << ", " << c.c
     << ", " << c.kh << ", " << c.kw << "] stride " << c.stride << " padding " << c.padding;
  return os.str();
}

std::vector<ConvCase> cuda_conv_cases() {
  return {
      {64, 1, 28, 28, 32, 5, 5, 1, 2},   // the CNN's first layer
      {64, 32, 14, 14, 64, 5, 5, 1, 2},  // the CNN's second layer
      {3, 3, 9, 11, 4, 3, 3, 2, 0},      // stride 2, padding 0, odd sizes
      {1, 4, 7, 7, 5, 3, 3, 1, 1},       // batch 1, padding 1
      {1, 2, 10, 9, 3, 3, 3, 2, 1},      // batch 1, stride 2, padding 1
      {3, 8, 5, 5, 6, 1, 1, 1, 0},       // 1x1
      {3, 3, 8, 6, 2, 3, 2, 2, 1},       // non-square kernel with stride
      {3, 2, 10, 10, 3, 3, 3, 3, 1},     // stride leaves input rows uncovered
  };
}

int64_t out_size(int64_t in, int64_t k, const ConvCase& c) {
  return (in + 2 * c.padding - k) / c.stride + 1;
}

/// float32 agreement at 1e-5, relative to each value and to the largest one (sums of thousands of
/// terms in two different orders can cancel to near zero).
::testing::AssertionResult close_fp32(const Tensor& actual, const Tensor& expected) {
  double largest = 0;
  for (double v : expected.to_vector<double>()) largest = std::max(largest, std::abs(v));
  return all_close(actual, expected, 1e-5, 1e-5 * largest);
}

// The im2col path's arithmetic (one batched GEMM and col2im for dx; batch-major permutes and one
// GEMM for dw) runs on CPU tensors too: checked here against oneDNN without a GPU.
TEST(ConvIm2colPath, MatchesOneDnnOnTheCpu) {
  uint64_t seed = 700;
  for (ConvCase c : cuda_conv_cases()) {
    c.n = std::min<int64_t>(c.n, 4);  // the CNN's shapes at a smaller batch keep this quick
    const Tensor x = random_tensor({c.n, c.c, c.h, c.w}, ++seed);
    const Tensor w = random_tensor({c.o, c.c, c.kh, c.kw}, ++seed);
    const Tensor b = random_tensor({c.o}, ++seed);
    const Tensor gy =
        random_tensor({c.n, c.o, out_size(c.h, c.kh, c), out_size(c.w, c.kw, c)}, ++seed);
    const ops::Conv2dArgs args{c.stride, c.padding};
    EXPECT_TRUE(close_fp32(ops::conv2d_cuda(x, w, b, args), ops::conv2d(x, w, b, args)))
        << describe(c);
    EXPECT_TRUE(close_fp32(ops::conv2d_backward_input_cuda(gy, w, x.shape(), args),
                           ops::conv2d_backward_input(gy, w, x.shape(), args)))
        << describe(c);
    EXPECT_TRUE(close_fp32(ops::conv2d_backward_weight_cuda(gy, x, w.shape(), args),
                           ops::conv2d_backward_weight(gy, x, w.shape(), args)))
        << describe(c);
  }
}

enum class ConvPath { kCudnn, kIm2colCublas };
void PrintTo(ConvPath path, std::ostream* os) {
  *os << (path == ConvPath::kCudnn ? "cuDNN" : "im2col + cuBLAS");
}

class CudaConv : public ::testing::TestWithParam<ConvPath> {
 protected:
  void SetUp() override {
    if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
    if (GetParam() == ConvPath::kCudnn && !cuda::cudnn_loaded()) {
      GTEST_SKIP() << "cuDNN does not load: " << cuda::cudnn_unavailable_reason();
    }
    saved_allowed_ = cuda::cudnn_allowed();
    cuda::set_cudnn_allowed(GetParam() == ConvPath::kCudnn);
    restore_ = true;
  }
  void TearDown() override {
    if (restore_) cuda::set_cudnn_allowed(saved_allowed_);
  }
  static Tensor gpu(const Tensor& t) { return to_device(t, Device::cuda(0)); }
  static Tensor cpu(const Tensor& t) { return to_device(t, Device::cpu()); }

 private:
  bool saved_allowed_ = true;
  bool restore_ = false;
};

TEST_P(CudaConv, ForwardWithAndWithoutBiasMatchesCpu) {
  uint64_t seed = 100;
  for (const ConvCase& c : cuda_conv_cases()) {
    const Tensor x = random_tensor({c.n, c.c, c.h, c.w}, ++seed);
    const Tensor w = random_tensor({c.o, c.c, c.kh, c.kw}, ++seed);
    const Tensor b = random_tensor({c.o}, ++seed);
    const ops::Conv2dArgs args{c.stride, c.padding};
    const Tensor y = ops::conv2d(gpu(x), gpu(w), gpu(b), args);
    EXPECT_EQ(y.device(), Device::cuda(0));
    EXPECT_TRUE(close_fp32(cpu(y), ops::conv2d(x, w, b, args))) << describe(c);
    EXPECT_TRUE(close_fp32(cpu(ops::conv2d(gpu(x), gpu(w), Tensor(), args)),
                           ops::conv2d(x, w, Tensor(), args)))
        << describe(c) << ", no bias";
  }
}

TEST_P(CudaConv, BackwardDataMatchesCpu) {
  uint64_t seed = 200;
  for (const ConvCase& c : cuda_conv_cases()) {
    const Shape x_shape{c.n, c.c, c.h, c.w};
    const Tensor w = random_tensor({c.o, c.c, c.kh, c.kw}, ++seed);
    const Tensor gy =
        random_tensor({c.n, c.o, out_size(c.h, c.kh, c), out_size(c.w, c.kw, c)}, ++seed);
    const ops::Conv2dArgs args{c.stride, c.padding};
    const Tensor dx = ops::conv2d_backward_input(gpu(gy), gpu(w), x_shape, args);
    EXPECT_EQ(dx.device(), Device::cuda(0));
    EXPECT_TRUE(close_fp32(cpu(dx), ops::conv2d_backward_input(gy, w, x_shape, args)))
        << describe(c);
  }
}

TEST_P(CudaConv, BackwardWeightMatchesCpu) {
  uint64_t seed = 300;
  for (const ConvCase& c : cuda_conv_cases()) {
    const Shape w_shape{c.o, c.c, c.kh, c.kw};
    const Tensor x = random_tensor({c.n, c.c, c.h, c.w}, ++seed);
    const Tensor gy =
        random_tensor({c.n, c.o, out_size(c.h, c.kh, c), out_size(c.w, c.kw, c)}, ++seed);
    const ops::Conv2dArgs args{c.stride, c.padding};
    const Tensor dw = ops::conv2d_backward_weight(gpu(gy), gpu(x), w_shape, args);
    EXPECT_EQ(dw.device(), Device::cuda(0));
    EXPECT_TRUE(close_fp32(cpu(dw), ops::conv2d_backward_weight(gy, x, w_shape, args)))
        << describe(c);
  }
}

// The bias gradient as autograd's conv2d computes it: gy summed over batch and pixels.
TEST_P(CudaConv, BiasGradientMatchesCpu) {
  uint64_t seed = 400;
  for (const ConvCase& c : cuda_conv_cases()) {
    const Tensor gy =
        random_tensor({c.n, c.o, out_size(c.h, c.kh, c), out_size(c.w, c.kw, c)}, ++seed);
    EXPECT_TRUE(close_fp32(cpu(ops::sum(gpu(gy), {0, 2, 3})), ops::sum(gy, {0, 2, 3})))
        << describe(c);
  }
}

// Both paths pick deterministic algorithms: the same inputs give the same bits every time.
TEST_P(CudaConv, RepeatedPassesGiveIdenticalBits) {
  const ConvCase c{64, 32, 14, 14, 64, 5, 5, 1, 2};
  const Tensor x = gpu(random_tensor({c.n, c.c, c.h, c.w}, 500));
  const Tensor w = gpu(random_tensor({c.o, c.c, c.kh, c.kw}, 501));
  const Tensor gy = gpu(random_tensor({c.n, c.o, c.h, c.w}, 502));
  const ops::Conv2dArgs args{c.stride, c.padding};
  const Tensor y = cpu(ops::conv2d(x, w, Tensor(), args));
  const Tensor dx = cpu(ops::conv2d_backward_input(gy, w, x.shape(), args));
  const Tensor dw = cpu(ops::conv2d_backward_weight(gy, x, w.shape(), args));
  for (int run = 0; run < 3; ++run) {
    EXPECT_TRUE(bit_equal(cpu(ops::conv2d(x, w, Tensor(), args)), y)) << "run " << run;
    EXPECT_TRUE(bit_equal(cpu(ops::conv2d_backward_input(gy, w, x.shape(), args)), dx))
        << "run " << run;
    EXPECT_TRUE(bit_equal(cpu(ops::conv2d_backward_weight(gy, x, w.shape(), args)), dw))
        << "run " << run;
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, CudaConv,
                         ::testing::Values(ConvPath::kCudnn, ConvPath::kIm2colCublas),
                         [](const ::testing::TestParamInfo<ConvPath>& info) {
                           return info.param == ConvPath::kCudnn ? std::string("Cudnn")
                                                                 : std::string("Im2colCublas");
                         });

// matmul with a batched right operand: one strided-batched GEMM where each operand is a full batch
// or a single matrix, the per-matrix loop for other broadcasts.
TEST(CudaBatchedMatmul, MatchesCpuForEveryBatchLayout) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  struct Case {
    Shape a, b;
  };
  const std::vector<Case> cases = {
      {{5, 7, 9}, {5, 9, 4}},        // both batched
      {{7, 9}, {5, 9, 4}},           // one left matrix for every batch (convolution's shape)
      {{5, 7, 9}, {1, 9, 4}},        // one right matrix, kept 3-D
      {{2, 1, 7, 9}, {1, 3, 9, 4}},  // broadcast both ways: the per-matrix loop
  };
  uint64_t seed = 600;
  for (const Case& c : cases) {
    for (int t = 0; t < 4; ++t) {
      const bool ta = t & 1, tb = t & 2;
      Shape as = c.a, bs = c.b;
      if (ta) std::swap(as[as.size() - 1], as[as.size() - 2]);
      if (tb) std::swap(bs[bs.size() - 1], bs[bs.size() - 2]);
      const Tensor a = random_tensor(as, ++seed), b = random_tensor(bs, ++seed);
      const Tensor out =
          ops::matmul(to_device(a, Device::cuda(0)), to_device(b, Device::cuda(0)), ta, tb);
      EXPECT_EQ(out.device(), Device::cuda(0));
      EXPECT_TRUE(close_fp32(to_device(out, Device::cpu()), ops::matmul(a, b, ta, tb)))
          << shape_str(c.a) << " @ " << shape_str(c.b) << " trans_a " << ta << " trans_b " << tb;
    }
  }
}

}  // namespace
}  // namespace dtrain
