// Convolution through oneDNN's primitives (forward, backward-data, backward-weights) on the CPU,
// im2col + GEMM as the reference the tests compare it with (also the float64 path), and 2-D
// pooling. CUDA tensors go to tensor/cuda/cuda_conv2d.h (cuDNN, or im2col + batched cuBLAS).
#include <algorithm>
#include <limits>
#include <oneapi/dnnl/dnnl.hpp>
#include <optional>
#include <type_traits>
#include <unordered_map>

#include "dtrain/tensor/cpu/avx512.h"
#include "dtrain/tensor/cpu/parallel.h"
#include "dtrain/tensor/cuda/cuda_conv2d.h"
#include "dtrain/tensor/dispatch.h"
#include "dtrain/tensor/kernels_nn.h"
#include "dtrain/tensor/ops.h"
#include "dtrain/tensor/precision.h"
#include "dtrain/tensor/run.h"

namespace dtrain::ops {
namespace {

struct ConvGeometry {
  int64_t n, c, h, w, o, kh, kw, oh, ow;
};

/// Multiply-adds of one pass (forward, data gradient or weight gradient) times 2.
int64_t pass_flops(const ConvGeometry& g) {
  return 2 * g.n * g.o * g.oh * g.ow * g.c * g.kh * g.kw;
}

ConvGeometry conv_geometry(const Shape& x, const Shape& w, Conv2dArgs args, const char* op) {
  DTRAIN_CHECK(x.size() == 4, op, ": input must be [N, C, H, W]; got ", shape_str(x));
  DTRAIN_CHECK(w.size() == 4, op, ": weight must be [O, C, KH, KW]; got ", shape_str(w));
  DTRAIN_CHECK(x[1] == w[1], op, ": input ", shape_str(x), " has ", x[1], " channels but weight ",
               shape_str(w), " expects ", w[1]);
  DTRAIN_CHECK(args.stride >= 1 && args.padding >= 0, op,
               ": stride must be >= 1 and padding >= 0;"
               " got stride ",
               args.stride, ", padding ", args.padding);
  ConvGeometry g{x[0], x[1], x[2], x[3], w[0], w[2], w[3], 0, 0};
  g.oh = (g.h + 2 * args.padding - g.kh) / args.stride + 1;
  g.ow = (g.w + 2 * args.padding - g.kw) / args.stride + 1;
  DTRAIN_CHECK(g.h + 2 * args.padding >= g.kh && g.w + 2 * args.padding >= g.kw, op, ": kernel ",
               g.kh, "x", g.kw, " is larger than the padded input ", shape_str(x));
  return g;
}

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

using dnnl::memory;
using tag = memory::format_tag;
constexpr auto f32 = memory::data_type::f32;

struct ConvDescs {
  memory::desc src, wei, bias, dst;
  memory::dims strides, pad;
};
ConvDescs conv_descs(const ConvGeometry& g, Conv2dArgs args) {
  return {memory::desc({g.n, g.c, g.h, g.w}, f32, tag::nchw),
          memory::desc({g.o, g.c, g.kh, g.kw}, f32, tag::oihw),
          memory::desc({g.o}, f32, tag::x),
          memory::desc({g.n, g.o, g.oh, g.ow}, f32, tag::nchw),
          {args.stride, args.stride},
          {args.padding, args.padding}};
}

/// The same shape with layout left to oneDNN: its blocked layouts are several times faster than
/// plain NCHW, and reordering in and out costs one pass over each tensor.
memory::desc any_layout(const memory::desc& md) { return memory::desc(md.dims(), f32, tag::any); }
/// An input with few channels (the first layer of an image model) stays plain: oneDNN's direct
/// kernels read it as it is and write their blocked output, where a plain output would send the
/// whole layer to its GEMM path at a tenth of the speed.
memory::desc src_layout(const ConvDescs& d) {
  return d.src.dims()[1] >= 4 ? any_layout(d.src) : d.src;
}

// oneDNN keeps its own cache of compiled primitives, so re-creating a primitive for a shape
// seen before is a cache hit rather than a JIT compilation.
dnnl::convolution_forward::primitive_desc forward_pd(const ConvDescs& d, bool with_bias) {
  const auto src = src_layout(d), wei = any_layout(d.wei), dst = any_layout(d.dst);
  auto desc = with_bias ? dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training,
                                                          dnnl::algorithm::convolution_direct, src,
                                                          wei, d.bias, dst, d.strides, d.pad, d.pad)
                        : dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training,
                                                          dnnl::algorithm::convolution_direct, src,
                                                          wei, dst, d.strides, d.pad, d.pad);
  return {desc, cpu_engine()};
}

/// Buffers for one call's layout conversions, from dtrain's caching allocator: oneDNN's own
/// allocation is a fresh aligned malloc per call, which at these sizes maps and zeroes new pages
/// every step (5% of a ResNet step in the kernel).
struct Scratch {
  std::vector<Tensor> buffers;
  memory make(const memory::desc& md) {
    buffers.emplace_back(Shape{static_cast<int64_t>((md.get_size() + 3) / 4)}, DType::kFloat32);
    return memory(md, cpu_engine(), buffers.back().data_ptr());
  }
};

/// `user` (plain layout) as the layout a primitive wants, reordered into scratch memory if needed.
memory as_layout(memory user, const memory::desc& wanted, dnnl::stream& stream, Scratch& scratch) {
  if (user.get_desc() == wanted) return user;
  memory converted = scratch.make(wanted);
  dnnl::reorder(user, converted).execute(stream, user, converted);
  return converted;
}

/// Output memory in the primitive's layout; copy_out() moves it into the user's plain tensor.
struct Output {
  memory user, primitive;
  Output(const memory& user_memory, const memory::desc& wanted, Scratch& scratch)
      : user(user_memory),
        primitive(user_memory.get_desc() == wanted ? user_memory : scratch.make(wanted)) {}
  void copy_out(dnnl::stream& stream) {
    if (primitive != user) dnnl::reorder(primitive, user).execute(stream, primitive, user);
  }
};

memory wrap(const memory::desc& md, const Tensor& t) {
  return memory(md, cpu_engine(), t.data_ptr());
}

/// oneDNN serves float32 on the CPU; float64 (gradcheck) uses im2col + GEMM.
bool use_reference(const Tensor& x) { return x.dtype() != DType::kFloat32; }

/// `t` with its values rounded to train.precision's operand type (oneDNN's float32 path), or `t`
/// itself at float32.
Tensor at_matmul_precision(const Tensor& t) {
  const DType precision = matmul_precision();
  if (precision == DType::kFloat32) return t;
  Tensor out(t.shape(), DType::kFloat32);
  round_floats(t.data_ptr<float>(), out.data_ptr<float>(), t.numel(), precision);
  return out;
}

kernels::Window2d window_of(const ConvGeometry& g, Conv2dArgs a) {
  return {g.h, g.w, g.oh, g.ow, g.kh, g.kw, a.stride, a.padding};
}

Tensor conv2d_backward_input_reference(const Tensor& gy, const Tensor& w, const ConvGeometry& g,
                                       Conv2dArgs args) {
  const int64_t ckk = g.c * g.kh * g.kw, ohw = g.oh * g.ow;
  // cols[n] = W^T [CKK, O] @ gy[n] [O, OHW], then scattered back onto the image.
  Tensor cols = matmul(w.view({g.o, ckk}), gy.view({g.n, g.o, ohw}), true, false);
  Tensor dx = zeros({g.n, g.c, g.h, g.w}, gy.dtype(), gy.device());
  detail::dispatch_floating(gy.dtype(), "conv2d backward", [&](auto tag_) {
    using T = decltype(tag_);
    run_kernel(
        gy.device(), g.n * g.c,
        kernels::Col2imPlanes<T>{cols.data_ptr<T>(), dx.data_ptr<T>(), g.c, window_of(g, args)}, 1);
  });
  return dx;
}

Tensor conv2d_backward_weight_reference(const Tensor& gy, const Tensor& x, const ConvGeometry& g,
                                        Conv2dArgs args) {
  const int64_t ckk = g.c * g.kh * g.kw, ohw = g.oh * g.ow;
  Tensor dw = zeros({g.o, ckk}, gy.dtype(), gy.device());
  Tensor cols = im2col(x, g.kh, g.kw, args);
  const size_t es = dtype_size(gy.dtype());
  for (int64_t n = 0; n < g.n; ++n) {
    Tensor gyn(gy.storage(), gy.storage_offset_bytes() + n * g.o * ohw * es, {g.o, ohw},
               gy.dtype());
    Tensor coln(cols.storage(), n * ckk * ohw * es, {ckk, ohw}, gy.dtype());
    gemm(false, true, gyn, coln, dw, 1.f, 1.f);
  }
  return dw.view({g.o, g.c, g.kh, g.kw});
}

}  // namespace

Tensor im2col(const Tensor& x, int64_t kh, int64_t kw, Conv2dArgs args) {
  detail::check_defined("im2col", x, "input");
  const ConvGeometry g = conv_geometry(x.shape(), {1, x.size(1), kh, kw}, args, "im2col");
  const int64_t ckk = g.c * kh * kw, ohw = g.oh * g.ow;
  Tensor cols({g.n, ckk, ohw}, x.dtype(), x.device());
  detail::dispatch_floating(x.dtype(), "im2col", [&](auto tag_) {
    using T = decltype(tag_);
    run_kernel(x.device(), g.n * ckk,
               kernels::Im2colRows<T>{x.data_ptr<T>(), cols.data_ptr<T>(), g.c, window_of(g, args)},
               std::max<int64_t>(1, 4096 / std::max<int64_t>(ohw, 1)));
  });
  return cols;
}

Tensor conv2d_reference(const Tensor& x, const Tensor& w, const Tensor& bias, Conv2dArgs args) {
  detail::check_same("conv2d", x, w);
  const ConvGeometry g = conv_geometry(x.shape(), w.shape(), args, "conv2d");
  const int64_t ckk = g.c * g.kh * g.kw;
  Tensor cols = im2col(x, g.kh, g.kw, args);      // [N, CKK, OHW]
  Tensor out = matmul(w.view({g.o, ckk}), cols);  // [N, O, OHW]
  if (bias.defined()) {
    DTRAIN_CHECK(bias.dim() == 1 && bias.size(0) == g.o, "conv2d: bias must be [", g.o, "]; got ",
                 bias.describe());
    binary_(kernels::Binary::kAdd, out, bias.view({g.o, 1}));
  }
  return out.view({g.n, g.o, g.oh, g.ow});
}

Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, Conv2dArgs args) {
  detail::check_same("conv2d", x, w);
  const ConvGeometry g = conv_geometry(x.shape(), w.shape(), args, "conv2d");
  if (bias.defined()) {
    detail::check_same("conv2d", x, bias);
    DTRAIN_CHECK(bias.dim() == 1 && bias.size(0) == g.o, "conv2d: bias must be [", g.o, "]; got ",
                 bias.describe());
  }
  if (x.device().is_cuda()) return conv2d_cuda(x, w, bias, args);
  if (use_reference(x)) return conv2d_reference(x, w, bias, args);
  count_matrix_flops(pass_flops(g));
  const Tensor xr = at_matmul_precision(x), wr = at_matmul_precision(w);
  Tensor y({g.n, g.o, g.oh, g.ow}, x.dtype());
  const ConvDescs d = conv_descs(g, args);
  const auto pd = forward_pd(d, bias.defined());
  dnnl::stream stream(cpu_engine());
  Scratch scratch;
  Output out(wrap(d.dst, y), pd.dst_desc(), scratch);
  std::unordered_map<int, memory> io{
      {DNNL_ARG_SRC, as_layout(wrap(d.src, xr), pd.src_desc(), stream, scratch)},
      {DNNL_ARG_WEIGHTS, as_layout(wrap(d.wei, wr), pd.weights_desc(), stream, scratch)},
      {DNNL_ARG_DST, out.primitive}};
  if (bias.defined()) io.emplace(DNNL_ARG_BIAS, wrap(d.bias, bias));
  dnnl::convolution_forward(pd).execute(stream, io);
  out.copy_out(stream);
  stream.wait();
  return y;
}

namespace {
/// What the two gradient passes of one convolution share: scratch buffers, and the output
/// gradient in the layout both primitives read (converted once rather than once per pass).
struct ConvBackwardShared {
  Scratch scratch;
  std::optional<memory> gy;
  memory gy_as(const memory& user, const memory::desc& wanted, dnnl::stream& stream) {
    if (!gy || gy->get_desc() != wanted) gy = as_layout(user, wanted, stream, scratch);
    return *gy;
  }
};

Tensor backward_input_onednn(const Tensor& gyr, const Tensor& wr, const ConvGeometry& g,
                             Conv2dArgs args, ConvBackwardShared& shared) {
  count_matrix_flops(pass_flops(g));
  Tensor dx({g.n, g.c, g.h, g.w}, gyr.dtype());
  const ConvDescs d = conv_descs(g, args);
  const auto fwd = forward_pd(d, false);
  dnnl::convolution_backward_data::desc desc(dnnl::algorithm::convolution_direct, src_layout(d),
                                             any_layout(d.wei), any_layout(d.dst), d.strides, d.pad,
                                             d.pad);
  dnnl::convolution_backward_data::primitive_desc pd(desc, cpu_engine(), fwd);
  dnnl::stream stream(cpu_engine());
  Output out(wrap(d.src, dx), pd.diff_src_desc(), shared.scratch);
  dnnl::convolution_backward_data(pd).execute(
      stream,
      {{DNNL_ARG_DIFF_DST, shared.gy_as(wrap(d.dst, gyr), pd.diff_dst_desc(), stream)},
       {DNNL_ARG_WEIGHTS, as_layout(wrap(d.wei, wr), pd.weights_desc(), stream, shared.scratch)},
       {DNNL_ARG_DIFF_SRC, out.primitive}});
  out.copy_out(stream);
  stream.wait();
  return dx;
}

Tensor backward_weight_onednn(const Tensor& gyr, const Tensor& xr, const ConvGeometry& g,
                              Conv2dArgs args, Tensor* bias_grad, ConvBackwardShared& shared) {
  count_matrix_flops(pass_flops(g));
  Tensor dw({g.o, g.c, g.kh, g.kw}, gyr.dtype());
  const ConvDescs d = conv_descs(g, args);
  const auto fwd = forward_pd(d, bias_grad != nullptr);
  // With a bias, oneDNN sums its gradient in the same pass over gy.
  auto desc = bias_grad ? dnnl::convolution_backward_weights::desc(
                              dnnl::algorithm::convolution_direct, src_layout(d), any_layout(d.wei),
                              d.bias, any_layout(d.dst), d.strides, d.pad, d.pad)
                        : dnnl::convolution_backward_weights::desc(
                              dnnl::algorithm::convolution_direct, src_layout(d), any_layout(d.wei),
                              any_layout(d.dst), d.strides, d.pad, d.pad);
  dnnl::convolution_backward_weights::primitive_desc pd(desc, cpu_engine(), fwd);
  dnnl::stream stream(cpu_engine());
  Output out(wrap(d.wei, dw), pd.diff_weights_desc(), shared.scratch);
  std::unordered_map<int, memory> io{
      {DNNL_ARG_SRC, as_layout(wrap(d.src, xr), pd.src_desc(), stream, shared.scratch)},
      {DNNL_ARG_DIFF_DST, shared.gy_as(wrap(d.dst, gyr), pd.diff_dst_desc(), stream)},
      {DNNL_ARG_DIFF_WEIGHTS, out.primitive}};
  if (bias_grad) {
    *bias_grad = Tensor({g.o}, gyr.dtype());
    io.emplace(DNNL_ARG_DIFF_BIAS, wrap(d.bias, *bias_grad));
  }
  dnnl::convolution_backward_weights(pd).execute(stream, io);
  out.copy_out(stream);
  stream.wait();
  return dw;
}
}  // namespace

Tensor conv2d_backward_input(const Tensor& gy, const Tensor& w, const Shape& x_shape,
                             Conv2dArgs args) {
  detail::check_same("conv2d backward", gy, w);
  const ConvGeometry g = conv_geometry(x_shape, w.shape(), args, "conv2d backward");
  if (gy.device().is_cuda()) return conv2d_backward_input_cuda(gy, w, x_shape, args);
  if (use_reference(gy)) return conv2d_backward_input_reference(gy, w, g, args);
  ConvBackwardShared shared;
  return backward_input_onednn(at_matmul_precision(gy), at_matmul_precision(w), g, args, shared);
}

Tensor conv2d_backward_weight(const Tensor& gy, const Tensor& x, const Shape& w_shape,
                              Conv2dArgs args, Tensor* bias_grad) {
  detail::check_same("conv2d backward", gy, x);
  const ConvGeometry g = conv_geometry(x.shape(), w_shape, args, "conv2d backward");
  if (gy.device().is_cuda() || use_reference(gy)) {
    if (bias_grad) *bias_grad = sum(gy, {0, 2, 3});
    return gy.device().is_cuda() ? conv2d_backward_weight_cuda(gy, x, w_shape, args)
                                 : conv2d_backward_weight_reference(gy, x, g, args);
  }
  ConvBackwardShared shared;
  return backward_weight_onednn(at_matmul_precision(gy), at_matmul_precision(x), g, args, bias_grad,
                                shared);
}

std::pair<Tensor, Tensor> conv2d_backward(const Tensor& gy, const Tensor& x, const Tensor& w,
                                          Conv2dArgs args, bool want_input, bool want_weight,
                                          Tensor* bias_grad) {
  detail::check_same("conv2d backward", gy, x);
  detail::check_same("conv2d backward", gy, w);
  if (gy.device().is_cuda() || use_reference(gy) || !want_input || !want_weight) {
    Tensor dx = want_input ? conv2d_backward_input(gy, w, x.shape(), args) : Tensor();
    Tensor dw = want_weight ? conv2d_backward_weight(gy, x, w.shape(), args, bias_grad) : Tensor();
    if (bias_grad && !want_weight) *bias_grad = sum(gy, {0, 2, 3});
    return {dx, dw};
  }
  const ConvGeometry g = conv_geometry(x.shape(), w.shape(), args, "conv2d backward");
  const Tensor gyr = at_matmul_precision(gy);
  ConvBackwardShared shared;
  Tensor dx = backward_input_onednn(gyr, at_matmul_precision(w), g, args, shared);
  Tensor dw = backward_weight_onednn(gyr, at_matmul_precision(x), g, args, bias_grad, shared);
  return {dx, dw};
}

// ---- pooling --------------------------------------------------------------------------------
namespace {
struct PoolGeometry {
  int64_t planes, h, w, oh, ow;
};
PoolGeometry pool_geometry(const Shape& x, Pool2dArgs a, const char* op) {
  DTRAIN_CHECK(x.size() == 4, op, ": input must be [N, C, H, W]; got ", shape_str(x));
  DTRAIN_CHECK(a.kernel >= 1 && a.stride >= 1 && a.padding >= 0 && 2 * a.padding <= a.kernel, op,
               ": needs kernel >= 1, stride >= 1 and 0 <= padding <= kernel / 2; got kernel ",
               a.kernel, ", stride ", a.stride, ", padding ", a.padding);
  PoolGeometry g{x[0] * x[1], x[2], x[3], 0, 0};
  DTRAIN_CHECK(g.h + 2 * a.padding >= a.kernel && g.w + 2 * a.padding >= a.kernel, op, ": kernel ",
               a.kernel, " is larger than the padded input ", shape_str(x));
  g.oh = (g.h + 2 * a.padding - a.kernel) / a.stride + 1;
  g.ow = (g.w + 2 * a.padding - a.kernel) / a.stride + 1;
  return g;
}
}  // namespace

namespace {
kernels::Window2d pool_window(const PoolGeometry& g, Pool2dArgs a) {
  return {g.h, g.w, g.oh, g.ow, a.kernel, a.kernel, a.stride, a.padding};
}
}  // namespace

namespace {
/// The common 2x2, stride 2, no padding window on the CPU, without branches (random data makes
/// the compares unpredictable): the same maxima and indices as kernels::MaxPoolForward (the first
/// of equal values in window order wins; a NaN is kept only where it comes first).
template <class T>
void max_pool_2x2_row(const T* r0, const T* r1, int64_t top, int64_t w, int64_t ow, T* out,
                      int64_t* arg) {
  int64_t oj = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    const __m512i even =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (; oj < ow; oj += 16) {
      const int64_t left = ow - oj < 16 ? ow - oj : 16;
      const __mmask16 outs = static_cast<__mmask16>((1u << left) - 1);
      const __mmask16 lo = static_cast<__mmask16>(left >= 8 ? 0xFFFF : (1u << (2 * left)) - 1);
      const __mmask16 hi = static_cast<__mmask16>(left > 8 ? (1u << (2 * (left - 8))) - 1 : 0);
      const __m512 r0a = _mm512_maskz_loadu_ps(lo, r0 + 2 * oj);
      const __m512 r0b = _mm512_maskz_loadu_ps(hi, r0 + 2 * oj + 16);
      const __m512 r1a = _mm512_maskz_loadu_ps(lo, r1 + 2 * oj);
      const __m512 r1b = _mm512_maskz_loadu_ps(hi, r1 + 2 * oj + 16);
      const __m512 a = _mm512_permutex2var_ps(r0a, even, r0b);
      const __m512 b = _mm512_permutex2var_ps(r0a, odd, r0b);
      const __m512 c = _mm512_permutex2var_ps(r1a, even, r1b);
      const __m512 d = _mm512_permutex2var_ps(r1a, odd, r1b);
      // Offset of the maximum from the window's top-left corner: 0, 1, w or w + 1.
      __m512 best = a;
      __m512i offset = _mm512_setzero_si512();
      __mmask16 m = _mm512_cmp_ps_mask(b, best, _CMP_GT_OQ);
      best = _mm512_mask_blend_ps(m, best, b);
      offset = _mm512_mask_mov_epi32(offset, m, _mm512_set1_epi32(1));
      m = _mm512_cmp_ps_mask(c, best, _CMP_GT_OQ);
      best = _mm512_mask_blend_ps(m, best, c);
      offset = _mm512_mask_mov_epi32(offset, m, _mm512_set1_epi32(static_cast<int>(w)));
      m = _mm512_cmp_ps_mask(d, best, _CMP_GT_OQ);
      best = _mm512_mask_blend_ps(m, best, d);
      offset = _mm512_mask_mov_epi32(offset, m, _mm512_set1_epi32(static_cast<int>(w + 1)));
      _mm512_mask_storeu_ps(out + oj, outs, best);
      // Indices within the plane fit 32 bits here (checked by the caller).
      const __m512i at = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(top + 2 * oj)),
                                          _mm512_add_epi32(_mm512_add_epi32(lane, lane), offset));
      _mm512_mask_storeu_epi64(arg + oj, static_cast<__mmask8>(outs),
                               _mm512_cvtepi32_epi64(_mm512_castsi512_si256(at)));
      _mm512_mask_storeu_epi64(arg + oj + 8, static_cast<__mmask8>(outs >> 8),
                               _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(at, 1)));
    }
    return;
  }
#elif defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const auto below = [&](int64_t n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane); };
    // Even and odd elements of the 16 at p, q (8 each), in order.
    const auto split = [](__m256 p, __m256 q, __m256& even, __m256& odd) {
      even = _mm256_castpd_ps(_mm256_permute4x64_pd(
          _mm256_castps_pd(_mm256_shuffle_ps(p, q, _MM_SHUFFLE(2, 0, 2, 0))), 0xD8));
      odd = _mm256_castpd_ps(_mm256_permute4x64_pd(
          _mm256_castps_pd(_mm256_shuffle_ps(p, q, _MM_SHUFFLE(3, 1, 3, 1))), 0xD8));
    };
    for (; oj < ow; oj += 8) {
      const int64_t left = ow - oj < 8 ? ow - oj : 8;
      const __m256i lo = below(2 * left), hi = below(2 * left - 8);
      __m256 a, b, c, d;
      split(_mm256_maskload_ps(r0 + 2 * oj, lo), _mm256_maskload_ps(r0 + 2 * oj + 8, hi), a, b);
      split(_mm256_maskload_ps(r1 + 2 * oj, lo), _mm256_maskload_ps(r1 + 2 * oj + 8, hi), c, d);
      // Offset of the maximum from the window's top-left corner: 0, 1, w or w + 1.
      __m256 best = a;
      __m256i offset = _mm256_setzero_si256();
      const auto take = [&](__m256 v, int64_t at) {
        const __m256 m = _mm256_cmp_ps(v, best, _CMP_GT_OQ);
        best = _mm256_blendv_ps(best, v, m);
        offset = _mm256_blendv_epi8(offset, _mm256_set1_epi32(static_cast<int>(at)),
                                    _mm256_castps_si256(m));
      };
      take(b, 1);
      take(c, w);
      take(d, w + 1);
      // Indices within the plane fit 32 bits here (checked by the caller).
      const __m256i at = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(top + 2 * oj)),
                                          _mm256_add_epi32(_mm256_add_epi32(lane, lane), offset));
      const __m256i at_lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(at));
      const __m256i at_hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(at, 1));
      if (left == 8) {
        _mm256_storeu_ps(out + oj, best);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(arg + oj), at_lo);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(arg + oj + 4), at_hi);
        continue;
      }
      // The tail through a buffer: masked stores are slow on some CPUs (AMD's especially).
      alignas(32) float best_buf[8];
      alignas(32) int64_t at_buf[8];
      _mm256_store_ps(best_buf, best);
      _mm256_store_si256(reinterpret_cast<__m256i*>(at_buf), at_lo);
      _mm256_store_si256(reinterpret_cast<__m256i*>(at_buf + 4), at_hi);
      std::copy_n(best_buf, left, out + oj);
      std::copy_n(at_buf, left, arg + oj);
    }
    return;
  }
#endif
  for (; oj < ow; ++oj) {
    const T a = r0[2 * oj], b = r0[2 * oj + 1], c = r1[2 * oj], d = r1[2 * oj + 1];
    T best = a;
    int64_t at = top + 2 * oj;
    if (b > best) best = b, at = top + 2 * oj + 1;
    if (c > best) best = c, at = top + w + 2 * oj;
    if (d > best) best = d, at = top + w + 2 * oj + 1;
    out[oj] = best;
    arg[oj] = at;
  }
}

template <class T>
void max_pool_2x2_cpu(const T* x, T* y, int64_t* indices, const PoolGeometry& g) {
  cpu::parallel_for(g.planes * g.oh, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t p = row / g.oh, oi = row % g.oh;
      const int64_t top = 2 * oi * g.w;  // flat index of the window's top row in its plane
      const T* r0 = x + p * g.h * g.w + top;
      max_pool_2x2_row(r0, r0 + g.w, top, g.w, g.ow, y + row * g.ow, indices + row * g.ow);
    }
  });
}
}  // namespace

std::pair<Tensor, Tensor> max_pool2d(const Tensor& x, Pool2dArgs a) {
  detail::check_defined("max_pool2d", x, "input");
  const PoolGeometry g = pool_geometry(x.shape(), a, "max_pool2d");
  Tensor y({x.size(0), x.size(1), g.oh, g.ow}, x.dtype(), x.device());
  Tensor idx(y.shape(), DType::kInt64, x.device());
  detail::dispatch_floating(x.dtype(), "max_pool2d", [&](auto tag_) {
    using T = decltype(tag_);
    if (!x.device().is_cuda() && a.kernel == 2 && a.stride == 2 && a.padding == 0 &&
        g.h * g.w < (int64_t{1} << 31)) {
      max_pool_2x2_cpu(x.data_ptr<T>(), y.data_ptr<T>(), idx.data_ptr<int64_t>(), g);
      return;
    }
    run_kernel(x.device(), g.planes * g.oh,
               kernels::MaxPoolForward<T>{x.data_ptr<T>(), y.data_ptr<T>(), idx.data_ptr<int64_t>(),
                                          pool_window(g, a)},
               64);
  });
  return {y, idx};
}

namespace {
#if defined(__AVX512F__)
/// One row of windows, sixteen at a time; returns the number of windows done (all of them).
int64_t max_pool_2x2_backward_row_avx512(const float* g, const int64_t* at, float* r0, float* r1,
                                         int64_t top, int64_t w, int64_t ow) {
  const __m512i even = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i odd =
      _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __m512i lane2 =
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i one = _mm512_set1_epi32(1), wide = _mm512_set1_epi32(static_cast<int>(w)),
                wide1 = _mm512_set1_epi32(static_cast<int>(w + 1));
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t oj = 0; oj < ow; oj += 16) {
    const int64_t left = ow - oj < 16 ? ow - oj : 16;
    const __mmask16 outs = static_cast<__mmask16>((1u << left) - 1);
    const __mmask16 lo = static_cast<__mmask16>(left >= 8 ? 0xFFFF : (1u << (2 * left)) - 1);
    const __mmask16 hi = static_cast<__mmask16>(left > 8 ? (1u << (2 * (left - 8))) - 1 : 0);
    const __m512 v = _mm512_maskz_loadu_ps(outs, g + oj);
    const __m256i at_lo =
        _mm512_cvtepi64_epi32(_mm512_maskz_loadu_epi64(static_cast<__mmask8>(outs), at + oj));
    const __m256i at_hi = _mm512_cvtepi64_epi32(
        _mm512_maskz_loadu_epi64(static_cast<__mmask8>(outs >> 8), at + oj + 8));
    // Offset of each window's maximum from its top-left corner: 0, 1, w or w + 1.
    const __m512i offset = _mm512_sub_epi32(
        _mm512_inserti64x4(_mm512_zextsi256_si512(at_lo), at_hi, 1),
        _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(top + 2 * oj)), lane2));
    const __m512 a =
        _mm512_mask_blend_ps(_mm512_cmpeq_epi32_mask(offset, _mm512_setzero_si512()), zero, v);
    const __m512 b = _mm512_mask_blend_ps(_mm512_cmpeq_epi32_mask(offset, one), zero, v);
    const __m512 c = _mm512_mask_blend_ps(_mm512_cmpeq_epi32_mask(offset, wide), zero, v);
    const __m512 d = _mm512_mask_blend_ps(_mm512_cmpeq_epi32_mask(offset, wide1), zero, v);
    // Interleave (a, b) into the top row and (c, d) into the bottom one.
    _mm512_mask_storeu_ps(r0 + 2 * oj, lo, _mm512_permutex2var_ps(a, even, b));
    _mm512_mask_storeu_ps(r0 + 2 * oj + 16, hi, _mm512_permutex2var_ps(a, odd, b));
    _mm512_mask_storeu_ps(r1 + 2 * oj, lo, _mm512_permutex2var_ps(c, even, d));
    _mm512_mask_storeu_ps(r1 + 2 * oj + 16, hi, _mm512_permutex2var_ps(c, odd, d));
  }
  return ow;
}
#elif defined(__AVX2__)
/// One row of windows, eight at a time; returns the number of windows done (all of them).
int64_t max_pool_2x2_backward_row_avx2(const float* g, const int64_t* at, float* r0, float* r1,
                                       int64_t top, int64_t w, int64_t ow) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i quad = _mm256_setr_epi64x(0, 1, 2, 3);
  const __m256i low_halves = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
  const auto below = [&](int64_t n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane); };
  const auto below64 = [&](int64_t n) { return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), quad); };
  const __m256i one = _mm256_set1_epi32(1), wide = _mm256_set1_epi32(static_cast<int>(w)),
                wide1 = _mm256_set1_epi32(static_cast<int>(w + 1));
  for (int64_t oj = 0; oj < ow; oj += 8) {
    const int64_t left = ow - oj < 8 ? ow - oj : 8;
    const __m256 v = _mm256_maskload_ps(g + oj, below(left));
    const auto low32 = [&](const int64_t* p, int64_t n) {
      return _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(
          _mm256_maskload_epi64(reinterpret_cast<const long long*>(p), below64(n)), low_halves));
    };
    const __m256i at32 = _mm256_inserti128_si256(_mm256_castsi128_si256(low32(at + oj, left)),
                                                 low32(at + oj + 4, left - 4), 1);
    // Offset of each window's maximum from its top-left corner: 0, 1, w or w + 1.
    const __m256i offset =
        _mm256_sub_epi32(at32, _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(top + 2 * oj)),
                                                _mm256_add_epi32(lane, lane)));
    const auto where = [&](__m256i is) { return _mm256_and_ps(v, _mm256_castsi256_ps(is)); };
    const __m256 a = where(_mm256_cmpeq_epi32(offset, _mm256_setzero_si256()));
    const __m256 b = where(_mm256_cmpeq_epi32(offset, one));
    const __m256 c = where(_mm256_cmpeq_epi32(offset, wide));
    const __m256 d = where(_mm256_cmpeq_epi32(offset, wide1));
    // Interleave (a, b) into the top row and (c, d) into the bottom one.
    const auto store_pairs = [&](float* row, __m256 x, __m256 y) {
      const __m256 first = _mm256_unpacklo_ps(x, y), second = _mm256_unpackhi_ps(x, y);
      const __m256 pairs_lo = _mm256_permute2f128_ps(first, second, 0x20);
      const __m256 pairs_hi = _mm256_permute2f128_ps(first, second, 0x31);
      if (left == 8) {
        _mm256_storeu_ps(row + 2 * oj, pairs_lo);
        _mm256_storeu_ps(row + 2 * oj + 8, pairs_hi);
        return;
      }
      // The tail through a buffer, as in the forward pass.
      alignas(32) float buf[16];
      _mm256_store_ps(buf, pairs_lo);
      _mm256_store_ps(buf + 8, pairs_hi);
      std::copy_n(buf, 2 * left, row + 2 * oj);
    };
    store_pairs(r0, a, b);
    store_pairs(r1, c, d);
  }
  return ow;
}
#endif

/// dx of a 2x2, stride 2, unpadded max pool: each input element of a window gets the window's
/// gradient where it was the maximum and zero elsewhere; an odd last row or column, which no
/// window covers, gets zero.
template <class T>
void max_pool_2x2_backward_cpu(const T* gy, const int64_t* indices, T* dx, int64_t planes,
                               int64_t h, int64_t w, int64_t oh, int64_t ow) {
  cpu::parallel_for(planes, 4, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      T* plane = dx + p * h * w;
      const T* g = gy + p * oh * ow;
      const int64_t* at = indices + p * oh * ow;
      for (int64_t oi = 0; oi < oh; ++oi) {
        T* r0 = plane + 2 * oi * w;
        T* r1 = r0 + w;
        const int64_t top = 2 * oi * w;
        int64_t oj = 0;
#if defined(__AVX512F__)
        if constexpr (std::is_same_v<T, float>) {
          if (h * w < (int64_t{1} << 31)) {
            oj = max_pool_2x2_backward_row_avx512(g + oi * ow, at + oi * ow, r0, r1, top, w, ow);
          }
        }
#elif defined(__AVX2__)
        if constexpr (std::is_same_v<T, float>) {
          if (h * w < (int64_t{1} << 31)) {
            oj = max_pool_2x2_backward_row_avx2(g + oi * ow, at + oi * ow, r0, r1, top, w, ow);
          }
        }
#endif
        for (; oj < ow; ++oj) {
          const int64_t o = oi * ow + oj, left = top + 2 * oj;
          const T v = g[o];
          const int64_t m = at[o];
          r0[2 * oj] = m == left ? v : T(0);
          r0[2 * oj + 1] = m == left + 1 ? v : T(0);
          r1[2 * oj] = m == left + w ? v : T(0);
          r1[2 * oj + 1] = m == left + w + 1 ? v : T(0);
        }
        if (w % 2) r0[w - 1] = r1[w - 1] = T(0);
      }
      if (h % 2) std::fill(plane + (h - 1) * w, plane + h * w, T(0));
    }
  });
}
}  // namespace

Tensor max_pool2d_backward(const Tensor& gy, const Tensor& indices, const Shape& x_shape,
                           std::optional<Pool2dArgs> window) {
  if (window && window->kernel == 2 && window->stride == 2 && window->padding == 0 &&
      x_shape.size() == 4 && gy.dim() == 4 && gy.size(2) == x_shape[2] / 2 &&
      gy.size(3) == x_shape[3] / 2) {
    const int64_t h = x_shape[2], w = x_shape[3];
    if (gy.device().is_cuda()) {
      // A thread per window instead of one per plane; odd edges, which no window covers, start
      // zeroed.
      Tensor dx = h % 2 || w % 2 ? zeros(x_shape, gy.dtype(), gy.device())
                                 : Tensor(x_shape, gy.dtype(), gy.device());
      detail::dispatch_floating(gy.dtype(), "max_pool2d backward", [&](auto tag_) {
        using T = decltype(tag_);
        run_kernel(
            gy.device(), gy.numel(),
            kernels::MaxPool2x2BackwardWindows<T>{gy.data_ptr<T>(), indices.data_ptr<int64_t>(),
                                                  dx.data_ptr<T>(), h, w, gy.size(2), gy.size(3)});
      });
      return dx;
    }
    Tensor dx(x_shape, gy.dtype(), gy.device());
    detail::dispatch_floating(gy.dtype(), "max_pool2d backward", [&](auto tag_) {
      using T = decltype(tag_);
      max_pool_2x2_backward_cpu(gy.data_ptr<T>(), indices.data_ptr<int64_t>(), dx.data_ptr<T>(),
                                x_shape[0] * x_shape[1], h, w, gy.size(2), gy.size(3));
    });
    return dx;
  }
  Tensor dx = zeros(x_shape, gy.dtype(), gy.device());
  const int64_t planes = x_shape[0] * x_shape[1];
  detail::dispatch_floating(gy.dtype(), "max_pool2d backward", [&](auto tag_) {
    using T = decltype(tag_);
    run_kernel(gy.device(), planes,
               kernels::MaxPoolBackwardPlanes<T>{gy.data_ptr<T>(), indices.data_ptr<int64_t>(),
                                                 dx.data_ptr<T>(), x_shape[2] * x_shape[3],
                                                 gy.size(2) * gy.size(3)},
               1);
  });
  return dx;
}

Tensor avg_pool2d(const Tensor& x, Pool2dArgs a) {
  detail::check_defined("avg_pool2d", x, "input");
  const PoolGeometry g = pool_geometry(x.shape(), a, "avg_pool2d");
  Tensor y({x.size(0), x.size(1), g.oh, g.ow}, x.dtype(), x.device());
  detail::dispatch_floating(x.dtype(), "avg_pool2d", [&](auto tag_) {
    using T = decltype(tag_);
    run_kernel(x.device(), g.planes * g.oh,
               kernels::AvgPoolForward<T>{x.data_ptr<T>(), y.data_ptr<T>(), pool_window(g, a)}, 64);
  });
  return y;
}

Tensor avg_pool2d_backward(const Tensor& gy, const Shape& x_shape, Pool2dArgs a) {
  const PoolGeometry g = pool_geometry(x_shape, a, "avg_pool2d backward");
  Tensor dx = zeros(x_shape, gy.dtype(), gy.device());
  detail::dispatch_floating(gy.dtype(), "avg_pool2d backward", [&](auto tag_) {
    using T = decltype(tag_);
    run_kernel(
        gy.device(), g.planes,
        kernels::AvgPoolBackwardPlanes<T>{gy.data_ptr<T>(), dx.data_ptr<T>(), pool_window(g, a)},
        1);
  });
  return dx;
}

}  // namespace dtrain::ops
