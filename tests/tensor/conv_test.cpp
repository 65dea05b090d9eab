// Convolution (oneDNN float32 path and the im2col reference used for float64) and 2-D pooling,
// forward and backward, against direct loops in double.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "dtrain/tensor/kernels_nn.h"
#include "dtrain/tensor/ops.h"
#include "reference.h"
#include "testutil.h"

namespace dtrain {
namespace {

using testref::random_tensor;
using testref::tensor_of;
using testutil::all_close;

struct ConvCase {
  int64_t n, c, h, w, o, kh, kw, stride, padding;
};

std::vector<ConvCase> conv_cases() {
  return {
      {2, 3, 8, 8, 4, 3, 3, 1, 1},    {1, 2, 7, 9, 3, 3, 3, 2, 0},  // stride 2, odd sizes
      {2, 3, 9, 7, 5, 5, 5, 2, 2},                                  // padding 2
      {3, 4, 6, 6, 2, 1, 1, 1, 0},                                  // 1x1
      {2, 5, 5, 4, 3, 1, 1, 2, 0},                                  // 1x1 with stride
      {1, 1, 5, 5, 1, 5, 5, 1, 2},                                  // kernel as large as the input
      {2, 2, 10, 10, 3, 3, 3, 3, 1},  // stride leaves input rows uncovered
      {1, 3, 6, 8, 2, 3, 2, 1, 1},    // non-square kernel
      {4, 16, 12, 12, 8, 3, 3, 1, 1},
  };
}

std::string describe(const ConvCase& c) {
  std::ostringstream os;
  os << "N=" << c.n << " C=" << c.c << " H=" << c.h << " W=" << c.w << " O=" << c.o << " K=" << c.kh
     << "x" << c.kw << " stride=" << c.stride << " padding=" << c.padding;
  return os.str();
}

int64_t out_size(int64_t in, int64_t k, const ConvCase& c) {
  return (in + 2 * c.padding - k) / c.stride + 1;
}

/// Calls f(n, o, oi, oj, ci, ki, kj, hi, wj) for every term of the convolution sum that touches
/// the (unpadded) input.
template <class F>
void for_each_conv_term(const ConvCase& c, F&& f) {
  const int64_t oh = out_size(c.h, c.kh, c), ow = out_size(c.w, c.kw, c);
  for (int64_t n = 0; n < c.n; ++n)
    for (int64_t o = 0; o < c.o; ++o)
      for (int64_t oi = 0; oi < oh; ++oi)
        for (int64_t oj = 0; oj < ow; ++oj)
          for (int64_t ci = 0; ci < c.c; ++ci)
            for (int64_t ki = 0; ki < c.kh; ++ki)
              for (int64_t kj = 0; kj < c.kw; ++kj) {
                const int64_t hi = oi * c.stride - c.padding + ki;
                const int64_t wj = oj * c.stride - c.padding + kj;
                if (hi < 0 || hi >= c.h || wj < 0 || wj >= c.w) continue;
                f(((n * c.o + o) * oh + oi) * ow + oj, ((n * c.c + ci) * c.h + hi) * c.w + wj,
                  ((o * c.c + ci) * c.kh + ki) * c.kw + kj);
              }
}

Tensor naive_conv(const ConvCase& c, const Tensor& x, const Tensor& w, const Tensor& bias) {
  const int64_t oh = out_size(c.h, c.kh, c), ow = out_size(c.w, c.kw, c);
  const auto vx = x.to_vector<double>(), vw = w.to_vector<double>();
  std::vector<double> y(c.n * c.o * oh * ow, 0.0);
  if (bias.defined()) {
    const auto vb = bias.to_vector<double>();
    for (size_t i = 0; i < y.size(); ++i) y[i] = vb[(i / (oh * ow)) % c.o];
  }
  for_each_conv_term(c, [&](int64_t yi, int64_t xi, int64_t wi) { y[yi] += vx[xi] * vw[wi]; });
  return tensor_of(y, {c.n, c.o, oh, ow}, x.dtype());
}

Tensor naive_conv_backward_input(const ConvCase& c, const Tensor& gy, const Tensor& w) {
  const auto vg = gy.to_vector<double>(), vw = w.to_vector<double>();
  std::vector<double> dx(c.n * c.c * c.h * c.w, 0.0);
  for_each_conv_term(c, [&](int64_t yi, int64_t xi, int64_t wi) { dx[xi] += vg[yi] * vw[wi]; });
  return tensor_of(dx, {c.n, c.c, c.h, c.w}, gy.dtype());
}

Tensor naive_conv_backward_weight(const ConvCase& c, const Tensor& gy, const Tensor& x) {
  const auto vg = gy.to_vector<double>(), vx = x.to_vector<double>();
  std::vector<double> dw(c.o * c.c * c.kh * c.kw, 0.0);
  for_each_conv_term(c, [&](int64_t yi, int64_t xi, int64_t wi) { dw[wi] += vg[yi] * vx[xi]; });
  return tensor_of(dw, {c.o, c.c, c.kh, c.kw}, gy.dtype());
}

TEST(Conv2d, ForwardMatchesDirectLoops) {
  uint64_t seed = 1;
  for (const auto& c : conv_cases()) {
    for (bool with_bias : {false, true}) {
      Tensor x = random_tensor({c.n, c.c, c.h, c.w}, seed++);
      Tensor w = random_tensor({c.o, c.c, c.kh, c.kw}, seed++);
      Tensor b = with_bias ? random_tensor({c.o}, seed++) : Tensor();
      const ops::Conv2dArgs args{c.stride, c.padding};
      Tensor ref = naive_conv(c, x, w, b);
      EXPECT_TRUE(all_close(ops::conv2d(x, w, b, args), ref, 1e-4, 1e-5))
          << "oneDNN " << describe(c) << " bias " << with_bias;
      EXPECT_TRUE(all_close(ops::conv2d_reference(x, w, b, args), ref, 1e-4, 1e-5))
          << "reference " << describe(c) << " bias " << with_bias;
    }
  }
}

TEST(Conv2d, Float64UsesTheReferencePathAndMatchesDirectLoops) {
  uint64_t seed = 100;
  for (const auto& c : conv_cases()) {
    Tensor x = random_tensor({c.n, c.c, c.h, c.w}, seed++, -1, 1, DType::kFloat64);
    Tensor w = random_tensor({c.o, c.c, c.kh, c.kw}, seed++, -1, 1, DType::kFloat64);
    Tensor b = random_tensor({c.o}, seed++, -1, 1, DType::kFloat64);
    const ops::Conv2dArgs args{c.stride, c.padding};
    Tensor y = ops::conv2d(x, w, b, args);
    EXPECT_EQ(y.dtype(), DType::kFloat64);
    EXPECT_TRUE(all_close(y, naive_conv(c, x, w, b), 1e-12, 1e-12)) << describe(c);
  }
}

TEST(Conv2d, BackwardMatchesDirectLoopsAndTheFloat64Path) {
  uint64_t seed = 200;
  for (const auto& c : conv_cases()) {
    const ops::Conv2dArgs args{c.stride, c.padding};
    const int64_t oh = out_size(c.h, c.kh, c), ow = out_size(c.w, c.kw, c);
    const Shape x_shape{c.n, c.c, c.h, c.w}, w_shape{c.o, c.c, c.kh, c.kw};
    Tensor x64 = random_tensor(x_shape, seed++, -1, 1, DType::kFloat64);
    Tensor w64 = random_tensor(w_shape, seed++, -1, 1, DType::kFloat64);
    Tensor gy64 = random_tensor({c.n, c.o, oh, ow}, seed++, -1, 1, DType::kFloat64);
    // float64 runs the im2col/col2im reference; it must agree with the direct loops tightly.
    Tensor dx64 = ops::conv2d_backward_input(gy64, w64, x_shape, args);
    Tensor dw64 = ops::conv2d_backward_weight(gy64, x64, w_shape, args);
    EXPECT_TRUE(all_close(dx64, naive_conv_backward_input(c, gy64, w64), 1e-12, 1e-12))
        << describe(c);
    EXPECT_TRUE(all_close(dw64, naive_conv_backward_weight(c, gy64, x64), 1e-12, 1e-12))
        << describe(c);
    // float32 runs oneDNN on the same (float32-representable) values.
    Tensor x = to_dtype(x64, DType::kFloat32), w = to_dtype(w64, DType::kFloat32);
    Tensor gy = to_dtype(gy64, DType::kFloat32);
    Tensor dx = ops::conv2d_backward_input(gy, w, x_shape, args);
    Tensor dw = ops::conv2d_backward_weight(gy, x, w_shape, args);
    EXPECT_EQ(dx.shape(), x_shape);
    EXPECT_EQ(dw.shape(), w_shape);
    EXPECT_TRUE(all_close(dx, dx64, 1e-4, 1e-5)) << "oneDNN dx " << describe(c);
    EXPECT_TRUE(all_close(dw, dw64, 1e-4, 1e-4)) << "oneDNN dw " << describe(c);
    // The bias gradient summed in the weight pass (oneDNN) and on the reference path.
    Tensor db, db64;
    Tensor dw_with_bias = ops::conv2d_backward_weight(gy, x, w_shape, args, &db);
    ops::conv2d_backward_weight(gy64, x64, w_shape, args, &db64);
    ASSERT_EQ(db.shape(), (Shape{c.o})) << describe(c);
    EXPECT_TRUE(all_close(db64, ops::sum(gy64, {0, 2, 3}), 1e-12, 1e-12)) << describe(c);
    EXPECT_TRUE(all_close(db, db64, 1e-4, 1e-5)) << "oneDNN db " << describe(c);
    EXPECT_TRUE(all_close(dw_with_bias, dw64, 1e-4, 1e-4)) << "oneDNN dw with db " << describe(c);
  }
}

// One pass (forward, data or weight gradient) is 2 * N * O * OH * OW * C * KH * KW on every path:
// oneDNN for float32, the im2col reference's GEMMs for float64.
TEST(Conv2d, EachPassCountsItsMultiplyAddsInMatrixFlops) {
  uint64_t seed = 300;
  for (const auto& c : conv_cases()) {
    const ops::Conv2dArgs args{c.stride, c.padding};
    const int64_t oh = out_size(c.h, c.kh, c), ow = out_size(c.w, c.kw, c);
    const uint64_t pass = 2u * c.n * c.o * oh * ow * c.c * c.kh * c.kw;
    for (DType dtype : {DType::kFloat32, DType::kFloat64}) {
      const Tensor x = random_tensor({c.n, c.c, c.h, c.w}, seed++, -1, 1, dtype);
      const Tensor w = random_tensor({c.o, c.c, c.kh, c.kw}, seed++, -1, 1, dtype);
      const Tensor gy = random_tensor({c.n, c.o, oh, ow}, seed++, -1, 1, dtype);
      uint64_t before = ops::matrix_flops();
      ops::conv2d(x, w, Tensor(), args);
      EXPECT_EQ(ops::matrix_flops() - before, pass) << describe(c) << " " << dtype_name(dtype);
      before = ops::matrix_flops();
      ops::conv2d_backward(gy, x, w, args, /*want_input=*/true, /*want_weight=*/true, nullptr);
      EXPECT_EQ(ops::matrix_flops() - before, 2 * pass) << describe(c) << " " << dtype_name(dtype);
      before = ops::matrix_flops();
      ops::conv2d_backward(gy, x, w, args, /*want_input=*/false, /*want_weight=*/true, nullptr);
      EXPECT_EQ(ops::matrix_flops() - before, pass) << describe(c) << " " << dtype_name(dtype);
    }
  }
}

TEST(Conv2d, BackwardIsTheAdjointOfForward) {
  // <conv(x, w), gy> = <x, dx(gy, w)> = <w, dw(gy, x)> for any x, w, gy (conv is bilinear).
  const ConvCase c{2, 3, 9, 7, 4, 3, 3, 2, 1};
  const ops::Conv2dArgs args{c.stride, c.padding};
  Tensor x = random_tensor({c.n, c.c, c.h, c.w}, 300, -1, 1, DType::kFloat64);
  Tensor w = random_tensor({c.o, c.c, c.kh, c.kw}, 301, -1, 1, DType::kFloat64);
  Tensor y = ops::conv2d(x, w, Tensor(), args);
  Tensor gy = random_tensor(y.shape(), 302, -1, 1, DType::kFloat64);
  const auto dot = [](const Tensor& a, const Tensor& b) {
    const auto va = a.to_vector<double>(), vb = b.to_vector<double>();
    double s = 0;
    for (size_t i = 0; i < va.size(); ++i) s += va[i] * vb[i];
    return s;
  };
  const double lhs = dot(y, gy);
  EXPECT_NEAR(dot(x, ops::conv2d_backward_input(gy, w, x.shape(), args)), lhs, 1e-10);
  EXPECT_NEAR(dot(w, ops::conv2d_backward_weight(gy, x, w.shape(), args)), lhs, 1e-10);
}

TEST(Im2col, ColumnsHoldPaddedPatches) {
  const ConvCase c{2, 2, 5, 4, 1, 3, 3, 2, 1};
  Tensor x = random_tensor({c.n, c.c, c.h, c.w}, 310);
  Tensor cols = ops::im2col(x, 3, 3, {c.stride, c.padding});
  const int64_t oh = out_size(c.h, 3, c), ow = out_size(c.w, 3, c);
  ASSERT_EQ(cols.shape(), (Shape{c.n, c.c * 9, oh * ow}));
  const auto vx = x.to_vector<float>(), vc = cols.to_vector<float>();
  for (int64_t n = 0; n < c.n; ++n)
    for (int64_t ch = 0; ch < c.c; ++ch)
      for (int64_t ki = 0; ki < 3; ++ki)
        for (int64_t kj = 0; kj < 3; ++kj)
          for (int64_t oi = 0; oi < oh; ++oi)
            for (int64_t oj = 0; oj < ow; ++oj) {
              const int64_t hi = oi * 2 - 1 + ki, wj = oj * 2 - 1 + kj;
              const bool inside = hi >= 0 && hi < c.h && wj >= 0 && wj < c.w;
              const float expected = inside ? vx[((n * c.c + ch) * c.h + hi) * c.w + wj] : 0.f;
              ASSERT_EQ(vc[((n * c.c * 9) + (ch * 3 + ki) * 3 + kj) * oh * ow + oi * ow + oj],
                        expected);
            }
}

// ---- pooling --------------------------------------------------------------------------------
struct PoolCase {
  Shape x;
  ops::Pool2dArgs args;
};

std::vector<PoolCase> pool_cases() {
  return {{{2, 3, 8, 8}, {2, 2, 0}}, {{1, 2, 7, 9}, {3, 2, 1}}, {{2, 1, 5, 5}, {3, 1, 1}},
          {{1, 2, 9, 7}, {4, 3, 2}}, {{3, 2, 6, 5}, {2, 1, 0}}, {{1, 1, 4, 4}, {1, 1, 0}},
          {{1, 1, 5, 6}, {5, 2, 2}}, {{1, 2, 7, 9}, {2, 2, 0}}, {{2, 3, 28, 28}, {2, 2, 0}},
          {{1, 2, 6, 40}, {2, 2, 0}}};  // rows of 20 windows: whole vectors and a tail
}

std::string describe(const PoolCase& c) {
  std::ostringstream os;
  os << shape_str(c.x) << " kernel " << c.args.kernel << " stride " << c.args.stride << " padding "
     << c.args.padding;
  return os.str();
}

int64_t pool_out(int64_t in, const ops::Pool2dArgs& a) {
  return (in + 2 * a.padding - a.kernel) / a.stride + 1;
}

/// Max over each window that lies inside the input, and the flat in-plane index of the first
/// maximum in row-major window order.
std::pair<std::vector<double>, std::vector<double>> naive_max_pool(const PoolCase& c,
                                                                   const Tensor& x) {
  const auto& a = c.args;
  const int64_t planes = c.x[0] * c.x[1], h = c.x[2], w = c.x[3];
  const int64_t oh = pool_out(h, a), ow = pool_out(w, a);
  const auto v = x.to_vector<double>();
  std::vector<double> out, idx;
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t oi = 0; oi < oh; ++oi)
      for (int64_t oj = 0; oj < ow; ++oj) {
        double best = -std::numeric_limits<double>::infinity();
        int64_t arg = -1;
        for (int64_t ki = 0; ki < a.kernel; ++ki)
          for (int64_t kj = 0; kj < a.kernel; ++kj) {
            const int64_t hi = oi * a.stride - a.padding + ki, wj = oj * a.stride - a.padding + kj;
            if (hi < 0 || hi >= h || wj < 0 || wj >= w) continue;
            const double val = v[(p * h + hi) * w + wj];
            if (arg < 0 || val > best) {
              best = val;
              arg = hi * w + wj;
            }
          }
        out.push_back(best);
        idx.push_back(static_cast<double>(arg));
      }
  return {out, idx};
}

TEST(MaxPool2d, ForwardAndBackwardMatchNaive) {
  uint64_t seed = 400;
  for (const auto& c : pool_cases()) {
    Tensor x = random_tensor(c.x, seed++);
    auto [y, indices] = ops::max_pool2d(x, c.args);
    const Shape y_shape{c.x[0], c.x[1], pool_out(c.x[2], c.args), pool_out(c.x[3], c.args)};
    ASSERT_EQ(y.shape(), y_shape) << describe(c);
    EXPECT_EQ(indices.dtype(), DType::kInt64);
    const auto [ref_y, ref_idx] = naive_max_pool(c, x);
    EXPECT_EQ(y.to_vector<double>(), ref_y) << describe(c);
    EXPECT_EQ(indices.to_vector<double>(), ref_idx) << describe(c);

    // Backward routes each output gradient to its window's maximum (summing overlaps).
    Tensor gy = random_tensor(y_shape, seed++);
    Tensor dx = ops::max_pool2d_backward(gy, indices, c.x);
    // Told the window, a 2x2 stride-2 pool writes dx in one pass (and others still scatter).
    Tensor dx_window = ops::max_pool2d_backward(gy, indices, c.x, c.args);
    const int64_t hw = c.x[2] * c.x[3], ohw = y_shape[2] * y_shape[3];
    std::vector<double> ref_dx(shape_numel(c.x), 0.0);
    const auto vg = gy.to_vector<double>();
    for (size_t o = 0; o < vg.size(); ++o)
      ref_dx[(o / ohw) * hw + static_cast<int64_t>(ref_idx[o])] += vg[o];
    EXPECT_TRUE(all_close(dx, tensor_of(ref_dx, c.x), 1e-6, 1e-7)) << describe(c);
    EXPECT_TRUE(testutil::bit_equal(dx_window, dx)) << describe(c);
  }
}

// The CPU's 2x2 stride-2 path against the shared window body (the CUDA path): equal values keep
// the first in window order, and a NaN is kept only where it comes first.
TEST(MaxPool2d, TwoByTwoPathMatchesTheSharedBodyOnTiesAndNaN) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> v(2 * 6 * 8);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>((i * 7) % 5) - 2.f;  // ties
  v[0] = nan;   // first in its window
  v[11] = nan;  // second row of a window
  v[50] = 3.f;
  v[51] = 3.f;  // a tie on the maximum
  Tensor x = tensor_of(std::vector<double>(v.begin(), v.end()), {1, 2, 6, 8});
  auto [y, indices] = ops::max_pool2d(x, {2, 2, 0});
  std::vector<float> ref_y(2 * 3 * 4);
  std::vector<int64_t> ref_idx(ref_y.size());
  const kernels::MaxPoolForward<float> body{
      v.data(), ref_y.data(), ref_idx.data(), {6, 8, 3, 4, 2, 2, 2, 0}};
  for (int64_t row = 0; row < 2 * 3; ++row) body(row);
  EXPECT_EQ(indices.to_vector<int64_t>(), ref_idx);
  const auto got = y.to_vector<float>();
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(ref_y[i]))
      EXPECT_TRUE(std::isnan(got[i])) << i;
    else
      EXPECT_EQ(got[i], ref_y[i]) << i;
  }
}

// The window-per-item body the CUDA path runs, on the CPU, against the CPU's one-pass backward.
TEST(MaxPool2d, TwoByTwoBackwardWindowBodyMatchesTheCpuPath) {
  for (const Shape& shape : {Shape{2, 3, 8, 8}, Shape{1, 2, 7, 9}, Shape{4, 5, 28, 28}}) {
    Tensor x = random_tensor(shape, 470);
    auto [y, indices] = ops::max_pool2d(x, {2, 2, 0});
    Tensor gy = random_tensor(y.shape(), 471);
    Tensor expected = ops::max_pool2d_backward(gy, indices, shape, ops::Pool2dArgs{2, 2, 0});
    Tensor dx = zeros(shape);
    const kernels::MaxPool2x2BackwardWindows<float> body{
        gy.data<float>(), indices.data<int64_t>(), dx.data<float>(), shape[2], shape[3], y.size(2),
        y.size(3)};
    for (int64_t o = 0; o < y.numel(); ++o) body(o);
    EXPECT_TRUE(testutil::bit_equal(dx, expected)) << shape_str(shape);
  }
}

TEST(MaxPool2d, AllNegativeInputIgnoresPadding) {
  // Padding must not act as zeros: every output of an all-negative input stays negative.
  Tensor x = random_tensor({1, 1, 4, 4}, 450, -2, -1);
  auto [y, indices] = ops::max_pool2d(x, {3, 1, 1});
  for (float v : y.to_vector<float>()) EXPECT_LT(v, -0.99f);
}

/// PyTorch's count_include_pad=True average: the divisor is the window clipped to the padded
/// border, the sum covers the window clipped to the input.
Tensor naive_avg_pool(const PoolCase& c, const Tensor& x) {
  const auto& a = c.args;
  const int64_t planes = c.x[0] * c.x[1], h = c.x[2], w = c.x[3];
  const int64_t oh = pool_out(h, a), ow = pool_out(w, a);
  const auto v = x.to_vector<double>();
  std::vector<double> out;
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t oi = 0; oi < oh; ++oi)
      for (int64_t oj = 0; oj < ow; ++oj) {
        double sum = 0;
        int64_t divisor = 0;
        for (int64_t ki = 0; ki < a.kernel; ++ki)
          for (int64_t kj = 0; kj < a.kernel; ++kj) {
            const int64_t hi = oi * a.stride - a.padding + ki, wj = oj * a.stride - a.padding + kj;
            if (hi >= h + a.padding || wj >= w + a.padding) continue;  // past the padded border
            ++divisor;
            if (hi >= 0 && hi < h && wj >= 0 && wj < w) sum += v[(p * h + hi) * w + wj];
          }
        out.push_back(sum / divisor);
      }
  return tensor_of(out, {c.x[0], c.x[1], oh, ow}, x.dtype());
}

TEST(AvgPool2d, ForwardMatchesCountIncludePadDivisor) {
  uint64_t seed = 500;
  for (const auto& c : pool_cases()) {
    Tensor x = random_tensor(c.x, seed++);
    EXPECT_TRUE(all_close(ops::avg_pool2d(x, c.args), naive_avg_pool(c, x), 1e-5, 1e-6))
        << describe(c);
  }
  // A hand-checked corner: ones, kernel 3, padding 1 -> the corner window covers 4 of 9 cells.
  Tensor ones4 = ones({1, 1, 4, 4});
  EXPECT_FLOAT_EQ(ops::avg_pool2d(ones4, {3, 1, 1}).to_vector<float>()[0], 4.f / 9.f);
}

TEST(AvgPool2d, BackwardIsTheAdjointOfForward) {
  uint64_t seed = 600;
  for (const auto& c : pool_cases()) {
    // avg_pool is linear, so backward(gy) must satisfy <pool(x), gy> = <x, backward(gy)> for all x;
    // checking it on every basis vector x = e_i gives backward(gy)[i] exactly.
    Tensor gy = random_tensor({c.x[0], c.x[1], pool_out(c.x[2], c.args), pool_out(c.x[3], c.args)},
                              seed++, -1, 1, DType::kFloat64);
    Tensor dx = ops::avg_pool2d_backward(gy, c.x, c.args);
    ASSERT_EQ(dx.shape(), c.x);
    const auto vg = gy.to_vector<double>();
    std::vector<double> ref(shape_numel(c.x));
    Tensor e = zeros(c.x, DType::kFloat64);
    for (int64_t i = 0; i < e.numel(); ++i) {
      e.data<double>()[i] = 1;
      const auto y = naive_avg_pool(c, e).to_vector<double>();
      e.data<double>()[i] = 0;
      double s = 0;
      for (size_t k = 0; k < y.size(); ++k) s += y[k] * vg[k];
      ref[i] = s;
    }
    EXPECT_TRUE(all_close(dx, tensor_of(ref, c.x, DType::kFloat64), 1e-12, 1e-12)) << describe(c);
  }
}

}  // namespace
}  // namespace dtrain
