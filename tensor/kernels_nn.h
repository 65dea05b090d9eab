// Kernel bodies of the structured ops (softmax family, losses, normalisation, pooling, im2col,
// indexing, random fills) as functors over one work item: a line, row, channel, plane or element.
// tensor/run.h runs them with the CPU loop or on CUDA, so their arithmetic is tested everywhere.
// Every functor writes only its own work item's outputs, so items run in any order and results
// do not depend on thread count or device.
#pragma once

#include <cmath>
#include <cstdint>

#include "dtrain/tensor/kernels.h"

// Vectorised sum reductions on the CPU: OpenMP SIMD fixes the reduction order for a given build,
// so results stay bit-identical from run to run. Ignored in CUDA device code.
#if defined(__CUDA_ARCH__)
#define DTRAIN_SIMD_SUM(...)
#else
#define DTRAIN_PRAGMA(text) _Pragma(#text)
#define DTRAIN_SIMD_SUM(...) DTRAIN_PRAGMA(omp simd reduction(+ : __VA_ARGS__))
#endif

namespace dtrain::kernels {

/// x viewed as [outer, r, inner]; item = one line (outer * inner of them) along r.
template <class T>
struct SoftmaxLines {
  const T* x;
  T* y;
  int64_t r, inner;
  bool log;
  DTRAIN_HD void operator()(int64_t line) const {
    const T* px = x + (line / inner) * r * inner + line % inner;
    T* py = y + (line / inner) * r * inner + line % inner;
    T mx = px[0];
    for (int64_t k = 1; k < r; ++k) mx = px[k * inner] > mx ? px[k * inner] : mx;
    T sum = 0;
    for (int64_t k = 0; k < r; ++k) sum += std::exp(px[k * inner] - mx);
    if (log) {
      const T lse = std::log(sum);
      for (int64_t k = 0; k < r; ++k) py[k * inner] = px[k * inner] - mx - lse;
    } else {
      const T inv = T(1) / sum;
      for (int64_t k = 0; k < r; ++k) py[k * inner] = std::exp(px[k * inner] - mx) * inv;
    }
  }
};

/// Gradient of softmax (log = false) or log_softmax (log = true) from its output y.
template <class T>
struct SoftmaxBackwardLines {
  const T* y;
  const T* gy;
  T* dx;
  int64_t r, inner;
  bool log;
  DTRAIN_HD void operator()(int64_t line) const {
    const int64_t base = (line / inner) * r * inner + line % inner;
    T dot = 0;
    for (int64_t k = 0; k < r; ++k) {
      const int64_t i = base + k * inner;
      dot += log ? gy[i] : gy[i] * y[i];
    }
    for (int64_t k = 0; k < r; ++k) {
      const int64_t i = base + k * inner;
      dx[i] = log ? gy[i] - std::exp(y[i]) * dot : y[i] * (gy[i] - dot);
    }
  }
};

/// Cross-entropy of one row of logits [N, C] with label smoothing: writes the row's loss and its
/// softmax probabilities (which the backward pass needs).
template <class T>
struct CrossEntropyRows {
  const T* logits;
  const int64_t* targets;
  T* probs;
  T* row_loss;
  int64_t c;
  double smoothing;
  DTRAIN_HD void operator()(int64_t row) const {
    const T* x = logits + row * c;
    T* p = probs + row * c;
    T mx = x[0];
    for (int64_t j = 1; j < c; ++j) mx = x[j] > mx ? x[j] : mx;
    double sum = 0;
    for (int64_t j = 0; j < c; ++j) sum += std::exp(static_cast<double>(x[j] - mx));
    const double lse = std::log(sum) + static_cast<double>(mx);
    double all = 0;
    for (int64_t j = 0; j < c; ++j) {
      const double logp = static_cast<double>(x[j]) - lse;
      all += logp;
      p[j] = static_cast<T>(std::exp(logp));
    }
    const double target_logp = static_cast<double>(x[targets[row]]) - lse;
    row_loss[row] = static_cast<T>(-(1 - smoothing) * target_logp - smoothing * all / c);
  }
};

/// d(loss)/d(logits) = (p - smoothed one-hot) * scale; item = one element.
template <class T>
struct CrossEntropyBackward {
  const T* probs;
  const int64_t* targets;
  T* dx;
  int64_t c;
  T scale, on, off;
  DTRAIN_HD void operator()(int64_t i) const {
    const int64_t row = i / c, j = i % c;
    dx[i] = (probs[i] - (j == targets[row] ? on : off)) * scale;
  }
};

/// -log_probs[row, target] per row (NLL forward), and its gradient (item = one row).
template <class T>
struct NllRows {
  const T* log_probs;
  const int64_t* targets;
  T* row_loss;
  int64_t c;
  DTRAIN_HD void operator()(int64_t row) const {
    row_loss[row] = -log_probs[row * c + targets[row]];
  }
};
template <class T>
struct NllBackwardRows {
  const int64_t* targets;
  T* dx;  // zero-initialised [N, C]
  int64_t c;
  T value;
  DTRAIN_HD void operator()(int64_t row) const { dx[row * c + targets[row]] = value; }
};

/// Layer norm over rows of length `group`; mean and rstd per row are saved for backward.
template <class T>
struct LayerNormRows {
  const T* x;
  const T* w;  // may be null
  const T* b;  // may be null
  T* y;
  T* mean;
  T* rstd;
  int64_t group;
  double eps;
  DTRAIN_HD void operator()(int64_t row) const {
    const T* px = x + row * group;
    double m = 0, var = 0;
    for (int64_t k = 0; k < group; ++k) m += px[k];
    m /= group;
    for (int64_t k = 0; k < group; ++k) var += (px[k] - m) * (px[k] - m);
    var /= group;
    const T r = static_cast<T>(1.0 / std::sqrt(var + eps));
    mean[row] = static_cast<T>(m);
    rstd[row] = r;
    for (int64_t k = 0; k < group; ++k) {
      T v = (px[k] - mean[row]) * r;
      if (w) v = v * w[k];
      if (b) v = v + b[k];
      y[row * group + k] = v;
    }
  }
};

template <class T>
struct LayerNormBackwardRows {
  const T* x;
  const T* gy;
  const T* w;
  const T* mean;
  const T* rstd;
  T* dx;
  int64_t group;
  DTRAIN_HD void operator()(int64_t row) const {
    const int64_t base = row * group;
    double sum_d = 0, sum_dx = 0;
    for (int64_t k = 0; k < group; ++k) {
      const T xhat = (x[base + k] - mean[row]) * rstd[row];
      const T d = gy[base + k] * (w ? w[k] : T(1));
      sum_d += d;
      sum_dx += d * xhat;
    }
    const T m1 = static_cast<T>(sum_d / group), m2 = static_cast<T>(sum_dx / group);
    for (int64_t k = 0; k < group; ++k) {
      const T xhat = (x[base + k] - mean[row]) * rstd[row];
      const T d = gy[base + k] * (w ? w[k] : T(1));
      dx[base + k] = rstd[row] * (d - m1 - xhat * m2);
    }
  }
};

/// Weight and bias gradients of layer norm; item = one column, rows summed in order.
template <class T>
struct LayerNormParamGradColumns {
  const T* x;
  const T* gy;
  const T* mean;
  const T* rstd;
  T* dw;
  T* db;
  int64_t rows, group;
  DTRAIN_HD void operator()(int64_t k) const {
    T sw = 0, sb = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const T g = gy[r * group + k];
      sw += g * (x[r * group + k] - mean[r]) * rstd[r];
      sb += g;
    }
    dw[k] = sw;
    db[k] = sb;
  }
};

/// Batch norm of one channel of x [N, C, HW]; in training, batch statistics (and running stats
/// with the unbiased variance), otherwise the running stats.
template <class T>
struct BatchNormChannels {
  const T* x;
  const T* w;
  const T* b;
  T* y;
  T* mean_out;
  T* rstd_out;
  T* running_mean;  // may be null
  T* running_var;
  int64_t n, c, hw;
  bool training;
  double momentum, eps;
  DTRAIN_HD void operator()(int64_t ch) const {
    const int64_t count = n * hw;
    double m, var;
    if (training) {
      // Per-row float sums (vectorised), accumulated across rows in double.
      m = 0;
      for (int64_t i = 0; i < n; ++i) {
        const T* row = x + (i * c + ch) * hw;
        T s = 0;
        DTRAIN_SIMD_SUM(s)
        for (int64_t k = 0; k < hw; ++k) s += row[k];
        m += s;
      }
      m /= count;
      var = 0;
      const T mt = static_cast<T>(m);
      for (int64_t i = 0; i < n; ++i) {
        const T* row = x + (i * c + ch) * hw;
        T s = 0;
        DTRAIN_SIMD_SUM(s)
        for (int64_t k = 0; k < hw; ++k) s += (row[k] - mt) * (row[k] - mt);
        var += s;
      }
      var /= count;
      if (running_mean) {
        running_mean[ch] = static_cast<T>((1 - momentum) * running_mean[ch] + momentum * m);
        running_var[ch] =
            static_cast<T>((1 - momentum) * running_var[ch] + momentum * var * count / (count - 1));
      }
    } else {
      m = running_mean[ch];
      var = running_var[ch];
    }
    const T mt = static_cast<T>(m), r = static_cast<T>(1.0 / std::sqrt(var + eps));
    mean_out[ch] = mt;
    rstd_out[ch] = r;
    const T wc = w ? w[ch] : T(1), bc = b ? b[ch] : T(0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < hw; ++k) {
        const int64_t at = (i * c + ch) * hw + k;
        y[at] = (x[at] - mt) * r * wc + bc;
      }
  }
};

template <class T>
struct BatchNormBackwardChannels {
  const T* x;
  const T* gy;
  const T* w;
  const T* mean;
  const T* rstd;
  T* dx;
  T* dw;
  T* db;
  int64_t n, c, hw;
  bool training;
  DTRAIN_HD void operator()(int64_t ch) const {
    const int64_t count = n * hw;
    const T mt = mean[ch], r = rstd[ch], wc = w ? w[ch] : T(1);
    double sum_g = 0, sum_gx = 0;
    for (int64_t i = 0; i < n; ++i) {
      const T* g_row = gy + (i * c + ch) * hw;
      const T* x_row = x + (i * c + ch) * hw;
      T sg = 0, sgx = 0;
      DTRAIN_SIMD_SUM(sg, sgx)
      for (int64_t k = 0; k < hw; ++k) {
        sg += g_row[k];
        sgx += g_row[k] * (x_row[k] - mt) * r;
      }
      sum_g += sg;
      sum_gx += sgx;
    }
    dw[ch] = static_cast<T>(sum_gx);
    db[ch] = static_cast<T>(sum_g);
    const T m1 = static_cast<T>(wc * sum_g / count), m2 = static_cast<T>(wc * sum_gx / count);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < hw; ++k) {
        const int64_t at = (i * c + ch) * hw + k;
        const T xhat = (x[at] - mt) * r;
        dx[at] = training ? r * (gy[at] * wc - m1 - xhat * m2) : gy[at] * wc * r;
      }
  }
};

/// Max along r of x [outer, r, inner]; item = one output. The first maximum wins; NaN propagates.
template <class T>
struct MaxLines {
  const T* x;
  T* values;
  int64_t* indices;
  int64_t r, inner;
  DTRAIN_HD void operator()(int64_t idx) const {
    const T* base = x + (idx / inner) * r * inner + idx % inner;
    T best = base[0];
    int64_t arg = 0;
    for (int64_t k = 1; k < r; ++k) {
      const T v = base[k * inner];
      if (v > best || (v != v && best == best)) {
        best = v;
        arg = k;
      }
    }
    values[idx] = best;
    indices[idx] = arg;
  }
};
/// Routes each output's gradient to its maximum in a zeroed dx; outputs own distinct elements.
template <class T>
struct MaxLinesBackward {
  const T* gy;
  const int64_t* indices;
  T* dx;
  int64_t r, inner;
  DTRAIN_HD void operator()(int64_t idx) const {
    const int64_t o = idx / inner, i = idx % inner;
    dx[(o * r + indices[idx]) * inner + i] = gy[idx];
  }
};

/// Geometry shared by pooling and im2col: planes of h x w, windows k x k, stride, padding.
struct Window2d {
  int64_t h, w, oh, ow, kh, kw, stride, padding;
};

/// Max pooling; item = one output row (plane p, row oi) of [planes, oh, ow]; the index is the
/// flat position of the maximum in its plane.
template <class T>
struct MaxPoolForward {
  const T* x;
  T* y;
  int64_t* indices;
  Window2d g;
  DTRAIN_HD void operator()(int64_t row) const {
    const int64_t p = row / g.oh, oi = row % g.oh;
    const T* plane = x + p * g.h * g.w;
    for (int64_t oj = 0; oj < g.ow; ++oj) {
      T best = 0;
      int64_t arg = -1;
      for (int64_t ki = 0; ki < g.kh; ++ki) {
        const int64_t hi = oi * g.stride - g.padding + ki;
        if (hi < 0 || hi >= g.h) continue;
        for (int64_t kj = 0; kj < g.kw; ++kj) {
          const int64_t wj = oj * g.stride - g.padding + kj;
          if (wj < 0 || wj >= g.w) continue;
          const T v = plane[hi * g.w + wj];
          if (arg < 0 || v > best) {
            best = v;
            arg = hi * g.w + wj;
          }
        }
      }
      y[row * g.ow + oj] = best;
      indices[row * g.ow + oj] = arg;
    }
  }
};
/// item = one plane (outputs of a plane may share a maximum, so a plane is one work item).
template <class T>
struct MaxPoolBackwardPlanes {
  const T* gy;
  const int64_t* indices;
  T* dx;  // zeroed
  int64_t hw, ohw;
  DTRAIN_HD void operator()(int64_t p) const {
    for (int64_t o = 0; o < ohw; ++o) dx[p * hw + indices[p * ohw + o]] += gy[p * ohw + o];
  }
};

/// Backward of a 2x2, stride 2, unpadded max pool; item = one output window, which writes the
/// four input gradients it covers (the windows do not overlap, so items never share an output).
/// An odd last row or column of dx, which no window covers, must be zeroed by the caller.
template <class T>
struct MaxPool2x2BackwardWindows {
  const T* gy;
  const int64_t* indices;
  T* dx;
  int64_t h, w, oh, ow;
  DTRAIN_HD void operator()(int64_t o) const {
    const int64_t p = o / (oh * ow), within = o % (oh * ow);
    const int64_t oi = within / ow, oj = within % ow;
    const int64_t left = 2 * oi * w + 2 * oj;  // the window's top-left corner in its plane
    const int64_t at = indices[o];
    const T v = gy[o];
    T* plane = dx + p * h * w;
    plane[left] = at == left ? v : T(0);
    plane[left + 1] = at == left + 1 ? v : T(0);
    plane[left + w] = at == left + w ? v : T(0);
    plane[left + w + 1] = at == left + w + 1 ? v : T(0);
  }
};

/// PyTorch's average-pool window (count_include_pad=True): the divisor counts padding but not the
/// part of the window past the padded border.
DTRAIN_HD void avg_window(const Window2d& g, int64_t oi, int64_t oj, int64_t& h0, int64_t& h1,
                          int64_t& w0, int64_t& w1, int64_t& divisor) {
  h0 = oi * g.stride - g.padding;
  w0 = oj * g.stride - g.padding;
  h1 = h0 + g.kh < g.h + g.padding ? h0 + g.kh : g.h + g.padding;
  w1 = w0 + g.kw < g.w + g.padding ? w0 + g.kw : g.w + g.padding;
  divisor = (h1 - h0) * (w1 - w0);
  h0 = h0 > 0 ? h0 : 0;
  w0 = w0 > 0 ? w0 : 0;
  h1 = h1 < g.h ? h1 : g.h;
  w1 = w1 < g.w ? w1 : g.w;
}

/// Average pooling; item = one output row (plane p, row oi).
template <class T>
struct AvgPoolForward {
  const T* x;
  T* y;
  Window2d g;
  DTRAIN_HD void operator()(int64_t row) const {
    const int64_t p = row / g.oh, oi = row % g.oh;
    for (int64_t oj = 0; oj < g.ow; ++oj) {
      int64_t h0, h1, w0, w1, divisor;
      avg_window(g, oi, oj, h0, h1, w0, w1, divisor);
      T acc = 0;
      for (int64_t hi = h0; hi < h1; ++hi)
        for (int64_t wj = w0; wj < w1; ++wj) acc += x[(p * g.h + hi) * g.w + wj];
      y[row * g.ow + oj] = acc / T(divisor);
    }
  }
};
template <class T>
struct AvgPoolBackwardPlanes {
  const T* gy;
  T* dx;  // zeroed
  Window2d g;
  DTRAIN_HD void operator()(int64_t p) const {
    for (int64_t oi = 0; oi < g.oh; ++oi)
      for (int64_t oj = 0; oj < g.ow; ++oj) {
        int64_t h0, h1, w0, w1, divisor;
        avg_window(g, oi, oj, h0, h1, w0, w1, divisor);
        const T v = gy[(p * g.oh + oi) * g.ow + oj] / T(divisor);
        for (int64_t hi = h0; hi < h1; ++hi)
          for (int64_t wj = w0; wj < w1; ++wj) dx[(p * g.h + hi) * g.w + wj] += v;
      }
  }
};

/// im2col of x [N, C, H, W] into cols [N, C*KH*KW, OH*OW]; item = one row (n, c, ki, kj).
template <class T>
struct Im2colRows {
  const T* x;
  T* cols;
  int64_t c;
  Window2d g;
  DTRAIN_HD void operator()(int64_t row) const {
    const int64_t kk = g.kh * g.kw, n = row / (c * kk), rc = row % (c * kk);
    const int64_t ch = rc / kk, ki = (rc % kk) / g.kw, kj = rc % g.kw;
    const T* plane = x + (n * c + ch) * g.h * g.w;
    T* out = cols + row * g.oh * g.ow;
    for (int64_t oi = 0; oi < g.oh; ++oi) {
      const int64_t hi = oi * g.stride - g.padding + ki;
      for (int64_t oj = 0; oj < g.ow; ++oj) {
        const int64_t wj = oj * g.stride - g.padding + kj;
        out[oi * g.ow + oj] =
            hi >= 0 && hi < g.h && wj >= 0 && wj < g.w ? plane[hi * g.w + wj] : T(0);
      }
    }
  }
};
/// The adjoint of im2col, accumulating into a zeroed x; item = one plane (n, c).
template <class T>
struct Col2imPlanes {
  const T* cols;
  T* x;
  int64_t c;
  Window2d g;
  DTRAIN_HD void operator()(int64_t plane) const {
    const int64_t kk = g.kh * g.kw, n = plane / c, ch = plane % c;
    T* out = x + plane * g.h * g.w;
    for (int64_t ki = 0; ki < g.kh; ++ki)
      for (int64_t kj = 0; kj < g.kw; ++kj) {
        const T* row = cols + (n * c * kk + ch * kk + ki * g.kw + kj) * g.oh * g.ow;
        for (int64_t oi = 0; oi < g.oh; ++oi) {
          const int64_t hi = oi * g.stride - g.padding + ki;
          if (hi < 0 || hi >= g.h) continue;
          for (int64_t oj = 0; oj < g.ow; ++oj) {
            const int64_t wj = oj * g.stride - g.padding + kj;
            if (wj >= 0 && wj < g.w) out[hi * g.w + wj] += row[oi * g.ow + oj];
          }
        }
      }
  }
};

/// Embedding gather (item = one output element) and its scatter-add (item = one column d, so
/// repeated indices accumulate in index order).
template <class T>
struct EmbeddingGather {
  const T* weight;
  const int64_t* indices;
  T* out;
  int64_t d;
  DTRAIN_HD void operator()(int64_t i) const { out[i] = weight[indices[i / d] * d + i % d]; }
};
template <class T>
struct EmbeddingScatterColumns {
  const T* gy;
  const int64_t* indices;
  T* dw;  // zeroed
  int64_t count, d;
  DTRAIN_HD void operator()(int64_t k) const {
    for (int64_t i = 0; i < count; ++i) dw[indices[i] * d + k] += gy[i * d + k];
  }
};

/// out[i] = cond[ic] ? a[ia] : b[ib] with broadcasting (two index maps: a/b and cond/cond).
template <class T>
struct WhereElements {
  const bool* cond;
  const T* a;
  const T* b;
  T* out;
  BroadcastIndex ab, c;
  DTRAIN_HD void operator()(int64_t i) const {
    int64_t ia, ib, ic, unused;
    ab.offsets(i, ia, ib);
    c.offsets(i, ic, unused);
    out[i] = cond[ic] ? a[ia] : b[ib];
  }
};

/// out[i] = x[source(i)] for broadcasting (expand) and permutation alike: the index map's `a`
/// strides give the source offset. E is an unsigned type of the element's size.
template <class E>
struct GatherElements {
  const E* x;
  E* out;
  BroadcastIndex index;
  DTRAIN_HD void operator()(int64_t i) const {
    int64_t src, unused;
    index.offsets(i, src, unused);
    out[i] = x[src];
  }
};

/// Random fills from Philox (seed, stream, block offset): uniform in [low, high), normal, and
/// dropout masks (1 / (1 - p) with probability 1 - p, else 0). Item = one element.
template <class T>
struct UniformFill {
  T* out;
  uint64_t seed, stream, offset;
  double low, high;
  DTRAIN_HD void operator()(int64_t i) const {
    out[i] = static_cast<T>(low + (high - low) * philox_uniform(seed, stream, offset, i));
  }
};
template <class T>
struct NormalFill {
  T* out;
  uint64_t seed, stream, offset;
  double mean, std;
  DTRAIN_HD void operator()(int64_t i) const {
    out[i] = static_cast<T>(mean + std * philox_normal(seed, stream, offset, i));
  }
};
template <class T>
struct DropoutMaskFill {
  T* out;
  uint64_t seed, stream, offset;
  double p;
  DTRAIN_HD void operator()(int64_t i) const {
    const T keep = p < 1 ? static_cast<T>(1.0 / (1.0 - p)) : T(0);
    out[i] = philox_uniform(seed, stream, offset, i) >= p ? keep : T(0);
  }
};

}  // namespace dtrain::kernels
