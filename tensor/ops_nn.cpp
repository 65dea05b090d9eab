// Softmax family, fused softmax-cross-entropy, layer and batch norm, embedding, shape ops, dropout.
#include <cmath>
#include <cstring>

#include "tensor/cpu/parallel.h"
#include "tensor/dispatch.h"
#include "tensor/ops.h"

namespace dtrain::ops {
namespace {

struct Split {
  int64_t outer = 1, r = 1, inner = 1;
};
Split split_at(const Shape& shape, int64_t dim) {
  Split s;
  for (int64_t d = 0; d < static_cast<int64_t>(shape.size()); ++d) {
    if (d < dim) s.outer *= shape[d];
    else if (d == dim) s.r = shape[d];
    else s.inner *= shape[d];
  }
  return s;
}

/// Runs f(T{}, x_ptr, y_ptr, split) over lines along dim; used by the softmax family.
template <class T, class F>
void for_each_line(const Split& s, F&& f) {
  cpu::parallel_for(s.outer * s.inner, std::max<int64_t>(1, 4096 / std::max<int64_t>(s.r, 1)),
                    [&](int64_t b, int64_t e) {
                      for (int64_t idx = b; idx < e; ++idx) {
                        const int64_t o = idx / s.inner, i = idx % s.inner;
                        f(o * s.r * s.inner + i);
                      }
                    });
}

Tensor softmax_impl(const Tensor& x, int64_t dim, bool log) {
  const char* op = log ? "log_softmax" : "softmax";
  detail::check_defined(op, x, "input");
  detail::check_cpu(op, x);
  dim = normalize_dim(dim, x.dim(), op);
  const Split s = split_at(x.shape(), dim);
  Tensor y(x.shape(), x.dtype());
  detail::dispatch_floating(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    for_each_line<T>(s, [&](int64_t base) {
      const int64_t st = s.inner;
      T mx = px[base];
      for (int64_t k = 1; k < s.r; ++k) mx = std::max(mx, px[base + k * st]);
      T sum = 0;
      for (int64_t k = 0; k < s.r; ++k) sum += std::exp(px[base + k * st] - mx);
      if (log) {
        const T lse = std::log(sum);
        for (int64_t k = 0; k < s.r; ++k) py[base + k * st] = px[base + k * st] - mx - lse;
      } else {
        const T inv = T(1) / sum;
        for (int64_t k = 0; k < s.r; ++k) py[base + k * st] = std::exp(px[base + k * st] - mx) * inv;
      }
    });
  });
  return y;
}

Tensor softmax_backward_impl(const Tensor& y, const Tensor& gy, int64_t dim, bool log) {
  detail::check_same("softmax backward", y, gy);
  dim = normalize_dim(dim, y.dim(), "softmax backward");
  const Split s = split_at(y.shape(), dim);
  Tensor dx(y.shape(), y.dtype());
  detail::dispatch_floating(y.dtype(), "softmax backward", [&](auto tag) {
    using T = decltype(tag);
    const T* py = y.data<T>();
    const T* pg = gy.data<T>();
    T* pd = dx.data<T>();
    for_each_line<T>(s, [&](int64_t base) {
      const int64_t st = s.inner;
      T dot = 0;
      for (int64_t k = 0; k < s.r; ++k) {
        const int64_t i = base + k * st;
        dot += log ? pg[i] : pg[i] * py[i];
      }
      for (int64_t k = 0; k < s.r; ++k) {
        const int64_t i = base + k * st;
        pd[i] = log ? pg[i] - std::exp(py[i]) * dot : py[i] * (pg[i] - dot);
      }
    });
  });
  return dx;
}

void check_targets(const char* op, const Tensor& logits, const Tensor& targets) {
  DTRAIN_CHECK(logits.dim() == 2, op, ": input must be [N, C]; got ", logits.describe());
  DTRAIN_CHECK(targets.dtype() == DType::kInt64 && targets.dim() == 1 &&
                   targets.size(0) == logits.size(0),
               op, ": targets must be int64 [", logits.size(0), "]; got ", targets.describe());
  const int64_t* t = targets.data<int64_t>();
  for (int64_t i = 0; i < targets.numel(); ++i) {
    if (t[i] < 0 || t[i] >= logits.size(1)) {
      DTRAIN_THROW(ValueError, op, ": target ", t[i], " at position ", i, " is outside [0, ",
                   logits.size(1), ")");
    }
  }
}

}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) { return softmax_impl(x, dim, false); }
Tensor log_softmax(const Tensor& x, int64_t dim) { return softmax_impl(x, dim, true); }
Tensor softmax_backward(const Tensor& y, const Tensor& gy, int64_t dim) {
  return softmax_backward_impl(y, gy, dim, false);
}
Tensor log_softmax_backward(const Tensor& y, const Tensor& gy, int64_t dim) {
  return softmax_backward_impl(y, gy, dim, true);
}

std::pair<Tensor, Tensor> softmax_cross_entropy(const Tensor& logits, const Tensor& targets,
                                                double label_smoothing) {
  detail::check_cpu("cross_entropy", logits);
  check_targets("cross_entropy", logits, targets);
  DTRAIN_CHECK(label_smoothing >= 0 && label_smoothing <= 1,
               "cross_entropy: label_smoothing must be in [0, 1]; got ", label_smoothing);
  Tensor logp = log_softmax(logits, 1);
  const int64_t n = logits.size(0), c = logits.size(1);
  Tensor loss({}, logits.dtype());
  const int64_t* t = targets.data<int64_t>();
  detail::dispatch_floating(logits.dtype(), "cross_entropy", [&](auto tag) {
    using T = decltype(tag);
    T* lp = logp.data<T>();
    double total = 0;
    for (int64_t i = 0; i < n; ++i) {
      double row = -(1 - label_smoothing) * lp[i * c + t[i]];
      if (label_smoothing > 0) {
        double all = 0;
        for (int64_t j = 0; j < c; ++j) all += lp[i * c + j];
        row -= label_smoothing * all / c;
      }
      total += row;
    }
    loss.data<T>()[0] = static_cast<T>(n > 0 ? total / n : 0.0);
    // Keep the probabilities, which the backward pass needs, in place of the log-probabilities.
    for (int64_t i = 0; i < n * c; ++i) lp[i] = std::exp(lp[i]);
  });
  return {loss, logp};
}

Tensor softmax_cross_entropy_backward(const Tensor& probs, const Tensor& targets, double grad_loss,
                                      double label_smoothing) {
  const int64_t n = probs.size(0), c = probs.size(1);
  Tensor d(probs.shape(), probs.dtype());
  const int64_t* t = targets.data<int64_t>();
  detail::dispatch_floating(probs.dtype(), "cross_entropy backward", [&](auto tag) {
    using T = decltype(tag);
    const T* p = probs.data<T>();
    T* pd = d.data<T>();
    const T scale = static_cast<T>(grad_loss / std::max<int64_t>(n, 1));
    const T off = static_cast<T>(label_smoothing / c);
    const T on = static_cast<T>(1 - label_smoothing) + off;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < c; ++j) pd[i * c + j] = (p[i * c + j] - (j == t[i] ? on : off)) * scale;
  });
  return d;
}

// ---- normalisation --------------------------------------------------------------------------
std::pair<Tensor, NormStats> layer_norm(const Tensor& x, int64_t group, const Tensor& weight,
                                        const Tensor& bias, double eps) {
  detail::check_cpu("layer_norm", x);
  DTRAIN_CHECK(group > 0 && x.numel() % group == 0, "layer_norm: normalised size ", group,
               " does not divide ", x.describe());
  if (weight.defined()) {
    DTRAIN_CHECK(weight.numel() == group, "layer_norm: weight ", weight.describe(), " must have ",
                 group, " elements");
    detail::check_same("layer_norm", x, weight);
  }
  if (bias.defined()) {
    DTRAIN_CHECK(bias.numel() == group, "layer_norm: bias ", bias.describe(), " must have ", group,
                 " elements");
  }
  const int64_t rows = x.numel() / group;
  Tensor y(x.shape(), x.dtype());
  NormStats st{Tensor({rows}, x.dtype()), Tensor({rows}, x.dtype())};
  detail::dispatch_floating(x.dtype(), "layer_norm", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    const T* pw = weight.defined() ? weight.data<T>() : nullptr;
    const T* pb = bias.defined() ? bias.data<T>() : nullptr;
    T* pm = st.mean.data<T>();
    T* pr = st.rstd.data<T>();
    cpu::parallel_for(rows, 64, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* row = px + r * group;
        double mean = 0, var = 0;
        for (int64_t k = 0; k < group; ++k) mean += row[k];
        mean /= group;
        for (int64_t k = 0; k < group; ++k) var += (row[k] - mean) * (row[k] - mean);
        var /= group;
        const T rstd = static_cast<T>(1.0 / std::sqrt(var + eps));
        pm[r] = static_cast<T>(mean);
        pr[r] = rstd;
        for (int64_t k = 0; k < group; ++k) {
          T v = (row[k] - pm[r]) * rstd;
          if (pw) v = v * pw[k];
          if (pb) v = v + pb[k];
          py[r * group + k] = v;
        }
      }
    });
  });
  return {y, st};
}

std::vector<Tensor> layer_norm_backward(const Tensor& gy, const Tensor& x, const NormStats& st,
                                        const Tensor& weight, int64_t group) {
  const int64_t rows = x.numel() / group;
  Tensor dx(x.shape(), x.dtype());
  Tensor dw = zeros({group}, x.dtype()), db = zeros({group}, x.dtype());
  detail::dispatch_floating(x.dtype(), "layer_norm backward", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    const T* pg = gy.data<T>();
    const T* pw = weight.defined() ? weight.data<T>() : nullptr;
    const T* pm = st.mean.data<T>();
    const T* pr = st.rstd.data<T>();
    T* pd = dx.data<T>();
    cpu::parallel_for(rows, 64, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        double sum_dxhat = 0, sum_dxhat_xhat = 0;
        for (int64_t k = 0; k < group; ++k) {
          const T xhat = (px[r * group + k] - pm[r]) * pr[r];
          const T dxhat = pg[r * group + k] * (pw ? pw[k] : T(1));
          sum_dxhat += dxhat;
          sum_dxhat_xhat += dxhat * xhat;
        }
        const T m1 = static_cast<T>(sum_dxhat / group), m2 = static_cast<T>(sum_dxhat_xhat / group);
        for (int64_t k = 0; k < group; ++k) {
          const T xhat = (px[r * group + k] - pm[r]) * pr[r];
          const T dxhat = pg[r * group + k] * (pw ? pw[k] : T(1));
          pd[r * group + k] = pr[r] * (dxhat - m1 - xhat * m2);
        }
      }
    });
    // Parameter gradients: a fixed row order for determinism.
    T* pdw = dw.data<T>();
    T* pdb = db.data<T>();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k = 0; k < group; ++k) {
        const T xhat = (px[r * group + k] - pm[r]) * pr[r];
        pdw[k] += pg[r * group + k] * xhat;
        pdb[k] += pg[r * group + k];
      }
  });
  return {dx, dw, db};
}

namespace {
struct ChannelLayout {
  int64_t n, c, hw;
};
ChannelLayout channel_layout(const Tensor& x) {
  DTRAIN_CHECK(x.dim() == 2 || x.dim() == 4, "batch_norm: input must be [N, C] or [N, C, H, W]; got ",
               x.describe());
  return {x.size(0), x.size(1), x.dim() == 4 ? x.size(2) * x.size(3) : 1};
}
}  // namespace

std::pair<Tensor, NormStats> batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                        Tensor running_mean, Tensor running_var, bool training,
                                        double momentum, double eps) {
  detail::check_cpu("batch_norm", x);
  const ChannelLayout l = channel_layout(x);
  for (const Tensor* t : std::initializer_list<const Tensor*>{&weight, &bias, &running_mean, &running_var}) {
    if (t->defined()) {
      detail::check_same("batch_norm", x, *t);
      DTRAIN_CHECK(t->numel() == l.c, "batch_norm: per-channel tensor ", t->describe(),
                   " must have ", l.c, " elements for input ", x.describe());
    }
  }
  const int64_t count = l.n * l.hw;
  if (training) {
    DTRAIN_CHECK(count > 1, "batch_norm: training needs more than one value per channel; got input ",
                 x.describe());
  } else {
    DTRAIN_CHECK(running_mean.defined() && running_var.defined(),
                 "batch_norm: evaluation needs running statistics");
  }
  Tensor y(x.shape(), x.dtype());
  NormStats st{Tensor({l.c}, x.dtype()), Tensor({l.c}, x.dtype())};
  detail::dispatch_floating(x.dtype(), "batch_norm", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    T* py = y.data<T>();
    const T* pw = weight.defined() ? weight.data<T>() : nullptr;
    const T* pb = bias.defined() ? bias.data<T>() : nullptr;
    cpu::parallel_for(l.c, 1, [&](int64_t b, int64_t e) {
      for (int64_t ch = b; ch < e; ++ch) {
        double mean, var;
        if (training) {
          mean = 0;
          for (int64_t i = 0; i < l.n; ++i)
            for (int64_t k = 0; k < l.hw; ++k) mean += px[(i * l.c + ch) * l.hw + k];
          mean /= count;
          var = 0;
          for (int64_t i = 0; i < l.n; ++i)
            for (int64_t k = 0; k < l.hw; ++k) {
              const double d = px[(i * l.c + ch) * l.hw + k] - mean;
              var += d * d;
            }
          var /= count;
          if (running_mean.defined()) {
            T* rm = running_mean.data<T>();
            T* rv = running_var.data<T>();
            rm[ch] = static_cast<T>((1 - momentum) * rm[ch] + momentum * mean);
            rv[ch] = static_cast<T>((1 - momentum) * rv[ch] + momentum * var * count / (count - 1));
          }
        } else {
          mean = running_mean.data<T>()[ch];
          var = running_var.data<T>()[ch];
        }
        const T m = static_cast<T>(mean), rstd = static_cast<T>(1.0 / std::sqrt(var + eps));
        st.mean.data<T>()[ch] = m;
        st.rstd.data<T>()[ch] = rstd;
        const T w = pw ? pw[ch] : T(1), bb = pb ? pb[ch] : T(0);
        for (int64_t i = 0; i < l.n; ++i)
          for (int64_t k = 0; k < l.hw; ++k) {
            const int64_t at = (i * l.c + ch) * l.hw + k;
            py[at] = (px[at] - m) * rstd * w + bb;
          }
      }
    });
  });
  return {y, st};
}

std::vector<Tensor> batch_norm_backward(const Tensor& gy, const Tensor& x, const NormStats& st,
                                        const Tensor& weight, bool training) {
  const ChannelLayout l = channel_layout(x);
  const int64_t count = l.n * l.hw;
  Tensor dx(x.shape(), x.dtype());
  Tensor dw({l.c}, x.dtype()), db({l.c}, x.dtype());
  detail::dispatch_floating(x.dtype(), "batch_norm backward", [&](auto tag) {
    using T = decltype(tag);
    const T* px = x.data<T>();
    const T* pg = gy.data<T>();
    const T* pw = weight.defined() ? weight.data<T>() : nullptr;
    T* pd = dx.data<T>();
    cpu::parallel_for(l.c, 1, [&](int64_t b, int64_t e) {
      for (int64_t ch = b; ch < e; ++ch) {
        const T m = st.mean.data<T>()[ch], rstd = st.rstd.data<T>()[ch];
        const T w = pw ? pw[ch] : T(1);
        double sum_g = 0, sum_g_xhat = 0;
        for (int64_t i = 0; i < l.n; ++i)
          for (int64_t k = 0; k < l.hw; ++k) {
            const int64_t at = (i * l.c + ch) * l.hw + k;
            sum_g += pg[at];
            sum_g_xhat += pg[at] * (px[at] - m) * rstd;
          }
        dw.data<T>()[ch] = static_cast<T>(sum_g_xhat);
        db.data<T>()[ch] = static_cast<T>(sum_g);
        const T m1 = static_cast<T>(w * sum_g / count), m2 = static_cast<T>(w * sum_g_xhat / count);
        for (int64_t i = 0; i < l.n; ++i)
          for (int64_t k = 0; k < l.hw; ++k) {
            const int64_t at = (i * l.c + ch) * l.hw + k;
            const T xhat = (px[at] - m) * rstd;
            pd[at] = training ? rstd * (pg[at] * w - m1 - xhat * m2) : pg[at] * w * rstd;
          }
      }
    });
  });
  return {dx, dw, db};
}

// ---- embedding ------------------------------------------------------------------------------
Tensor embedding(const Tensor& weight, const Tensor& indices) {
  detail::check_cpu("embedding", weight);
  DTRAIN_CHECK(weight.dim() == 2, "embedding: weight must be [V, D]; got ", weight.describe());
  DTRAIN_CHECK(indices.dtype() == DType::kInt64, "embedding: indices must be int64; got ",
               indices.describe());
  const int64_t v = weight.size(0), d = weight.size(1);
  Shape out_shape = indices.shape();
  out_shape.push_back(d);
  Tensor out(out_shape, weight.dtype());
  const int64_t* idx = indices.data<int64_t>();
  const size_t row_bytes = d * dtype_size(weight.dtype());
  for (int64_t i = 0; i < indices.numel(); ++i) {
    if (idx[i] < 0 || idx[i] >= v) {
      DTRAIN_THROW(ValueError, "embedding: index ", idx[i], " at position ", i,
                   " is outside [0, ", v, ") for weight ", weight.describe());
    }
    std::memcpy(static_cast<char*>(out.data_ptr()) + i * row_bytes,
                static_cast<const char*>(weight.data_ptr()) + idx[i] * row_bytes, row_bytes);
  }
  return out;
}

Tensor embedding_backward(const Tensor& gy, const Tensor& indices, int64_t num_embeddings) {
  const int64_t d = gy.size(-1);
  Tensor dw = zeros({num_embeddings, d}, gy.dtype());
  const int64_t* idx = indices.data<int64_t>();
  detail::dispatch_floating(gy.dtype(), "embedding backward", [&](auto tag) {
    using T = decltype(tag);
    const T* pg = gy.data<T>();
    T* pw = dw.data<T>();
    for (int64_t i = 0; i < indices.numel(); ++i)
      for (int64_t k = 0; k < d; ++k) pw[idx[i] * d + k] += pg[i * d + k];
  });
  return dw;
}

// ---- shape ops ------------------------------------------------------------------------------
Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end) {
  dim = normalize_dim(dim, x.dim(), "slice");
  const int64_t size = x.size(dim);
  if (start < 0) start += size;
  if (end < 0) end += size;
  end = std::min(end, size);
  DTRAIN_CHECK(start >= 0 && start <= end, "slice: range [", start, ", ", end, ") is invalid for dim ",
               dim, " of ", x.describe());
  Shape shape = x.shape();
  shape[dim] = end - start;
  const Split s = split_at(x.shape(), dim);
  const size_t es = dtype_size(x.dtype());
  if (s.outer == 1) {
    return Tensor(x.storage(), x.storage_offset_bytes() + start * s.inner * es, shape, x.dtype());
  }
  detail::check_cpu("slice", x);
  Tensor out(shape, x.dtype());
  const size_t chunk = (end - start) * s.inner * es;
  for (int64_t o = 0; o < s.outer; ++o) {
    std::memcpy(static_cast<char*>(out.data_ptr()) + o * chunk,
                static_cast<const char*>(x.data_ptr()) + (o * s.r + start) * s.inner * es, chunk);
  }
  return out;
}

Tensor cat(const std::vector<Tensor>& xs, int64_t dim) {
  DTRAIN_CHECK(!xs.empty(), "cat: needs at least one tensor");
  const Tensor& first = xs[0];
  dim = normalize_dim(dim, first.dim(), "cat");
  Shape shape = first.shape();
  shape[dim] = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    detail::check_same("cat", first, xs[i]);
    detail::check_cpu("cat", xs[i]);
    bool ok = xs[i].dim() == first.dim();
    for (int64_t d = 0; ok && d < first.dim(); ++d) ok = d == dim || xs[i].size(d) == first.size(d);
    if (!ok) {
      DTRAIN_THROW(ValueError, "cat: tensor ", i, " ", xs[i].describe(), " does not match tensor 0 ",
                   first.describe(), " outside dim ", dim);
    }
    shape[dim] += xs[i].size(dim);
  }
  Tensor out(shape, first.dtype());
  const Split so = split_at(shape, dim);
  const size_t es = dtype_size(first.dtype());
  int64_t at = 0;
  for (const Tensor& x : xs) {
    const int64_t rows = x.size(dim);
    for (int64_t o = 0; o < so.outer; ++o) {
      std::memcpy(static_cast<char*>(out.data_ptr()) + (o * so.r + at) * so.inner * es,
                  static_cast<const char*>(x.data_ptr()) + o * rows * so.inner * es,
                  rows * so.inner * es);
    }
    at += rows;
  }
  return out;
}

Tensor stack(const std::vector<Tensor>& xs, int64_t dim) {
  DTRAIN_CHECK(!xs.empty(), "stack: needs at least one tensor");
  dim = normalize_dim(dim, xs[0].dim() + 1, "stack");
  std::vector<Tensor> expanded;
  for (size_t i = 0; i < xs.size(); ++i) {
    if (xs[i].shape() != xs[0].shape()) {
      DTRAIN_THROW(ValueError, "stack: tensor ", i, " ", xs[i].describe(),
                   " differs in shape from tensor 0 ", xs[0].describe());
    }
    Shape s = xs[i].shape();
    s.insert(s.begin() + dim, 1);
    expanded.push_back(xs[i].view(s));
  }
  return cat(expanded, dim);
}

Tensor permute(const Tensor& x, const std::vector<int64_t>& dims) {
  detail::check_cpu("permute", x);
  const int64_t nd = x.dim();
  DTRAIN_CHECK(static_cast<int64_t>(dims.size()) == nd, "permute: ", dims.size(),
               " dims given for ", x.describe());
  std::vector<int64_t> perm(nd);
  std::vector<bool> seen(nd, false);
  for (int64_t i = 0; i < nd; ++i) {
    perm[i] = normalize_dim(dims[i], nd, "permute");
    DTRAIN_CHECK(!seen[perm[i]], "permute: dim ", perm[i], " repeated");
    seen[perm[i]] = true;
  }
  Shape out_shape(nd);
  std::vector<int64_t> in_stride(nd), out_src_stride(nd);
  int64_t st = 1;
  for (int64_t d = nd - 1; d >= 0; --d) {
    in_stride[d] = st;
    st *= x.size(d);
  }
  for (int64_t i = 0; i < nd; ++i) {
    out_shape[i] = x.size(perm[i]);
    out_src_stride[i] = in_stride[perm[i]];
  }
  Tensor out(out_shape, x.dtype());
  const size_t es = dtype_size(x.dtype());
  const char* src = static_cast<const char*>(x.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  const int64_t n = x.numel();
  cpu::parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      int64_t rem = i, off = 0;
      for (int64_t d = nd - 1; d >= 0; --d) {
        off += (rem % out_shape[d]) * out_src_stride[d];
        rem /= out_shape[d];
      }
      std::memcpy(dst + i * es, src + off * es, es);
    }
  });
  return out;
}

Tensor transpose(const Tensor& x, int64_t d0, int64_t d1) {
  std::vector<int64_t> dims(x.dim());
  for (int64_t i = 0; i < x.dim(); ++i) dims[i] = i;
  std::swap(dims[normalize_dim(d0, x.dim(), "transpose")], dims[normalize_dim(d1, x.dim(), "transpose")]);
  return permute(x, dims);
}

Tensor dropout_mask(const Shape& shape, double p, Generator& gen, DType dtype) {
  DTRAIN_CHECK(p >= 0 && p <= 1, "dropout: p must be in [0, 1]; got ", p);
  Tensor mask(shape, dtype);
  const uint64_t offset = gen.reserve(mask.numel());
  const uint64_t seed = gen.seed(), stream = gen.stream();
  detail::dispatch_floating(dtype, "dropout", [&](auto tag) {
    using T = decltype(tag);
    T* pm = mask.data<T>();
    const T keep = p < 1 ? static_cast<T>(1.0 / (1.0 - p)) : T(0);
    cpu::parallel_for(mask.numel(), 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        pm[i] = kernels::philox_uniform(seed, stream, offset, i) >= p ? keep : T(0);
    });
  });
  return mask;
}

}  // namespace dtrain::ops
