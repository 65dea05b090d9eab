// Softmax family, fused softmax-cross-entropy, NLL, layer and batch norm, embedding, shape ops and
// dropout: functors from tensor/kernels_nn.h run on the CPU or CUDA.
#include <cmath>
#include <cstring>
#include <type_traits>

#include "dtrain/tensor/cpu/layer_norm_cpu.h"
#include "dtrain/tensor/cpu/parallel.h"
#include "dtrain/tensor/cpu/permute_copy.h"
#include "dtrain/tensor/cpu/philox_fill.h"
#include "dtrain/tensor/cpu/vec_math.h"
#include "dtrain/tensor/cuda/cuda_backend.h"
#include "dtrain/tensor/dispatch.h"
#include "dtrain/tensor/kernels_nn.h"
#include "dtrain/tensor/ops.h"
#include "dtrain/tensor/run.h"

namespace dtrain::ops {
namespace {

using detail::Split;
using detail::split_at;

constexpr int64_t kLineGrain = 64;  // lines, rows and channels are heavy work items

/// On CUDA, contiguous lines at least this long get a block each instead of a thread (shorter
/// ones, like 10 classes, keep a thread per line; strided lines are already read coalesced).
constexpr int64_t kBlockLineMin = 32;
bool use_line_blocks(Device device, const Split& s) {
  return device.is_cuda() && s.inner == 1 && s.r >= kBlockLineMin;
}

Tensor softmax_impl(const Tensor& x, int64_t dim, bool log) {
  const char* op = log ? "log_softmax" : "softmax";
  detail::check_defined(op, x, "input");
  dim = normalize_dim(dim, x.dim(), op);
  const Split s = split_at(x.shape(), dim);
  Tensor y(x.shape(), x.dtype(), x.device());
  detail::dispatch_floating(x.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, float>) {
      if (x.device().is_cpu() && s.inner == 1) {  // contiguous rows: vector exp, one exp each
        const float* px = x.data_ptr<float>();
        float* py = y.data_ptr<float>();
        cpu::parallel_for(s.outer, kLineGrain, [&](int64_t b, int64_t e) {
          cpu::softmax_rows_f32(px + b * s.r, py + b * s.r, e - b, s.r, log);
        });
        return;
      }
    }
    const kernels::SoftmaxLines<T> k{x.data_ptr<T>(), y.data_ptr<T>(), s.r, s.inner, log};
    if (use_line_blocks(x.device(), s)) {
      cuda::softmax_rows(k, s.outer, x.device().index);
    } else {
      run_kernel(x.device(), s.outer * s.inner, k, kLineGrain);
    }
  });
  return y;
}

Tensor softmax_backward_impl(const Tensor& y, const Tensor& gy, int64_t dim, bool log) {
  detail::check_same("softmax backward", y, gy);
  dim = normalize_dim(dim, y.dim(), "softmax backward");
  const Split s = split_at(y.shape(), dim);
  Tensor dx(y.shape(), y.dtype(), y.device());
  detail::dispatch_floating(y.dtype(), "softmax backward", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, float>) {
      if (y.device().is_cpu() && s.inner == 1) {
        const float* py = y.data_ptr<float>();
        const float* pg = gy.data_ptr<float>();
        float* pd = dx.data_ptr<float>();
        cpu::parallel_for(s.outer, kLineGrain, [&](int64_t b, int64_t e) {
          cpu::softmax_backward_rows_f32(py + b * s.r, pg + b * s.r, pd + b * s.r, e - b, s.r, log);
        });
        return;
      }
    }
    const kernels::SoftmaxBackwardLines<T> k{
        y.data_ptr<T>(), gy.data_ptr<T>(), dx.data_ptr<T>(), s.r, s.inner, log};
    if (use_line_blocks(y.device(), s)) {
      cuda::softmax_backward_rows(k, s.outer, y.device().index);
    } else {
      run_kernel(y.device(), s.outer * s.inner, k, kLineGrain);
    }
  });
  return dx;
}

/// Checks that targets are int64 class indices [N] for logits [N, C] on their device.
void check_target_shape(const char* op, const Tensor& logits, const Tensor& targets) {
  DTRAIN_CHECK(logits.dim() == 2, op, ": input must be [N, C]; got ", logits.describe());
  DTRAIN_CHECK(targets.defined() && targets.dtype() == DType::kInt64 && targets.dim() == 1 &&
                   targets.size(0) == logits.size(0) && targets.device() == logits.device(),
               op, ": targets must be int64 [", logits.size(0), "] on ", logits.device().str(),
               "; got ", targets.describe());
}

/// check_target_shape, then every value against [0, C), read on the host (a wait for the device
/// when the targets are there).
void check_targets(const char* op, const Tensor& logits, const Tensor& targets) {
  check_target_shape(op, logits, targets);
  const auto t = targets.to_vector<int64_t>();
  for (size_t i = 0; i < t.size(); ++i) {
    if (t[i] < 0 || t[i] >= logits.size(1)) {
      DTRAIN_THROW(ValueError, op, ": target ", t[i], " at position ", i, " is outside [0, ",
                   logits.size(1), ")");
    }
  }
}

/// Mean of per-row losses as a scalar tensor (fixed-order sum).
Tensor mean_of_rows(const Tensor& row_loss) {
  Tensor total = sum(row_loss);
  scale_(total, 1.0 / static_cast<double>(std::max<int64_t>(row_loss.numel(), 1)));
  return total.view({});
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
  detail::check_defined("cross_entropy", logits, "input");
  check_target_shape("cross_entropy", logits, targets);
  if (logits.device().is_cpu()) check_targets("cross_entropy", logits, targets);
  DTRAIN_CHECK(label_smoothing >= 0 && label_smoothing <= 1,
               "cross_entropy: label_smoothing must be in [0, 1]; got ", label_smoothing);
  const int64_t n = logits.size(0), c = logits.size(1);
  Tensor in_range = targets;
  if (logits.device().is_cuda()) {
    // Checked on the device, so the forward pass does not wait for it: a bad target is reported
    // by the next check or synchronize, and meanwhile reads class 0 instead of out of bounds.
    in_range = Tensor(targets.shape(), DType::kInt64, targets.device());
    cuda::check_indices(targets.data_ptr<int64_t>(), in_range.data_ptr<int64_t>(), n, c,
                        "cross_entropy", logits.device().index);
  }
  Tensor probs(logits.shape(), logits.dtype(), logits.device());
  Tensor row_loss({n}, logits.dtype(), logits.device());
  detail::dispatch_floating(logits.dtype(), "cross_entropy", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, float>) {
      if (logits.device().is_cpu() && c > 0) {  // one vector exp per logit
        const float* px = logits.data_ptr<float>();
        const int64_t* pt = in_range.data_ptr<int64_t>();
        float* pp = probs.data_ptr<float>();
        float* pl = row_loss.data_ptr<float>();
        cpu::parallel_for(n, kLineGrain, [&](int64_t b, int64_t e) {
          cpu::cross_entropy_rows_f32(px + b * c, pt + b, pp + b * c, pl + b, e - b, c,
                                      label_smoothing);
        });
        return;
      }
    }
    const kernels::CrossEntropyRows<T> k{logits.data_ptr<T>(),
                                         in_range.data_ptr<int64_t>(),
                                         probs.data_ptr<T>(),
                                         row_loss.data_ptr<T>(),
                                         c,
                                         label_smoothing};
    if (use_line_blocks(logits.device(), Split{n, c, 1})) {
      cuda::cross_entropy_rows(k, n, logits.device().index);
    } else {
      run_kernel(logits.device(), n, k, kLineGrain);
    }
  });
  return {mean_of_rows(row_loss), probs};
}

Tensor softmax_cross_entropy_backward(const Tensor& probs, const Tensor& targets, double grad_loss,
                                      double label_smoothing) {
  const int64_t n = probs.size(0), c = probs.size(1);
  Tensor d(probs.shape(), probs.dtype(), probs.device());
  detail::dispatch_floating(probs.dtype(), "cross_entropy backward", [&](auto tag) {
    using T = decltype(tag);
    const T off = static_cast<T>(label_smoothing / c);
    run_kernel(probs.device(), n * c,
               kernels::CrossEntropyBackward<T>{probs.data_ptr<T>(), targets.data_ptr<int64_t>(),
                                                d.data_ptr<T>(), c,
                                                static_cast<T>(grad_loss / std::max<int64_t>(n, 1)),
                                                static_cast<T>(1 - label_smoothing) + off, off});
  });
  return d;
}

Tensor nll_loss(const Tensor& log_probs, const Tensor& targets) {
  detail::check_defined("nll_loss", log_probs, "input");
  check_targets("nll_loss", log_probs, targets);
  const int64_t n = log_probs.size(0);
  Tensor row_loss({n}, log_probs.dtype(), log_probs.device());
  detail::dispatch_floating(log_probs.dtype(), "nll_loss", [&](auto tag) {
    using T = decltype(tag);
    run_kernel(log_probs.device(), n,
               kernels::NllRows<T>{log_probs.data_ptr<T>(), targets.data_ptr<int64_t>(),
                                   row_loss.data_ptr<T>(), log_probs.size(1)});
  });
  return mean_of_rows(row_loss);
}

Tensor nll_loss_backward(const Shape& shape, const Tensor& targets, double grad_loss, DType dtype,
                         Device device) {
  Tensor d = zeros(shape, dtype, device);
  detail::dispatch_floating(dtype, "nll_loss backward", [&](auto tag) {
    using T = decltype(tag);
    const T value =
        static_cast<T>(-grad_loss / static_cast<double>(std::max<int64_t>(shape[0], 1)));
    run_kernel(
        device, shape[0],
        kernels::NllBackwardRows<T>{targets.data_ptr<int64_t>(), d.data_ptr<T>(), shape[1], value});
  });
  return d;
}

// ---- normalisation --------------------------------------------------------------------------
std::pair<Tensor, NormStats> layer_norm(const Tensor& x, int64_t group, const Tensor& weight,
                                        const Tensor& bias, double eps) {
  detail::check_defined("layer_norm", x, "input");
  DTRAIN_CHECK(group > 0 && x.numel() % group == 0, "layer_norm: normalised size ", group,
               " does not divide ", x.describe());
  for (const Tensor* t : {&weight, &bias}) {
    if (!t->defined()) continue;
    detail::check_same("layer_norm", x, *t);
    DTRAIN_CHECK(t->numel() == group, "layer_norm: ", t == &weight ? "weight " : "bias ",
                 t->describe(), " must have ", group, " elements");
  }
  const int64_t rows = x.numel() / group;
  Tensor y(x.shape(), x.dtype(), x.device());
  NormStats st{Tensor({rows}, x.dtype(), x.device()), Tensor({rows}, x.dtype(), x.device())};
  if (x.device().is_cpu() && x.dtype() == DType::kFloat32) {
    cpu::layer_norm_rows(x.data<float>(), weight.defined() ? weight.data<float>() : nullptr,
                         bias.defined() ? bias.data<float>() : nullptr, y.data<float>(),
                         st.mean.data<float>(), st.rstd.data<float>(), rows, group, eps);
    return {y, st};
  }
  detail::dispatch_floating(x.dtype(), "layer_norm", [&](auto tag) {
    using T = decltype(tag);
    run_kernel(x.device(), rows,
               kernels::LayerNormRows<T>{
                   x.data_ptr<T>(), weight.defined() ? weight.data_ptr<T>() : nullptr,
                   bias.defined() ? bias.data_ptr<T>() : nullptr, y.data_ptr<T>(),
                   st.mean.data_ptr<T>(), st.rstd.data_ptr<T>(), group, eps},
               kLineGrain);
  });
  return {y, st};
}

std::vector<Tensor> layer_norm_backward(const Tensor& gy, const Tensor& x, const NormStats& st,
                                        const Tensor& weight, int64_t group) {
  detail::check_same("layer_norm backward", gy, x);
  const int64_t rows = x.numel() / group;
  Tensor dx(x.shape(), x.dtype(), x.device());
  Tensor dw({group}, x.dtype(), x.device()), db({group}, x.dtype(), x.device());
  if (x.device().is_cpu() && x.dtype() == DType::kFloat32) {
    cpu::layer_norm_backward_rows(x.data<float>(), gy.data<float>(),
                                  weight.defined() ? weight.data<float>() : nullptr,
                                  st.mean.data<float>(), st.rstd.data<float>(), dx.data<float>(),
                                  dw.data<float>(), db.data<float>(), rows, group);
    return {dx, dw, db};
  }
  detail::dispatch_floating(x.dtype(), "layer_norm backward", [&](auto tag) {
    using T = decltype(tag);
    run_kernel(x.device(), rows,
               kernels::LayerNormBackwardRows<T>{x.data_ptr<T>(), gy.data_ptr<T>(),
                                                 weight.defined() ? weight.data_ptr<T>() : nullptr,
                                                 st.mean.data_ptr<T>(), st.rstd.data_ptr<T>(),
                                                 dx.data_ptr<T>(), group},
               kLineGrain);
    run_kernel(x.device(), group,
               kernels::LayerNormParamGradColumns<T>{
                   x.data_ptr<T>(), gy.data_ptr<T>(), st.mean.data_ptr<T>(), st.rstd.data_ptr<T>(),
                   dw.data_ptr<T>(), db.data_ptr<T>(), rows, group},
               kLineGrain);
  });
  return {dx, dw, db};
}

namespace {
struct ChannelLayout {
  int64_t n, c, hw;
};
ChannelLayout channel_layout(const Tensor& x) {
  DTRAIN_CHECK(x.dim() == 2 || x.dim() == 4,
               "batch_norm: input must be [N, C] or [N, C, H, W]; got ", x.describe());
  return {x.size(0), x.size(1), x.dim() == 4 ? x.size(2) * x.size(3) : 1};
}
/// On CUDA, [N, C, H, W] runs a block per channel (a thread per channel would walk N*H*W values
/// alone). [N, C] keeps a thread per channel: there neighbouring channels are neighbours in
/// memory, so those loads are already coalesced.
bool use_channel_blocks(const Tensor& x, const ChannelLayout& l) {
  return x.device().is_cuda() && l.hw > 1;
}
}  // namespace

std::pair<Tensor, NormStats> batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                        Tensor running_mean, Tensor running_var, bool training,
                                        double momentum, double eps) {
  detail::check_defined("batch_norm", x, "input");
  const ChannelLayout l = channel_layout(x);
  for (const Tensor* t :
       std::initializer_list<const Tensor*>{&weight, &bias, &running_mean, &running_var}) {
    if (t->defined()) {
      detail::check_same("batch_norm", x, *t);
      DTRAIN_CHECK(t->numel() == l.c, "batch_norm: per-channel tensor ", t->describe(),
                   " must have ", l.c, " elements for input ", x.describe());
    }
  }
  if (training) {
    DTRAIN_CHECK(l.n * l.hw > 1,
                 "batch_norm: training needs more than one value per channel; got input ",
                 x.describe());
  } else {
    DTRAIN_CHECK(running_mean.defined() && running_var.defined(),
                 "batch_norm: evaluation needs running statistics");
  }
  Tensor y(x.shape(), x.dtype(), x.device());
  NormStats st{Tensor({l.c}, x.dtype(), x.device()), Tensor({l.c}, x.dtype(), x.device())};
  detail::dispatch_floating(x.dtype(), "batch_norm", [&](auto tag) {
    using T = decltype(tag);
    const kernels::BatchNormChannels<T> k{
        x.data_ptr<T>(),
        weight.defined() ? weight.data_ptr<T>() : nullptr,
        bias.defined() ? bias.data_ptr<T>() : nullptr,
        y.data_ptr<T>(),
        st.mean.data_ptr<T>(),
        st.rstd.data_ptr<T>(),
        running_mean.defined() ? running_mean.data_ptr<T>() : nullptr,
        running_var.defined() ? running_var.data_ptr<T>() : nullptr,
        l.n,
        l.c,
        l.hw,
        training,
        momentum,
        eps};
    if (use_channel_blocks(x, l)) {
      cuda::batch_norm(k, x.device().index);
    } else {
      run_kernel(x.device(), l.c, k, 1);
    }
  });
  return {y, st};
}

std::vector<Tensor> batch_norm_backward(const Tensor& gy, const Tensor& x, const NormStats& st,
                                        const Tensor& weight, bool training) {
  detail::check_same("batch_norm backward", gy, x);
  const ChannelLayout l = channel_layout(x);
  Tensor dx(x.shape(), x.dtype(), x.device());
  Tensor dw({l.c}, x.dtype(), x.device()), db({l.c}, x.dtype(), x.device());
  detail::dispatch_floating(x.dtype(), "batch_norm backward", [&](auto tag) {
    using T = decltype(tag);
    const kernels::BatchNormBackwardChannels<T> k{x.data_ptr<T>(),
                                                  gy.data_ptr<T>(),
                                                  weight.defined() ? weight.data_ptr<T>() : nullptr,
                                                  st.mean.data_ptr<T>(),
                                                  st.rstd.data_ptr<T>(),
                                                  dx.data_ptr<T>(),
                                                  dw.data_ptr<T>(),
                                                  db.data_ptr<T>(),
                                                  l.n,
                                                  l.c,
                                                  l.hw,
                                                  training};
    if (use_channel_blocks(x, l)) {
      cuda::batch_norm_backward(k, x.device().index);
    } else {
      run_kernel(x.device(), l.c, k, 1);
    }
  });
  return {dx, dw, db};
}

// ---- embedding ------------------------------------------------------------------------------
Tensor embedding(const Tensor& weight, const Tensor& indices) {
  detail::check_defined("embedding", weight, "weight");
  DTRAIN_CHECK(weight.dim() == 2, "embedding: weight must be [V, D]; got ", weight.describe());
  DTRAIN_CHECK(
      indices.defined() && indices.dtype() == DType::kInt64 && indices.device() == weight.device(),
      "embedding: indices must be int64 on ", weight.device().str(), "; got ", indices.describe());
  const int64_t v = weight.size(0), d = weight.size(1);
  const auto idx = indices.to_vector<int64_t>();
  for (size_t i = 0; i < idx.size(); ++i) {
    if (idx[i] < 0 || idx[i] >= v) {
      DTRAIN_THROW(ValueError, "embedding: index ", idx[i], " at position ", i, " is outside [0, ",
                   v, ") for weight ", weight.describe());
    }
  }
  Shape out_shape = indices.shape();
  out_shape.push_back(d);
  Tensor out(out_shape, weight.dtype(), weight.device());
  if (weight.device().is_cpu()) {
    // Whole rows at a time: a gather of contiguous rows is a memcpy each.
    const size_t row_bytes = d * dtype_size(weight.dtype());
    for (size_t i = 0; i < idx.size(); ++i) {
      std::memcpy(static_cast<char*>(out.data_ptr()) + i * row_bytes,
                  static_cast<const char*>(weight.data_ptr()) + idx[i] * row_bytes, row_bytes);
    }
    return out;
  }
  detail::dispatch_floating(weight.dtype(), "embedding", [&](auto tag) {
    using T = decltype(tag);
    run_kernel(weight.device(), out.numel(),
               kernels::EmbeddingGather<T>{weight.data_ptr<T>(), indices.data_ptr<int64_t>(),
                                           out.data_ptr<T>(), d});
  });
  return out;
}

Tensor embedding_backward(const Tensor& gy, const Tensor& indices, int64_t num_embeddings) {
  const int64_t d = gy.size(-1);
  Tensor dw = zeros({num_embeddings, d}, gy.dtype(), gy.device());
  detail::dispatch_floating(gy.dtype(), "embedding backward", [&](auto tag) {
    using T = decltype(tag);
    run_kernel(gy.device(), d,
               kernels::EmbeddingScatterColumns<T>{gy.data_ptr<T>(), indices.data_ptr<int64_t>(),
                                                   dw.data_ptr<T>(), indices.numel(), d},
               1);
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
  DTRAIN_CHECK(start >= 0 && start <= end, "slice: range [", start, ", ", end,
               ") is invalid for dim ", dim, " of ", x.describe());
  Shape shape = x.shape();
  shape[dim] = end - start;
  const Split s = split_at(x.shape(), dim);
  const size_t es = dtype_size(x.dtype());
  if (s.outer == 1) {
    return Tensor(x.storage(), x.storage_offset_bytes() + start * s.inner * es, shape, x.dtype());
  }
  Tensor out(shape, x.dtype(), x.device());
  const size_t chunk = (end - start) * s.inner * es;
  copy_blocks(out.data_ptr(), chunk, static_cast<const char*>(x.data_ptr()) + start * s.inner * es,
              s.r * s.inner * es, chunk, s.outer, x.device());
  return out;
}

Tensor cat(const std::vector<Tensor>& xs, int64_t dim) {
  DTRAIN_CHECK(!xs.empty(), "cat: needs at least one tensor");
  const Tensor& first = xs[0];
  DTRAIN_CHECK(first.dim() > 0, "cat: zero-dimensional tensor ", first.describe(),
               " cannot be concatenated; use stack");
  dim = normalize_dim(dim, first.dim(), "cat");
  Shape shape = first.shape();
  shape[dim] = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    detail::check_same("cat", first, xs[i]);
    bool ok = xs[i].dim() == first.dim();
    for (int64_t d = 0; ok && d < first.dim(); ++d) ok = d == dim || xs[i].size(d) == first.size(d);
    if (!ok) {
      DTRAIN_THROW(ValueError, "cat: tensor ", i, " ", xs[i].describe(),
                   " does not match tensor 0 ", first.describe(), " outside dim ", dim);
    }
    shape[dim] += xs[i].size(dim);
  }
  Tensor out(shape, first.dtype(), first.device());
  const Split so = split_at(shape, dim);
  const size_t es = dtype_size(first.dtype());
  int64_t at = 0;
  for (const Tensor& x : xs) {
    const size_t block = x.size(dim) * so.inner * es;
    copy_blocks(static_cast<char*>(out.data_ptr()) + at * so.inner * es, so.r * so.inner * es,
                x.data_ptr(), block, block, so.outer, x.device());
    at += x.size(dim);
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
  const int64_t nd = x.dim();
  DTRAIN_CHECK(static_cast<int64_t>(dims.size()) == nd, "permute: ", dims.size(),
               " dims given for ", x.describe());
  DTRAIN_CHECK(nd <= kernels::BroadcastIndex::kMaxDims, "permute: at most ",
               kernels::BroadcastIndex::kMaxDims, " dims are supported; got ", x.describe());
  std::vector<int64_t> perm(nd);
  std::vector<bool> seen(nd, false);
  for (int64_t i = 0; i < nd; ++i) {
    perm[i] = normalize_dim(dims[i], nd, "permute");
    DTRAIN_CHECK(!seen[perm[i]], "permute: dim ", perm[i], " repeated in the permutation");
    seen[perm[i]] = true;
  }
  std::vector<int64_t> in_stride(nd);
  int64_t st = 1;
  for (int64_t d = nd - 1; d >= 0; --d) {
    in_stride[d] = st;
    st *= x.size(d);
  }
  // Output element i reads the input at sum(out_index[d] * in_stride[perm[d]]).
  kernels::BroadcastIndex index;
  index.ndim = static_cast<int>(nd);
  Shape out_shape(nd);
  for (int64_t i = 0; i < nd; ++i) {
    out_shape[i] = x.size(perm[i]);
    index.shape[i] = out_shape[i];
    index.a_stride[i] = in_stride[perm[i]];
  }
  Tensor out(out_shape, x.dtype(), x.device());
  if (x.device().is_cpu()) {
    cpu::permute_copy(x.data_ptr(), out.data_ptr(), x.shape(), perm, dtype_size(x.dtype()));
  } else {
    gather_elements(x, out, index);
  }
  return out;
}

Tensor transpose(const Tensor& x, int64_t d0, int64_t d1) {
  if (x.dim() == 0) {  // only dim 0 is valid, and swapping it with itself changes nothing
    normalize_dim(d0, 0, "transpose");
    normalize_dim(d1, 0, "transpose");
    return x.clone();
  }
  std::vector<int64_t> dims(x.dim());
  for (int64_t i = 0; i < x.dim(); ++i) dims[i] = i;
  std::swap(dims[normalize_dim(d0, x.dim(), "transpose")],
            dims[normalize_dim(d1, x.dim(), "transpose")]);
  return permute(x, dims);
}

Tensor dropout_mask(const Shape& shape, double p, Generator& gen, DType dtype, Device device) {
  DTRAIN_CHECK(p >= 0 && p <= 1, "dropout: p must be in [0, 1]; got ", p);
  Tensor mask(shape, dtype, device);
  const uint64_t offset = gen.reserve(mask.numel());
  detail::dispatch_floating(dtype, "dropout", [&](auto tag) {
    using T = decltype(tag);
    if (!device.is_cuda()) {
      cpu::dropout_mask_fill(mask.data_ptr<T>(), mask.numel(), gen.seed(), gen.stream(), offset, p);
      return;
    }
    run_kernel(device, mask.numel(),
               kernels::DropoutMaskFill<T>{mask.data_ptr<T>(), gen.seed(), gen.stream(), offset, p},
               4096);
  });
  return mask;
}

}  // namespace dtrain::ops
