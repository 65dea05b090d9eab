// Layers on the parameters' device: batch norm's counter and optimiser state (host-side rules that
// run everywhere), and GPU cases that skip without a CUDA device: batch norm and cross-entropy on
// cuda:0 against the CPU, causal self-attention with dropout, resuming an optimiser there.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>

#include "dtrain/autograd/functions.h"
#include "dtrain/nn/attention.h"
#include "dtrain/nn/layers.h"
#include "dtrain/nn/optim.h"
#include "dtrain/tensor/cuda/cuda_backend.h"
#include "dtrain/tensor/ops.h"
#include "testutil.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;
using testutil::all_close;

TEST(BatchNormCounter, CountsTrainingForwardsExactlyFromAnyValue) {
  nn::BatchNorm2d bn(3);
  Generator gen(5);
  Tensor x = randn({4, 3, 2, 2}, gen);
  for (int i = 0; i < 3; ++i) bn.forward(x);
  EXPECT_EQ(bn.num_batches_tracked.item<int64_t>(), 3);
  bn.eval();
  bn.forward(x);
  EXPECT_EQ(bn.num_batches_tracked.item<int64_t>(), 3);
  // A resumed counter far beyond float32's exact integers still counts by one.
  const int64_t big = (int64_t{1} << 40) + 7;
  bn.num_batches_tracked.copy_(from_vector<int64_t>({big}, {}));
  bn.train();
  bn.forward(x);
  EXPECT_EQ(bn.num_batches_tracked.item<int64_t>(), big + 1);
  EXPECT_EQ(bn.num_batches_tracked.dtype(), DType::kInt64);
}

TEST(OptimizerDevices, StateOnAnotherDeviceThanItsParameterIsNamedWithTheFix) {
  std::vector<float> host(3, 0.f);
  auto storage = std::make_shared<Storage>(host.data(), host.size() * sizeof(float),
                                           Device::cuda(0), std::make_shared<int>(0));
  Tensor on_gpu(storage, 0, {3}, DType::kFloat32);  // claims cuda:0; only its device is read
  Tensor p = zeros({3});
  p.set_name("fc.weight");
  Tensor g = ones({3});
  kernels::SgdParams s{};
  s.lr = 0.1f;
  s.momentum = 0.9f;
  try {
    ops::sgd_update_(p, g, on_gpu, s);
    FAIL() << "a momentum buffer on cuda:0 for a cpu parameter was accepted";
  } catch (const ValueError& e) {
    EXPECT_THAT(e.message(), HasSubstr("'fc.weight'"));
    EXPECT_THAT(e.message(), HasSubstr("on cuda:0"));
    EXPECT_THAT(e.message(), HasSubstr("create the optimiser after moving the model"));
  }
}

class CudaLayers : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  }
  static Tensor cpu(const Tensor& t) { return to_device(t, Device::cpu()); }
};

TEST_F(CudaLayers, BatchNormTrainingAndEvalMatchTheCpuAndCountOnTheDevice) {
  nn::BatchNorm2d host(4);
  auto gpu_module = host.clone(Device::cuda(0));
  auto& gpu = dynamic_cast<nn::BatchNorm2d&>(*gpu_module);
  Generator gen(11);
  Tensor x = randn({8, 4, 5, 5}, gen);
  Tensor w = randn({8, 4, 5, 5}, gen);  // a loss that weighs every output differently
  Tensor xh = x.detach().set_requires_grad(true);
  Tensor xg = to_device(x, Device::cuda(0)).set_requires_grad(true);

  Tensor yh = host.forward(xh);
  Tensor yg = gpu.forward(xg);
  EXPECT_TRUE(all_close(cpu(yg), yh, 1e-5, 1e-5));
  sum(yh * w).backward();
  sum(yg * to_device(w, Device::cuda(0))).backward();
  EXPECT_TRUE(all_close(cpu(xg.grad()), xh.grad(), 1e-4, 1e-5));
  EXPECT_TRUE(all_close(cpu(gpu.weight.grad()), host.weight.grad(), 1e-4, 1e-5));
  EXPECT_TRUE(all_close(cpu(gpu.bias.grad()), host.bias.grad(), 1e-4, 1e-5));
  EXPECT_TRUE(all_close(cpu(gpu.running_mean), host.running_mean, 1e-5, 1e-6));
  EXPECT_TRUE(all_close(cpu(gpu.running_var), host.running_var, 1e-5, 1e-6));
  EXPECT_EQ(gpu.num_batches_tracked.device(), Device::cuda(0));
  EXPECT_EQ(gpu.num_batches_tracked.item<int64_t>(), 1);

  host.eval();
  gpu.eval();
  Tensor eh = host.forward(x);
  Tensor eg = gpu.forward(to_device(x, Device::cuda(0)));
  EXPECT_TRUE(all_close(cpu(eg), eh, 1e-5, 1e-5));
  EXPECT_EQ(gpu.num_batches_tracked.item<int64_t>(), 1);
}

TEST_F(CudaLayers, CausalSelfAttentionWithDropoutMatchesTheCpu) {
  // The attention node's device path (mask added, full softmax, dropout mask from the same Philox
  // stream, products with transposed operands) against the CPU's causal rows.
  Generator gen(12);
  nn::CausalSelfAttention host(16, 4, 0.3, /*seed=*/5, gen);
  auto gpu_module = host.clone(Device::cuda(0));
  auto& gpu = dynamic_cast<nn::CausalSelfAttention&>(*gpu_module);
  Tensor x = randn({3, 9, 16}, gen);
  Tensor w = randn({3, 9, 16}, gen);
  Tensor xh = x.detach().set_requires_grad(true);
  Tensor xg = to_device(x, Device::cuda(0)).set_requires_grad(true);
  Tensor yh = host.forward(xh);
  Tensor yg = gpu.forward(xg);
  EXPECT_TRUE(all_close(cpu(yg), yh, 1e-4, 1e-5));
  sum(yh * w).backward();
  sum(yg * to_device(w, Device::cuda(0))).backward();
  EXPECT_TRUE(all_close(cpu(xg.grad()), xh.grad(), 1e-4, 1e-5));
  const auto ph = host.named_parameters(), pg = gpu.named_parameters();
  ASSERT_EQ(ph.size(), pg.size());
  for (size_t i = 0; i < ph.size(); ++i) {
    EXPECT_TRUE(all_close(cpu(pg[i].second.grad()), ph[i].second.grad(), 1e-4, 1e-5))
        << ph[i].first;
  }
}

TEST_F(CudaLayers, BatchNormOverAFullCnnBatchMatchesTheCpuAndRepeatsBitForBit) {
  // [64, 32, 28, 28]: the CNN's first batch norm; each channel sums 50,176 values per pass.
  Generator gen(21);
  const Device dev = Device::cuda(0);
  Tensor x = randn({64, 32, 28, 28}, gen);
  ops::scale_(x, 3.0);
  x = ops::unary(kernels::Unary::kAddScalar, x, {0.5});  // an offset mean, like real activations
  Tensor gy = randn({64, 32, 28, 28}, gen);
  Tensor w = randn({32}, gen), b = randn({32}, gen);
  Tensor rm_cpu = zeros({32}), rv_cpu = ones({32});
  Tensor rm_gpu = to_device(rm_cpu, dev), rv_gpu = to_device(rv_cpu, dev);
  const Tensor xg = to_device(x, dev), gyg = to_device(gy, dev), wg = to_device(w, dev),
               bg = to_device(b, dev);

  auto [y_cpu, st_cpu] = ops::batch_norm(x, w, b, rm_cpu, rv_cpu, true, 0.1, 1e-5);
  auto [y_gpu, st_gpu] = ops::batch_norm(xg, wg, bg, rm_gpu, rv_gpu, true, 0.1, 1e-5);
  EXPECT_TRUE(all_close(cpu(y_gpu), y_cpu, 1e-5, 1e-5));
  EXPECT_TRUE(all_close(cpu(st_gpu.mean), st_cpu.mean, 1e-5, 1e-6));
  EXPECT_TRUE(all_close(cpu(st_gpu.rstd), st_cpu.rstd, 1e-5, 1e-6));
  EXPECT_TRUE(all_close(cpu(rm_gpu), rm_cpu, 1e-5, 1e-6));
  EXPECT_TRUE(all_close(cpu(rv_gpu), rv_cpu, 1e-5, 1e-6));

  const auto grads_cpu = ops::batch_norm_backward(gy, x, st_cpu, w, true);
  const auto grads_gpu = ops::batch_norm_backward(gyg, xg, st_gpu, wg, true);
  ASSERT_EQ(grads_gpu.size(), 3u);
  EXPECT_TRUE(all_close(cpu(grads_gpu[0]), grads_cpu[0], 1e-5, 1e-5)) << "dx";
  // dw and db are sums of 50,176 products (magnitude ~200): the CPU's float row sums and the
  // GPU's double tree differ in their last bits.
  EXPECT_TRUE(all_close(cpu(grads_gpu[1]), grads_cpu[1], 1e-5, 1e-4)) << "dw";
  EXPECT_TRUE(all_close(cpu(grads_gpu[2]), grads_cpu[2], 1e-5, 1e-4)) << "db";

  // Fixed-order reductions: the same inputs give the same bits.
  Tensor rm2 = to_device(zeros({32}), dev), rv2 = to_device(ones({32}), dev);
  auto [y_again, st_again] = ops::batch_norm(xg, wg, bg, rm2, rv2, true, 0.1, 1e-5);
  EXPECT_TRUE(testutil::bit_equal(cpu(y_again), cpu(y_gpu)));
  EXPECT_TRUE(testutil::bit_equal(cpu(rv2), cpu(rv_gpu)));
  const auto grads_again = ops::batch_norm_backward(gyg, xg, st_again, wg, true);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(testutil::bit_equal(cpu(grads_again[i]), cpu(grads_gpu[i]))) << "gradient " << i;
  }

  // Evaluation with the running statistics, and its backward.
  auto [e_cpu, est_cpu] = ops::batch_norm(x, w, b, rm_cpu, rv_cpu, false, 0.1, 1e-5);
  auto [e_gpu, est_gpu] = ops::batch_norm(xg, wg, bg, rm_gpu, rv_gpu, false, 0.1, 1e-5);
  EXPECT_TRUE(all_close(cpu(e_gpu), e_cpu, 1e-5, 1e-5));
  const auto eval_cpu = ops::batch_norm_backward(gy, x, est_cpu, w, false);
  const auto eval_gpu = ops::batch_norm_backward(gyg, xg, est_gpu, wg, false);
  EXPECT_TRUE(all_close(cpu(eval_gpu[0]), eval_cpu[0], 1e-5, 1e-5)) << "eval dx";
}

TEST_F(CudaLayers, BatchNormOnOddPlaneSizesAndWithoutAffineMatchesTheCpu) {
  // Planes smaller and larger than a block, not multiples of 32, one sample.
  for (const Shape& shape : {Shape{5, 3, 7, 7}, Shape{1, 2, 33, 31}, Shape{3, 4, 1, 2}}) {
    Generator gen(22);
    Tensor x = randn(shape, gen), gy = randn(shape, gen);
    const Device dev = Device::cuda(0);
    auto [y_cpu, st_cpu] =
        ops::batch_norm(x, Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5);
    auto [y_gpu, st_gpu] =
        ops::batch_norm(to_device(x, dev), Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5);
    EXPECT_TRUE(all_close(cpu(y_gpu), y_cpu, 1e-5, 1e-5)) << shape_str(shape);
    const auto g_cpu = ops::batch_norm_backward(gy, x, st_cpu, Tensor(), true);
    const auto g_gpu =
        ops::batch_norm_backward(to_device(gy, dev), to_device(x, dev), st_gpu, Tensor(), true);
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_TRUE(all_close(cpu(g_gpu[i]), g_cpu[i], 1e-5, 1e-5))
          << shape_str(shape) << " gradient " << i;
    }
  }
}

TEST_F(CudaLayers, CrossEntropyForwardAndBackwardMatchTheCpuWithoutWaitingForTheDevice) {
  const Device dev = Device::cuda(0);
  Generator gen(23);
  Tensor logits = randn({64, 10}, gen);
  std::vector<int64_t> labels(64);
  for (size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<int64_t>((i * 7) % 10);
  const Tensor targets = from_vector<int64_t>(labels, {64});
  const Tensor targets_gpu = to_device(targets, dev);
  Tensor lh = logits.detach().set_requires_grad(true);
  Tensor lg = to_device(logits, dev).set_requires_grad(true);

  Tensor loss_cpu = cross_entropy(lh, targets, 0.1);
  loss_cpu.backward();
  const auto step_on_gpu = [&] {
    lg.set_grad(Tensor());
    Tensor loss = cross_entropy(lg, targets_gpu, 0.1);
    loss.backward();
    return loss;
  };
  step_on_gpu();  // the allocator's blocks and the check's host slot exist from here on
  cuda::synchronize(0);

  // With the default stream held, a call that waited for the device would wait for the hold's
  // limit; the forward and backward pass must come back long before it.
  const auto limit = std::chrono::seconds(60);
  Tensor loss_gpu;
  std::chrono::steady_clock::duration queued{};
  {
    cuda::DefaultStreamHold hold(0, limit);
    const auto start = std::chrono::steady_clock::now();
    loss_gpu = step_on_gpu();
    queued = std::chrono::steady_clock::now() - start;
  }
  EXPECT_LT(queued, limit / 2) << "the cross-entropy step waited for the device";
  EXPECT_TRUE(all_close(cpu(loss_gpu), loss_cpu, 1e-5, 1e-6));
  EXPECT_TRUE(all_close(cpu(lg.grad()), lh.grad(), 1e-5, 1e-7));
}

TEST_F(CudaLayers, ABadTargetOnTheDeviceIsReportedByTheNextSynchronize) {
  const Device dev = Device::cuda(0);
  Generator gen(24);
  Tensor logits = to_device(randn({6, 10}, gen), dev);
  const Tensor bad = from_vector<int64_t>({1, 2, 3, 10, 4, -1}, {6}, dev);
  cuda::synchronize(0);  // nothing recorded before
  auto [loss, probs] = ops::softmax_cross_entropy(logits, bad, 0.0);
  EXPECT_TRUE(std::isfinite(loss.item<float>())) << "a bad target must not be read out of bounds";
  try {
    cuda::synchronize(0);
    FAIL() << "target 10 of 10 classes was accepted";
  } catch (const ValueError& e) {
    EXPECT_THAT(e.message(), HasSubstr("cross_entropy: target 10 at position 3"));
    EXPECT_THAT(e.message(), HasSubstr("[0, 10)"));
  }
  // Reported once; good targets then pass.
  const Tensor good = from_vector<int64_t>({1, 2, 3, 9, 4, 0}, {6}, dev);
  ops::softmax_cross_entropy(logits, good, 0.0);
  EXPECT_NO_THROW(cuda::synchronize(0));
  // The CPU still refuses at once.
  EXPECT_THROW(ops::softmax_cross_entropy(cpu(logits), cpu(bad), 0.0), ValueError);
}

TEST_F(CudaLayers, ResumedOptimiserStateMovesToTheParametersDeviceAndStepsLikeTheCpu) {
  auto run = [](Device device, const nn::OptimizerState* resume, nn::OptimizerState* save) {
    Generator gen(3);
    Tensor p = to_device(randn({5, 4}, gen), device).set_requires_grad(true);
    Tensor g = to_device(randn({5, 4}, gen), device);
    nn::SGD sgd({p}, nn::SgdOptions{0.1, 0.9});
    if (resume != nullptr) sgd.load_state_dict(*resume);
    p.set_grad(g);
    sgd.step();
    if (save != nullptr) {
      *save = sgd.state_dict();
      for (auto& [k, t] : save->tensors) t = to_device(t, Device::cpu());  // as a checkpoint holds
    }
    return to_device(p.detach(), Device::cpu());
  };
  nn::OptimizerState state;
  run(Device::cpu(), nullptr, &state);
  ASSERT_FALSE(state.tensors.empty());
  const Tensor on_cpu = run(Device::cpu(), &state, nullptr);
  const Tensor on_gpu = run(Device::cuda(0), &state, nullptr);
  EXPECT_TRUE(all_close(on_gpu, on_cpu, 1e-6, 1e-6));
}

}  // namespace
}  // namespace dtrain
