// Elementwise ops with broadcasting: the shared kernel bodies run by the CPU loop or on CUDA.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "dtrain/tensor/cpu/parallel.h"
#include "dtrain/tensor/cpu/vec_math.h"
#include "dtrain/tensor/cuda/cuda_backend.h"
#include "dtrain/tensor/dispatch.h"
#include "dtrain/tensor/kernels_nn.h"
#include "dtrain/tensor/ops.h"
#include "dtrain/tensor/run.h"

namespace dtrain::ops {

using kernels::Binary;
using kernels::Unary;

int64_t normalize_dim(int64_t dim, int64_t ndim, const char* op) {
  // A 0-dim tensor accepts dims 0 and -1, as in PyTorch.
  const int64_t extent = std::max<int64_t>(ndim, 1);
  const int64_t wrapped = dim < 0 ? dim + extent : dim;
  if (wrapped < 0 || wrapped >= extent) {
    DTRAIN_THROW(ValueError, op, ": dim ", dim, " is out of range for a tensor with ", ndim,
                 " dims");
  }
  return wrapped;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (da != db && da != 1 && db != 1) {
      DTRAIN_THROW(ValueError, op, ": shapes ", shape_str(a), " and ", shape_str(b),
                   " cannot be broadcast (dim ", i, ": ", da, " vs ", db, ")");
    }
    out[i] = da == 1 ? db : da;
  }
  return out;
}

namespace {

using detail::broadcast_index;

/// out[i] = op(a[.], b[.]) on the CPU. Fast paths: equal shapes, and b broadcast along rows or
/// a scalar; otherwise rows of the last dim with per-row offsets.
template <class T, class O>
void binary_cpu(Binary op, const T* a, const T* b, O* out, const Shape& out_shape,
                const Shape& a_shape, const Shape& b_shape) {
  const int64_t n = shape_numel(out_shape);
  const auto run = [&](auto f) {
    if (a_shape == b_shape) {
      cpu::parallel_for(n, [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; ++i) out[i] = static_cast<O>(f(a[i], b[i]));
      });
      return;
    }
    if (shape_numel(b_shape) == 1 && a_shape == out_shape) {
      const T bv = b[0];
      cpu::parallel_for(n, [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; ++i) out[i] = static_cast<O>(f(a[i], bv));
      });
      return;
    }
    const kernels::BroadcastIndex index = broadcast_index(out_shape, a_shape, b_shape);
    const int last = index.ndim - 1;
    const int64_t cols = last >= 0 ? index.shape[last] : 1;
    const int64_t rows = cols > 0 ? n / cols : 0;
    const int64_t as = last >= 0 ? index.a_stride[last] : 0;
    const int64_t bs = last >= 0 ? index.b_stride[last] : 0;
    cpu::parallel_for(rows, std::max<int64_t>(1, cpu::kGrain / std::max<int64_t>(cols, 1)),
                      [&](int64_t s, int64_t e) {
                        for (int64_t r = s; r < e; ++r) {
                          int64_t oa, ob;
                          index.offsets(r * cols, oa, ob);
                          O* o = out + r * cols;
                          for (int64_t c = 0; c < cols; ++c) {
                            o[c] = static_cast<O>(f(a[oa + c * as], b[ob + c * bs]));
                          }
                        }
                      });
  };
  // Switch outside the loop so each op gets its own vectorisable inner loop.
  switch (op) {
    case Binary::kAdd:
      run([](T x, T y) { return x + y; });
      return;
    case Binary::kSub:
      run([](T x, T y) { return x - y; });
      return;
    case Binary::kMul:
      run([](T x, T y) { return x * y; });
      return;
    case Binary::kDiv:
      run([](T x, T y) { return x / y; });
      return;
    case Binary::kReluBackward:
      run([](T x, T y) { return x > T(0) ? y : T(0); });
      return;
    default:
      run([op](T x, T y) { return kernels::apply_binary(op, x, y); });
      return;
  }
}

void check_binary_operands(const char* op, const Tensor& a, const Tensor& b) {
  detail::check_same(op, a, b);
}

const char* binary_name(Binary op) {
  switch (op) {
    case Binary::kAdd:
      return "add";
    case Binary::kSub:
      return "sub";
    case Binary::kMul:
      return "mul";
    case Binary::kDiv:
      return "div";
    case Binary::kPow:
      return "pow";
    case Binary::kMax:
      return "maximum";
    case Binary::kMin:
      return "minimum";
    case Binary::kEq:
      return "eq";
    case Binary::kNe:
      return "ne";
    case Binary::kLt:
      return "lt";
    case Binary::kLe:
      return "le";
    case Binary::kGt:
      return "gt";
    case Binary::kGe:
      return "ge";
    default:
      return "elementwise backward";
  }
}

}  // namespace

Tensor unary(Unary op, const Tensor& x, kernels::UnaryParams params) {
  detail::check_defined("unary op", x, "input");
  Tensor y(x.shape(), x.dtype(), x.device());
  if (x.device().is_cuda()) {
    cuda::unary(op, x.dtype(), x.data_ptr(), y.data_ptr(), x.numel(), params, x.device().index);
    return y;
  }
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    const T* in = x.data<T>();
    T* out = y.data<T>();
    const auto loop = [&](auto f) {
      cpu::parallel_for(x.numel(), [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; ++i) out[i] = f(in[i]);
      });
    };
    if constexpr (std::is_same_v<T, float>) {
      if (op == Unary::kGelu) {  // vector erf: libm's erff per element is the slow part
        cpu::parallel_for(x.numel(),
                          [&](int64_t s, int64_t e) { cpu::gelu_f32(in + s, out + s, e - s); });
        return;
      }
    }
    if (op == Unary::kRelu) {
      loop([](T v) { return v > T(0) ? v : T(0); });
    } else if (op == Unary::kNeg) {
      loop([](T v) { return -v; });
    } else if (op == Unary::kMulScalar) {
      const T p = static_cast<T>(params.p);
      loop([p](T v) { return v * p; });
    } else {
      loop([&](T v) { return kernels::apply_unary(op, v, params); });
    }
  };
  if (op == Unary::kNeg || op == Unary::kAbs || op == Unary::kMulScalar ||
      op == Unary::kAddScalar || op == Unary::kRelu || op == Unary::kClamp ||
      op == Unary::kSquare || op == Unary::kSign) {
    detail::dispatch_numeric(x.dtype(), "unary op", run);
  } else {
    detail::dispatch_floating(x.dtype(), "unary op", run);
  }
  return y;
}

Tensor binary(Binary op, const Tensor& a, const Tensor& b) {
  const char* name = binary_name(op);
  check_binary_operands(name, a, b);
  const Shape out_shape = broadcast_shapes(a.shape(), b.shape(), name);
  const bool cmp = kernels::is_comparison(op);
  Tensor out(out_shape, cmp ? DType::kBool : a.dtype(), a.device());
  if (a.device().is_cuda()) {
    cuda::binary(op, a.dtype(), a.data_ptr(), b.data_ptr(), out.data_ptr(), out.numel(),
                 broadcast_index(out_shape, a.shape(), b.shape()), a.device().index);
    return out;
  }
  detail::dispatch_numeric(a.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, float>) {
      if (op == Binary::kGeluBackward && a.shape() == b.shape()) {  // vector erf and exp
        const float* pa = a.data<float>();
        const float* pb = b.data<float>();
        float* po = out.data<float>();
        cpu::parallel_for(out.numel(), [&](int64_t s, int64_t e) {
          cpu::gelu_backward_f32(pa + s, pb + s, po + s, e - s);
        });
        return;
      }
    }
    if (cmp) {
      binary_cpu<T, bool>(op, a.data<T>(), b.data<T>(), out.data<bool>(), out_shape, a.shape(),
                          b.shape());
    } else {
      binary_cpu<T, T>(op, a.data<T>(), b.data<T>(), out.data<T>(), out_shape, a.shape(),
                       b.shape());
    }
  });
  return out;
}

void binary_(Binary op, Tensor& out, const Tensor& b) {
  const char* name = binary_name(op);
  check_binary_operands(name, out, b);
  const Shape shape = broadcast_shapes(out.shape(), b.shape(), name);
  DTRAIN_CHECK(shape == out.shape(), name, "_: in-place result ", shape_str(shape),
               " does not fit the destination ", out.describe());
  DTRAIN_CHECK(!kernels::is_comparison(op), name, "_: comparisons cannot be done in place");
  if (out.device().is_cuda()) {
    cuda::binary(op, out.dtype(), out.data_ptr(), b.data_ptr(), out.data_ptr(), out.numel(),
                 broadcast_index(shape, out.shape(), b.shape()), out.device().index);
    return;
  }
  detail::dispatch_numeric(out.dtype(), name, [&](auto tag) {
    using T = decltype(tag);
    binary_cpu<T, T>(op, out.data<T>(), b.data<T>(), out.data<T>(), shape, out.shape(), b.shape());
  });
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_binary_operands("where", a, b);
  detail::check_defined("where", cond, "condition");
  DTRAIN_CHECK(cond.dtype() == DType::kBool && cond.device() == a.device(),
               "where: condition must be bool on ", a.device().str(), "; got ", cond.describe());
  const Shape ab = broadcast_shapes(a.shape(), b.shape(), "where");
  const Shape shape = broadcast_shapes(cond.shape(), ab, "where");
  Tensor out(shape, a.dtype(), a.device());
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    run_kernel(
        a.device(), out.numel(),
        kernels::WhereElements<T>{cond.data_ptr<bool>(), a.data_ptr<T>(), b.data_ptr<T>(),
                                  out.data_ptr<T>(), broadcast_index(shape, a.shape(), b.shape()),
                                  broadcast_index(shape, cond.shape(), cond.shape())});
  };
  if (a.dtype() == DType::kInt64) {
    run(int64_t{});
  } else {
    detail::dispatch_floating(a.dtype(), "where", run);
  }
  return out;
}

void axpy_(Tensor& y, double alpha, const Tensor& x) {
  detail::check_same("axpy_", y, x);
  DTRAIN_CHECK(y.shape() == x.shape(), "axpy_: shapes differ: ", y.describe(), " and ",
               x.describe());
  if (y.device().is_cuda()) {
    binary_(Binary::kAdd, y, alpha == 1.0 ? x : unary(Unary::kMulScalar, x, {alpha}));
    return;
  }
  detail::dispatch_floating(y.dtype(), "axpy_", [&](auto tag) {
    using T = decltype(tag);
    T* py = y.data<T>();
    const T* px = x.data<T>();
    const T a = static_cast<T>(alpha);
    cpu::parallel_for(y.numel(), [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) py[i] += a * px[i];
    });
  });
}

void scale_(Tensor& t, double factor) {
  if (t.device().is_cuda()) {
    // Elementwise in place: each element is read and written by the same thread.
    cuda::unary(Unary::kMulScalar, t.dtype(), t.data_ptr(), t.data_ptr(), t.numel(), {factor},
                t.device().index);
    return;
  }
  detail::dispatch_floating(t.dtype(), "scale_", [&](auto tag) {
    using T = decltype(tag);
    T* p = t.data<T>();
    const T f = static_cast<T>(factor);
    cpu::parallel_for(t.numel(), [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) p[i] *= f;
    });
  });
}

bool all_finite(const Tensor& t) {
  if (!is_floating(t.dtype())) return true;
  if (t.device().is_cpu() && t.dtype() == DType::kFloat32) {
    // x * 0 is 0 for every finite x and NaN otherwise: a sum that vectorises, per block so that a
    // bad value stops the scan early.
    const float* p = t.data<float>();
    const int64_t n = t.numel();
    for (int64_t b = 0; b < n; b += 4096) {
      const int64_t e = std::min<int64_t>(n, b + 4096);
      float acc = 0.f;
      for (int64_t i = b; i < e; ++i) acc += p[i] * 0.f;
      if (acc != 0.f) return false;
    }
    return true;
  }
  Tensor host = to_dtype(to_device(t, Device::cpu()), DType::kFloat64);
  const double* p = host.data<double>();
  for (int64_t i = 0; i < host.numel(); ++i) {
    if (!std::isfinite(p[i])) return false;
  }
  return true;
}

}  // namespace dtrain::ops

namespace dtrain::ops {

namespace {
/// x [a, b, 1, 1] into out [a, b, h, w] (leading dims equal, every broadcast dim trailing): each
/// element of x fills one contiguous run of out. The backward of a mean or sum over trailing dims
/// (global average pooling) expands this way. False when the shapes are of another kind.
bool expand_trailing_cpu(const Tensor& x, Tensor& out) {
  const Shape& to = out.shape();
  const int64_t lead = static_cast<int64_t>(to.size()) - x.dim();
  if (lead != 0) return false;
  int64_t kept = x.dim();
  while (kept > 0 && x.size(kept - 1) == 1) --kept;
  for (int64_t d = 0; d < kept; ++d) {
    if (x.size(d) != to[d]) return false;
  }
  int64_t run = 1;
  for (int64_t d = kept; d < x.dim(); ++d) run *= to[d];
  const int64_t items = x.numel();
  auto fill = [&](auto tag) {
    using E = decltype(tag);
    const E* src = static_cast<const E*>(x.data_ptr());
    E* dst = static_cast<E*>(out.data_ptr());
    cpu::parallel_for(items, std::max<int64_t>(1, cpu::kGrain / std::max<int64_t>(run, 1)),
                      [&](int64_t b, int64_t e) {
                        for (int64_t i = b; i < e; ++i) std::fill_n(dst + i * run, run, src[i]);
                      });
  };
  switch (dtype_size(x.dtype())) {
    case 1:
      fill(uint8_t{});
      return true;
    case 2:
      fill(uint16_t{});
      return true;
    case 4:
      fill(uint32_t{});
      return true;
    case 8:
      fill(uint64_t{});
      return true;
    default:
      return false;
  }
}
}  // namespace

Tensor expand(const Tensor& x, const Shape& shape) {
  const Shape out_shape = broadcast_shapes(x.shape(), shape, "expand");
  DTRAIN_CHECK(out_shape == shape, "expand: ", x.describe(), " cannot be expanded to ",
               shape_str(shape));
  if (x.shape() == shape) return x.clone();
  Tensor out(shape, x.dtype(), x.device());
  const kernels::BroadcastIndex index = broadcast_index(shape, x.shape(), x.shape());
  const bool rows_repeat = !x.shape().empty() && index.a_stride[index.ndim - 1] != 0;
  if (x.device().is_cpu() && rows_repeat) {
    // The last dim is not broadcast: copy whole rows.
    const size_t es = dtype_size(x.dtype());
    const int64_t cols = shape.back(), rows = cols > 0 ? out.numel() / cols : 0;
    const char* src = static_cast<const char*>(x.data_ptr());
    char* dst = static_cast<char*>(out.data_ptr());
    cpu::parallel_for(rows, std::max<int64_t>(1, cpu::kGrain / std::max<int64_t>(cols, 1)),
                      [&](int64_t b, int64_t e) {
                        for (int64_t r = b; r < e; ++r) {
                          int64_t off, unused;
                          index.offsets(r * cols, off, unused);
                          std::memcpy(dst + r * cols * es, src + off * es, cols * es);
                        }
                      });
    return out;
  }
  if (x.device().is_cpu() && expand_trailing_cpu(x, out)) return out;
  gather_elements(x, out, index);
  return out;
}

void gather_elements(const Tensor& x, Tensor& out, const kernels::BroadcastIndex& index) {
  const auto run = [&](auto tag) {
    using E = decltype(tag);
    run_kernel(x.device(), out.numel(),
               kernels::GatherElements<E>{static_cast<const E*>(x.data_ptr()),
                                          static_cast<E*>(out.data_ptr()), index});
  };
  switch (dtype_size(x.dtype())) {
    case 1:
      run(uint8_t{});
      return;
    case 2:
      run(uint16_t{});
      return;
    case 4:
      run(uint32_t{});
      return;
    default:
      run(uint64_t{});
      return;
  }
}

void copy_blocks(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width,
                 int64_t rows, Device device) {
  if (device.is_cuda()) {
    cuda::copy_2d(dst, dst_pitch, src, src_pitch, width, rows, device.index);
    return;
  }
  cpu::parallel_for(rows, std::max<int64_t>(1, cpu::kGrain / std::max<int64_t>(width / 4, 1)),
                    [&](int64_t b, int64_t e) {
                      for (int64_t r = b; r < e; ++r) {
                        std::memcpy(static_cast<char*>(dst) + r * dst_pitch,
                                    static_cast<const char*>(src) + r * src_pitch, width);
                      }
                    });
}

}  // namespace dtrain::ops
