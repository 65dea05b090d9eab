// Micro-benchmarks of the foundation: GEMM through dtrain against a direct dnnl_sgemm call (also
// at the char transformer's shapes, and its attention's batched products), conv2d forward +
// backward at the CNN's layer shapes, elementwise bandwidth against memcpy, and one MLP
// 784-256-128-10 training step. Run: build/bench/step_bench (see docs/performance.md).
#include <benchmark/benchmark.h>
#include <oneapi/dnnl/dnnl.h>

#include <cstring>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <vector>

#include "dtrain/nn/attention.h"
#include "dtrain/nn/layers.h"
#include "dtrain/nn/loss.h"
#include "dtrain/nn/optim.h"
#include "dtrain/tensor/allocator.h"
#include "dtrain/tensor/cpu/vec_math.h"
#include "dtrain/tensor/ops.h"
#include "dtrain/tensor/precision.h"

using namespace dtrain;

namespace {

void set_flops(benchmark::State& state, double flops_per_iter) {
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops_per_iter * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}

// ---- GEMM: C[M, N] = A[M, K] @ B[N, K]^T, the Linear forward layout ------------------------
void BM_GemmDirectDnnl(benchmark::State& state) {
  const int64_t m = state.range(0), k = state.range(1), n = state.range(2);
  Generator gen(1);
  Tensor a = randn({m, k}, gen), b = randn({n, k}, gen), c({m, n});
  for (auto _ : state) {
    dnnl_sgemm('N', 'T', m, n, k, 1.f, a.data<float>(), k, b.data<float>(), k, 0.f, c.data<float>(),
               n);
    benchmark::DoNotOptimize(c.data_ptr());
  }
  set_flops(state, 2.0 * m * n * k);
}

void BM_GemmDtrain(benchmark::State& state) {
  const int64_t m = state.range(0), k = state.range(1), n = state.range(2);
  Generator gen(1);
  Tensor a = randn({m, k}, gen), b = randn({n, k}, gen);
  for (auto _ : state) {
    Tensor c = ops::matmul(a, b, false, true);  // allocation included, as in a training step
    benchmark::DoNotOptimize(c.data_ptr());
  }
  set_flops(state, 2.0 * m * n * k);
}

void gemm_shapes(benchmark::internal::Benchmark* b) {
  b->Args({64, 784, 256})->Args({256, 784, 256})->Args({64, 256, 128})->Args({1024, 1024, 1024});
  b->ArgNames({"M", "K", "N"});
}
BENCHMARK(BM_GemmDirectDnnl)->Apply(gemm_shapes);
BENCHMARK(BM_GemmDtrain)->Apply(gemm_shapes);

// The char transformer's Linear layers (batch 16 x 128 tokens, width 128): qkv, fc1, fc2, head.
void transformer_gemm_shapes(benchmark::internal::Benchmark* b) {
  b->Args({2048, 128, 384})->Args({2048, 128, 512})->Args({2048, 512, 128})->Args({2048, 128, 95});
  b->ArgNames({"M", "K", "N"});
}
BENCHMARK(BM_GemmDirectDnnl)->Name("BM_TransformerGemmDirectDnnl")->Apply(transformer_gemm_shapes);
BENCHMARK(BM_GemmDtrain)->Name("BM_TransformerGemmDtrain")->Apply(transformer_gemm_shapes);

// Attention's batched products at the char transformer's shapes (16 x 4 heads, T 128, hd 32):
// scores = q k^T ([B, T, hd] x [B, T, hd]^T) and mixed = probs v ([B, T, T] x [B, T, hd]).
void BM_AttentionMatmul(benchmark::State& state) {
  const int64_t batch = 64, t = 128, hd = 32;
  const bool scores = state.range(0) == 0;
  Generator gen(1);
  Tensor a = scores ? randn({batch, t, hd}, gen) : randn({batch, t, t}, gen);
  Tensor b = randn({batch, t, hd}, gen);
  for (auto _ : state) {
    Tensor c = ops::matmul(a, b, false, scores);
    benchmark::DoNotOptimize(c.data_ptr());
  }
  set_flops(state, 2.0 * batch * t * t * hd);
}
BENCHMARK(BM_AttentionMatmul)->Arg(0)->Arg(1)->ArgName("probs_v");

// The char transformer's attention layer whole, forward and backward (dim 128, 4 heads, dropout
// 0.1 on the probabilities, 2048 tokens: batch 16 at T 128, 4 at T 512): qkv and proj Linears, the
// causal products, softmax and dropout. GFLOP/s counts the matrix FLOPs the layer runs
// (ops::matrix_flops).
void BM_CausalSelfAttentionForwardBackward(benchmark::State& state) {
  const int64_t t = state.range(0);
  Generator gen(4);
  nn::CausalSelfAttention attn(128, 4, 0.1, /*seed=*/1, gen);
  Tensor x = randn({2048 / t, t, 128}, gen).set_requires_grad();
  const uint64_t flops_before = ops::matrix_flops();
  for (auto _ : state) {
    Tensor y = attn.forward(x);
    sum(y).backward();
    benchmark::DoNotOptimize(x.grad().data_ptr());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(
      static_cast<double>(ops::matrix_flops() - flops_before) / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_CausalSelfAttentionForwardBackward)
    ->Arg(128)
    ->Arg(512)
    ->ArgName("T")
    ->Unit(benchmark::kMillisecond);

// ---- bfloat16: oneDNN's bf16 matmul against train.precision's rounding + float32 kernel ------
// What a bf16 training step would pay with oneDNN: both float32 operands converted (reorders),
// then the bf16 primitive (cached) with a float32 result.
void BM_GemmOnednnBf16(benchmark::State& state) {
  using dnnl::memory;
  const int64_t m = state.range(0), k = state.range(1), n = state.range(2);
  Generator gen(1);
  Tensor a = randn({m, k}, gen), b = randn({n, k}, gen), c({m, n});
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  const memory::desc a32({m, k}, memory::data_type::f32, memory::format_tag::ab);
  const memory::desc b32({k, n}, memory::data_type::f32, memory::format_tag::ba);  // B^T
  const memory::desc c32({m, n}, memory::data_type::f32, memory::format_tag::ab);
  dnnl::matmul::primitive_desc pd;
  try {
    pd = dnnl::matmul::primitive_desc(
        dnnl::matmul::desc(memory::desc({m, k}, memory::data_type::bf16, memory::format_tag::any),
                           memory::desc({k, n}, memory::data_type::bf16, memory::format_tag::any),
                           c32),
        engine);
  } catch (const dnnl::error& e) {
    // oneDNN 2.6 runs bf16 matmul only on AVX-512 CPUs.
    state.SkipWithError(
        ("oneDNN has no bf16 matmul for this CPU (" + std::string(e.what()) + ")").c_str());
    return;
  }
  const dnnl::matmul matmul(pd);
  memory a_user(a32, engine, a.data_ptr()), b_user(b32, engine, b.data_ptr()),
      c_user(c32, engine, c.data_ptr());
  memory a16(pd.src_desc(), engine), b16(pd.weights_desc(), engine);
  for (auto _ : state) {
    dnnl::reorder(a_user, a16).execute(stream, a_user, a16);
    dnnl::reorder(b_user, b16).execute(stream, b_user, b16);
    matmul.execute(stream, {{DNNL_ARG_SRC, a16}, {DNNL_ARG_WEIGHTS, b16}, {DNNL_ARG_DST, c_user}});
    stream.wait();
    benchmark::DoNotOptimize(c.data_ptr());
  }
  set_flops(state, 2.0 * m * n * k);
  state.SetLabel(pd.impl_info_str());
}

void BM_GemmDtrainBf16(benchmark::State& state) {
  const int64_t m = state.range(0), k = state.range(1), n = state.range(2);
  Generator gen(1);
  Tensor a = randn({m, k}, gen), b = randn({n, k}, gen);
  MatmulPrecisionGuard bf16(DType::kBFloat16);
  for (auto _ : state) {
    Tensor c = ops::matmul(a, b, false, true);
    benchmark::DoNotOptimize(c.data_ptr());
  }
  set_flops(state, 2.0 * m * n * k);
}
BENCHMARK(BM_GemmOnednnBf16)->Apply(gemm_shapes);
BENCHMARK(BM_GemmDtrainBf16)->Apply(gemm_shapes);

// ---- conv2d forward + backward at the CNN's shapes (batch 64, 5x5, padding 2) ---------------
void BM_Conv2dForwardBackward(benchmark::State& state) {
  const int64_t c = state.range(0), o = state.range(1), hw = state.range(2), n = 64;
  Generator gen(2);
  Tensor x = randn({n, c, hw, hw}, gen), w = randn({o, c, 5, 5}, gen), b = randn({o}, gen);
  Tensor gy = randn({n, o, hw, hw}, gen);
  for (auto _ : state) {
    Tensor y = ops::conv2d(x, w, b, {1, 2});
    Tensor dx = ops::conv2d_backward_input(gy, w, x.shape(), {1, 2});
    Tensor dw = ops::conv2d_backward_weight(gy, x, w.shape(), {1, 2});
    benchmark::DoNotOptimize(dw.data_ptr());
  }
  set_flops(state, 3 * 2.0 * n * o * hw * hw * c * 25);
}
BENCHMARK(BM_Conv2dForwardBackward)
    ->Args({1, 32, 28})
    ->Args({32, 64, 14})
    ->ArgNames({"C", "O", "HW"});

// ---- elementwise bandwidth --------------------------------------------------------------------
void set_bytes(benchmark::State& state, int64_t bytes_per_iter) {
  state.SetBytesProcessed(bytes_per_iter * state.iterations());
}

// ---- 2x2 max pooling forward + backward at the CNN's shapes (batch 64) -------------------------
void BM_MaxPool2x2ForwardBackward(benchmark::State& state) {
  const int64_t c = state.range(0), hw = state.range(1), n = 64;
  Generator gen(3);
  Tensor x = randn({n, c, hw, hw}, gen), gy = randn({n, c, hw / 2, hw / 2}, gen);
  for (auto _ : state) {
    auto [y, indices] = ops::max_pool2d(x, {2, 2, 0});
    Tensor dx = ops::max_pool2d_backward(gy, indices, x.shape(), ops::Pool2dArgs{2, 2, 0});
    benchmark::DoNotOptimize(dx.data_ptr());
  }
  // x read, y and its int64 indices written, then gy and the indices read and dx written.
  set_bytes(state, n * c * hw * hw * 4 * 2 + n * c * (hw / 2) * (hw / 2) * (4 + 8 + 4 + 8));
}
BENCHMARK(BM_MaxPool2x2ForwardBackward)->Args({32, 28})->Args({64, 14})->ArgNames({"C", "HW"});

void BM_Memcpy(benchmark::State& state) {
  const int64_t n = state.range(0);
  Tensor a = randn({n}), b({n});
  for (auto _ : state) {
    std::memcpy(b.data_ptr(), a.data_ptr(), n * 4);
    benchmark::DoNotOptimize(b.data_ptr());
  }
  set_bytes(state, 2 * n * 4);
}
void BM_Add(benchmark::State& state) {
  const int64_t n = state.range(0);
  Tensor a = randn({n}), b = randn({n});
  for (auto _ : state) {
    Tensor c = ops::binary(kernels::Binary::kAdd, a, b);
    benchmark::DoNotOptimize(c.data_ptr());
  }
  set_bytes(state, 3 * n * 4);
}
void BM_Relu(benchmark::State& state) {
  const int64_t n = state.range(0);
  Tensor a = randn({n});
  for (auto _ : state) {
    Tensor c = ops::unary(kernels::Unary::kRelu, a);
    benchmark::DoNotOptimize(c.data_ptr());
  }
  set_bytes(state, 2 * n * 4);
}
// The char transformer's MLP activation, [16 x 128, 512] elements per block, and a slice that
// stays in cache: forward and gradient. The input's scale sets how many vectors need erfc's tail
// (|x| > sqrt 2) as well as the series.
void BM_GeluForwardBackward(benchmark::State& state) {
  const int64_t n = state.range(1);
  Generator gen(6);
  Tensor x = randn({n}, gen);
  ops::scale_(x, static_cast<double>(state.range(0)) / 4);
  const Tensor gy = randn({n}, gen);
  std::vector<float> y(n), dx(n);
  for (auto _ : state) {
    cpu::gelu_f32(x.data<float>(), y.data(), n);
    cpu::gelu_backward_f32(x.data<float>(), gy.data<float>(), dx.data(), n);
    benchmark::DoNotOptimize(dx.data());
  }
  set_bytes(state, 5 * n * 4);
}
BENCHMARK(BM_GeluForwardBackward)
    ->ArgNames({"scale_x4", "n"})
    ->Args({1, 2048 * 512})
    ->Args({4, 2048 * 512})
    ->Args({4, 1 << 14});

// The MLP config's two dropout masks per step: [64, 256] + [64, 128] = 24,576 elements.
void BM_DropoutMask(benchmark::State& state) {
  const int64_t n = state.range(0);
  Generator gen(5);
  for (auto _ : state) {
    Tensor m = ops::dropout_mask({n}, 0.1, gen);
    benchmark::DoNotOptimize(m.data_ptr());
  }
  state.counters["elements/s"] =
      benchmark::Counter(static_cast<double>(n) * state.iterations(), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_DropoutMask)->Arg(24576)->Arg(1 << 20);
BENCHMARK(BM_Memcpy)->Arg(1 << 16)->Arg(1 << 22);
BENCHMARK(BM_Add)->Arg(1 << 16)->Arg(1 << 22);
BENCHMARK(BM_Relu)->Arg(1 << 16)->Arg(1 << 22);

// ---- one training step of MLP 784-256-128-10 ---------------------------------------------------
void BM_MlpTrainStep(benchmark::State& state) {
  const int64_t batch = state.range(0);
  Generator gen(3);
  manual_seed(0);
  nn::Sequential model{std::make_shared<nn::Linear>(784, 256), std::make_shared<nn::ReLU>(),
                       std::make_shared<nn::Linear>(256, 128), std::make_shared<nn::ReLU>(),
                       std::make_shared<nn::Linear>(128, 10)};
  nn::SGD opt(model.parameters(), {.lr = 0.01, .momentum = 0.9});
  Tensor x = randn({batch, 784}, gen);
  Tensor y = randint(0, 10, {batch}, gen);
  for (auto _ : state) {
    opt.zero_grad();
    Tensor loss = cross_entropy(model(x), y);
    loss.backward();
    opt.step();
  }
  state.counters["samples/s"] = benchmark::Counter(static_cast<double>(batch) * state.iterations(),
                                                   benchmark::Counter::kIsRate);
  const auto stats = cpu_allocator().stats();
  state.counters["system_allocs"] = static_cast<double>(stats.system_allocs);
}
BENCHMARK(BM_MlpTrainStep)->Arg(64)->Arg(256)->ArgName("batch");

}  // namespace

BENCHMARK_MAIN();
