// Reductions in a fixed order, so results are bit-identical across runs and thread counts.
#include <algorithm>
#include <limits>

#include "dtrain/tensor/cpu/parallel.h"
#include "dtrain/tensor/cuda/cuda_backend.h"
#include "dtrain/tensor/dispatch.h"
#include "dtrain/tensor/kernels_nn.h"
#include "dtrain/tensor/ops.h"
#include "dtrain/tensor/run.h"

namespace dtrain::ops {
namespace {

using detail::Split;
using detail::split_at;

/// y[o, i] = sum_k x[o, k, i].
template <class T>
void sum_dim_cpu(const T* x, T* y, Split s) {
  using Acc = std::conditional_t<std::is_floating_point_v<T>, double, int64_t>;
  if (s.inner == 1) {
    cpu::parallel_for(s.outer, std::max<int64_t>(1, cpu::kGrain / std::max<int64_t>(s.r, 1)),
                      [&](int64_t b, int64_t e) {
                        for (int64_t o = b; o < e; ++o) {
                          const T* row = x + o * s.r;
                          Acc acc = 0;
                          for (int64_t k = 0; k < s.r; ++k) acc += row[k];
                          y[o] = static_cast<T>(acc);
                        }
                      });
    return;
  }
  const int64_t n = s.outer * s.inner;
  cpu::parallel_for(n, std::max<int64_t>(64, cpu::kGrain / std::max<int64_t>(s.r, 1)),
                    [&](int64_t b, int64_t e) {
                      for (int64_t idx = b; idx < e;) {
                        const int64_t o = idx / s.inner, i0 = idx % s.inner;
                        const int64_t i1 = std::min(s.inner, i0 + (e - idx));
                        T* dst = y + o * s.inner;
                        for (int64_t i = i0; i < i1; ++i) dst[i] = T(0);
                        for (int64_t k = 0; k < s.r; ++k) {
                          const T* src = x + (o * s.r + k) * s.inner;
                          for (int64_t i = i0; i < i1; ++i) dst[i] += src[i];
                        }
                        idx += i1 - i0;
                      }
                    });
}

Tensor sum_one_dim(const Tensor& x, int64_t dim) {
  Shape out_shape = x.shape();
  out_shape[dim] = 1;
  Tensor y(out_shape, x.dtype(), x.device());
  const Split s = split_at(x.shape(), dim);
  if (x.device().is_cuda()) {
    cuda::sum_dim(x.dtype(), x.data_ptr(), y.data_ptr(), s.outer, s.r, s.inner, x.device().index);
    return y;
  }
  detail::dispatch_numeric(x.dtype(), "sum", [&](auto tag) {
    using T = decltype(tag);
    sum_dim_cpu<T>(x.data<T>(), y.data<T>(), s);
  });
  return y;
}

std::vector<int64_t> normalize_dims(std::vector<int64_t> dims, int64_t ndim, const char* op) {
  if (dims.empty()) {
    for (int64_t d = 0; d < ndim; ++d) dims.push_back(d);
  }
  for (auto& d : dims) d = normalize_dim(d, ndim, op);
  std::sort(dims.begin(), dims.end());
  dims.erase(std::unique(dims.begin(), dims.end()), dims.end());
  return dims;
}

Shape reduced_shape(const Shape& shape, const std::vector<int64_t>& dims, bool keepdim) {
  Shape out;
  for (int64_t d = 0; d < static_cast<int64_t>(shape.size()); ++d) {
    const bool reduced = std::find(dims.begin(), dims.end(), d) != dims.end();
    if (!reduced)
      out.push_back(shape[d]);
    else if (keepdim)
      out.push_back(1);
  }
  return out;
}

}  // namespace

Tensor sum(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  detail::check_defined("sum", x, "input");
  if (x.dim() == 0) return x.clone();
  dims = normalize_dims(std::move(dims), x.dim(), "sum");
  Tensor y = x;
  if (dims.size() == static_cast<size_t>(x.dim())) {
    y = sum_one_dim(x.view({x.numel()}), 0);  // one pass over all elements
  } else {
    // Innermost first keeps each pass's rows contiguous.
    for (auto it = dims.rbegin(); it != dims.rend(); ++it) y = sum_one_dim(y, *it);
  }
  return y.view(reduced_shape(x.shape(), dims, keepdim));
}

Tensor mean(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  detail::check_defined("mean", x, "input");
  const auto norm = normalize_dims(dims, x.dim(), "mean");
  int64_t count = 1;
  if (x.dim() > 0) {
    for (int64_t d : norm) count *= x.shape()[d];
  }
  Tensor s = sum(x, dims, keepdim);
  scale_(s, 1.0 / static_cast<double>(std::max<int64_t>(count, 1)));
  return s;
}

std::pair<Tensor, Tensor> max(const Tensor& x, int64_t dim, bool keepdim) {
  detail::check_defined("max", x, "input");
  dim = normalize_dim(dim, x.dim(), "max");
  DTRAIN_CHECK(x.dim() == 0 || x.shape()[dim] > 0, "max: dim ", dim, " of ", x.describe(),
               " is empty");
  const Split s = split_at(x.shape(), dim);
  const Shape out_shape = reduced_shape(x.shape(), {dim}, keepdim);
  Tensor values(out_shape, x.dtype(), x.device());
  Tensor indices(out_shape, DType::kInt64, x.device());
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    run_kernel(x.device(), s.outer * s.inner,
               kernels::MaxLines<T>{x.data_ptr<T>(), values.data_ptr<T>(),
                                    indices.data_ptr<int64_t>(), s.r, s.inner},
               std::max<int64_t>(1, cpu::kGrain / std::max<int64_t>(s.r, 1)));
  };
  switch (x.dtype()) {
    case DType::kInt64:
      run(int64_t{});
      break;
    case DType::kInt32:
      run(int32_t{});
      break;
    default:
      detail::dispatch_floating(x.dtype(), "max", run);
  }
  return {values, indices};
}

Tensor max_backward(const Tensor& gy, const Tensor& indices, const Shape& x_shape, int64_t dim) {
  dim = normalize_dim(dim, static_cast<int64_t>(x_shape.size()), "max backward");
  const Split s = split_at(x_shape, dim);
  Tensor dx = zeros(x_shape, gy.dtype(), gy.device());
  detail::dispatch_floating(gy.dtype(), "max backward", [&](auto tag) {
    using T = decltype(tag);
    run_kernel(gy.device(), s.outer * s.inner,
               kernels::MaxLinesBackward<T>{gy.data_ptr<T>(), indices.data_ptr<int64_t>(),
                                            dx.data_ptr<T>(), s.r, s.inner});
  });
  return dx;
}

Tensor max_all(const Tensor& x) { return max(x.view({x.numel()}), 0).first; }

Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) { return max(x, dim, keepdim).second; }

Tensor sum_to(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  const int64_t lead = g.dim() - static_cast<int64_t>(shape.size());
  DTRAIN_CHECK(lead >= 0, "sum_to: gradient ", g.describe(), " has fewer dims than ",
               shape_str(shape));
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < g.dim(); ++d) {
    if (d < lead || (shape[d - lead] == 1 && g.shape()[d] != 1)) dims.push_back(d);
  }
  Tensor s = dims.empty() ? g : sum(g, dims, true);
  return s.view(shape);
}

}  // namespace dtrain::ops
