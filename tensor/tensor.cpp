// Tensor handles, creation, conversion and random draws.
#include "dtrain/tensor/tensor.h"

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

#include "dtrain/tensor/cpu/half_convert.h"
#include "dtrain/tensor/cpu/parallel.h"
#include "dtrain/tensor/cuda/cuda_backend.h"
#include "dtrain/tensor/dispatch.h"
#include "dtrain/tensor/kernels.h"
#include "dtrain/tensor/kernels_nn.h"
#include "dtrain/tensor/ops.h"
#include "dtrain/tensor/run.h"

namespace dtrain {

std::string shape_str(const Shape& shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

std::optional<int64_t> try_shape_numel(const Shape& shape) {
  // Zero dimensions are skipped so that [0, 2^40, 2^40] counts as an overflow too: its strides
  // and the partial products kernels form from its dimensions would still wrap.
  int64_t n = 1;
  bool empty = false;
  for (int64_t d : shape) {
    if (d == 0) {
      empty = true;
    } else if (__builtin_mul_overflow(n, d, &n)) {
      return std::nullopt;
    }
  }
  return empty ? 0 : n;
}

int64_t shape_numel(const Shape& shape) {
  const std::optional<int64_t> n = try_shape_numel(shape);
  if (!n) {
    DTRAIN_THROW(ValueError, "shape ", shape_str(shape),
                 ": the product of its dimensions overflows int64 (more than ",
                 std::numeric_limits<int64_t>::max(), " elements); a dimension is probably wrong");
  }
  return *n;
}

namespace detail {
namespace {
// Atomic: replica threads record graphs concurrently and each stores the same function.
std::atomic<BackwardFn> g_backward_fn{nullptr};
}  // namespace
void set_backward_fn(BackwardFn fn) { g_backward_fn = fn; }

void check_defined(const char* op, const Tensor& t, const char* what) {
  if (!t.defined()) DTRAIN_THROW(ValueError, op, ": ", what, " is an undefined tensor");
}

void check_same(const char* op, const Tensor& a, const Tensor& b) {
  check_defined(op, a, "first operand");
  check_defined(op, b, "second operand");
  if (a.device() != b.device() || a.dtype() != b.dtype()) {
    DTRAIN_THROW(ValueError, op, ": operands differ: ", a.describe(), " and ", b.describe(),
                 "; move or convert one with to_device / to_dtype");
  }
}

Split split_at(const Shape& shape, int64_t dim) {
  Split s;
  for (int64_t d = 0; d < static_cast<int64_t>(shape.size()); ++d) {
    if (d < dim) {
      s.outer *= shape[d];
    } else if (d == dim) {
      s.r = shape[d];
    } else {
      s.inner *= shape[d];
    }
  }
  return s;
}

kernels::BroadcastIndex broadcast_index(const Shape& out, const Shape& a, const Shape& b) {
  kernels::BroadcastIndex index;
  DTRAIN_CHECK(out.size() <= kernels::BroadcastIndex::kMaxDims, "broadcast: at most ",
               kernels::BroadcastIndex::kMaxDims, " dims are supported; got ", shape_str(out));
  index.ndim = static_cast<int>(out.size());
  int64_t sa = 1, sb = 1;
  for (int d = index.ndim - 1; d >= 0; --d) {
    const int64_t ia = d - (index.ndim - static_cast<int>(a.size()));
    const int64_t ib = d - (index.ndim - static_cast<int>(b.size()));
    const int64_t da = ia >= 0 ? a[ia] : 1, db = ib >= 0 ? b[ib] : 1;
    index.shape[d] = out[d];
    index.a_stride[d] = da == 1 ? 0 : sa;
    index.b_stride[d] = db == 1 ? 0 : sb;
    sa *= da;
    sb *= db;
  }
  return index;
}

}  // namespace detail

namespace {
/// The bytes a tensor of `shape` and `dtype` needs, after checking every dimension is >= 0 and
/// neither the element count nor the byte count overflows.
size_t checked_nbytes(const Shape& shape, DType dtype) {
  for (int64_t d : shape) {
    if (d < 0) DTRAIN_THROW(ValueError, "negative dimension in shape ", shape_str(shape));
  }
  const int64_t n = shape_numel(shape);
  int64_t bytes = 0;
  if (__builtin_mul_overflow(n, static_cast<int64_t>(dtype_size(dtype)), &bytes)) {
    DTRAIN_THROW(ValueError, dtype_name(dtype), " tensor of shape ", shape_str(shape), " (", n,
                 " elements) needs more than ", std::numeric_limits<int64_t>::max(),
                 " bytes; a dimension is probably wrong");
  }
  return static_cast<size_t>(bytes);
}

using kernels::load_element;
using kernels::store_element;

/// Host conversion between any two dtypes. Integer pairs keep full 64-bit precision.
void convert_cpu(const void* src, DType st, void* dst, DType dt, int64_t n) {
  if (st == dt) {
    std::memcpy(dst, src, n * dtype_size(st));
    return;
  }
  if (st == DType::kInt64 && dt == DType::kInt32) {
    for (int64_t i = 0; i < n; ++i)
      static_cast<int32_t*>(dst)[i] = static_cast<int32_t>(static_cast<const int64_t*>(src)[i]);
    return;
  }
  // float32 <-> float16 / bfloat16 (gradient compression): typed loops (F16C for float16), the
  // same bits as store_element, without the per-element dtype switch and the trip through double.
  const auto* f32 = static_cast<const float*>(src);
  const auto* u16 = static_cast<const uint16_t*>(src);
  auto* to_f32 = static_cast<float*>(dst);
  auto* to_u16 = static_cast<uint16_t*>(dst);
  const auto each_range = [n](auto convert) {  // convert(begin, end) over parallel ranges
    cpu::parallel_for(n, [&](int64_t b, int64_t e) { convert(b, e); });
  };
  if (st == DType::kFloat32 && dt == DType::kFloat16) {
    return each_range(
        [&](int64_t b, int64_t e) { cpu::float_to_half_n(f32 + b, to_u16 + b, e - b); });
  }
  if (st == DType::kFloat16 && dt == DType::kFloat32) {
    return each_range(
        [&](int64_t b, int64_t e) { cpu::half_to_float_n(u16 + b, to_f32 + b, e - b); });
  }
  if (st == DType::kFloat32 && dt == DType::kBFloat16) {
    return each_range([&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) to_u16[i] = kernels::float_to_bf16(f32[i]);
    });
  }
  if (st == DType::kBFloat16 && dt == DType::kFloat32) {
    return each_range([&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) to_f32[i] = kernels::bf16_to_float(u16[i]);
    });
  }
  cpu::parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) store_element(dst, dt, i, load_element(src, st, i));
  });
}
}  // namespace

// ---- Tensor ---------------------------------------------------------------------------------
Tensor::Tensor(const Shape& shape, DType dtype, Device device) {
  const size_t nbytes = checked_nbytes(shape, dtype);
  impl_ = std::make_shared<detail::TensorImpl>();
  impl_->storage = std::make_shared<Storage>(nbytes, device);
  impl_->shape = shape;
  impl_->dtype = dtype;
}

Tensor::Tensor(std::shared_ptr<Storage> storage, size_t offset_bytes, const Shape& shape,
               DType dtype) {
  const size_t nbytes = checked_nbytes(shape, dtype);
  const size_t have = storage ? storage->nbytes() : 0;
  DTRAIN_CHECK(storage && offset_bytes <= have && nbytes <= have - offset_bytes, "view of ",
               shape_str(shape), " ", dtype_name(dtype), " at byte offset ", offset_bytes,
               " needs ", nbytes, " bytes from there; the storage has ", have);
  impl_ = std::make_shared<detail::TensorImpl>();
  impl_->storage = std::move(storage);
  impl_->offset_bytes = offset_bytes;
  impl_->shape = shape;
  impl_->dtype = dtype;
}

detail::TensorImpl& Tensor::impl() const {
  if (!impl_) DTRAIN_THROW(ValueError, "use of an undefined tensor");
  return *impl_;
}

int64_t Tensor::size(int64_t d) const {
  DTRAIN_CHECK(dim() > 0, "Tensor::size: ", describe(), " has no dimensions");
  return shape()[ops::normalize_dim(d, dim(), "Tensor::size")];
}

std::string Tensor::describe() const {
  if (!defined()) return "undefined";
  return std::string(dtype_name(dtype())) + shape_str(shape()) + " on " + device().str();
}

void Tensor::check_dtype(DType expected) const {
  if (dtype() != expected) {
    DTRAIN_THROW(ValueError, "data<", dtype_name(expected), ">() on a tensor of dtype ",
                 dtype_name(dtype()), " (", describe(), ")");
  }
}

void Tensor::throw_not_host(DType expected) const {
  DTRAIN_THROW(ValueError, "data<", dtype_name(expected), ">() on ", describe(),
               ": host code cannot read memory on ", device().str(),
               "; copy it first with to_device(t, Device::cpu()) (the .to(cpu) of LibTorch), or "
               "use data_ptr() to hand the device pointer to a kernel");
}

bool Tensor::shares_storage(const Tensor& other) const {
  return defined() && other.defined() && storage() == other.storage();
}

Tensor Tensor::view(Shape shape) const {
  int64_t known = 1, infer = -1;
  bool wraps = false;  // then nothing is inferred, and the check below names the shape
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      DTRAIN_CHECK(infer < 0, "view: more than one -1 in ", shape_str(shape));
      infer = static_cast<int64_t>(i);
    } else {
      wraps = __builtin_mul_overflow(known, shape[i], &known) || wraps;
    }
  }
  if (!wraps && infer >= 0 && known > 0 && numel() % known == 0) shape[infer] = numel() / known;
  DTRAIN_CHECK(shape_numel(shape) == numel(), "view: cannot view ", describe(), " as ",
               shape_str(shape), " (", numel(), " elements)");
  Tensor out(storage(), storage_offset_bytes(), shape, dtype());
  out.impl().name = impl().name;
  return out;
}

Tensor Tensor::clone() const {
  Tensor out(shape(), dtype(), device());
  out.copy_(*this);
  return out;
}

Tensor Tensor::detach() const {
  return Tensor(storage(), storage_offset_bytes(), shape(), dtype());
}

void Tensor::copy_(const Tensor& src) {
  detail::check_defined("copy_", src, "source");
  DTRAIN_CHECK(src.numel() == numel(), "copy_: source ", src.describe(), " has ", src.numel(),
               " elements; destination ", describe(), " has ", numel());
  if (device().is_cpu() && src.device().is_cpu()) {
    convert_cpu(src.data_ptr(), src.dtype(), data_ptr(), dtype(), numel());
  } else if (src.dtype() == dtype()) {
    cuda::copy_bytes(data_ptr(), device(), src.data_ptr(), src.device(), nbytes());
  } else if (device() == src.device()) {
    cuda::convert(src.data_ptr(), src.dtype(), data_ptr(), dtype(), numel(), device().index);
  } else {
    copy_(to_device(src, device()));
  }
}

void Tensor::fill_(double value) {
  if (device().is_cuda()) {
    cuda::fill(data_ptr(), dtype(), numel(), value, device().index);
    return;
  }
  const int64_t n = numel();
  if (value == 0.0) {
    std::memset(data_ptr(), 0, nbytes());
    return;
  }
  void* p = data_ptr();
  const DType t = dtype();
  if (t == DType::kFloat32) {
    float* f = static_cast<float*>(p);
    cpu::parallel_for(n, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) f[i] = static_cast<float>(value);
    });
    return;
  }
  for (int64_t i = 0; i < n; ++i) store_element(p, t, i, value);
}

template <class T>
T Tensor::item() const {
  DTRAIN_CHECK(numel() == 1, "item(): tensor ", describe(), " has ", numel(),
               " elements; expected exactly one");
  Tensor host = to_device(*this, Device::cpu());
  return static_cast<T>(load_element(host.data_ptr(), dtype(), 0));
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  Tensor host = to_device(*this, Device::cpu());
  std::vector<T> out(numel());
  if (dtype() == DTypeOf<T>::value) {
    // memcpy's pointers must be valid even for 0 bytes; an empty vector's data() may be null.
    if (!out.empty()) std::memcpy(out.data(), host.data_ptr(), nbytes());
  } else {
    for (int64_t i = 0; i < numel(); ++i)
      out[i] = static_cast<T>(load_element(host.data_ptr(), dtype(), i));
  }
  return out;
}

template float Tensor::item<float>() const;
template double Tensor::item<double>() const;
template int64_t Tensor::item<int64_t>() const;
template int32_t Tensor::item<int32_t>() const;
template bool Tensor::item<bool>() const;
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<int64_t> Tensor::to_vector<int64_t>() const;
template std::vector<int32_t> Tensor::to_vector<int32_t>() const;
template std::vector<uint8_t> Tensor::to_vector<uint8_t>() const;

Tensor& Tensor::set_requires_grad(bool enabled) {
  if (enabled && !is_floating(dtype())) {
    DTRAIN_THROW(ValueError,
                 "requires_grad: only floating-point tensors can require gradients; got ",
                 describe());
  }
  DTRAIN_CHECK(enabled || is_leaf(), "requires_grad(false) on a non-leaf tensor ", describe(),
               "; use detach() to cut it from the graph");
  impl().requires_grad = enabled;
  return *this;
}

bool Tensor::is_leaf() const { return impl().is_leaf; }

Tensor Tensor::grad() const {
  const auto& g = impl().grad;
  return g ? Tensor(g) : Tensor();
}

void Tensor::set_grad(const Tensor& grad) {
  if (grad.defined()) {
    DTRAIN_CHECK(grad.shape() == shape() && grad.dtype() == dtype() && grad.device() == device(),
                 "set_grad: gradient ", grad.describe(), " does not match tensor ", describe());
  }
  impl().grad = grad.impl_ptr();
}

void Tensor::backward(const Tensor& grad, bool retain_graph) const {
  DTRAIN_CHECK(requires_grad(), "backward(): tensor ", describe(),
               " does not require grad and has no grad_fn; did you compute it under NoGradGuard "
               "or from tensors without requires_grad?");
  if (!grad.defined()) {
    DTRAIN_CHECK(numel() == 1,
                 "backward(): grad can be implicitly created only for scalar "
                 "outputs; this tensor is ",
                 describe(),
                 ". Pass a gradient of the same shape "
                 "or reduce it (e.g. sum or mean) first");
  }
  if (detail::g_backward_fn.load() == nullptr) {
    // No graph was ever recorded: the tensor is a leaf, whose gradient is the seed itself.
    Tensor seed = grad.defined() ? grad.clone() : ones(shape(), dtype(), device());
    Tensor current = this->grad();
    if (current.defined()) {
      ops::binary_(kernels::Binary::kAdd, current, seed);  // accumulate, as the engine does
    } else {
      const_cast<Tensor*>(this)->set_grad(seed);
    }
    return;
  }
  detail::g_backward_fn.load()(*this, grad, retain_graph);
}

// ---- creation -------------------------------------------------------------------------------
Tensor empty(const Shape& shape, DType dtype, Device device) {
  return Tensor(shape, dtype, device);
}

Tensor full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t(shape, dtype, device);
  t.fill_(value);
  return t;
}
Tensor zeros(const Shape& shape, DType dtype, Device device) {
  return full(shape, 0, dtype, device);
}
Tensor ones(const Shape& shape, DType dtype, Device device) {
  return full(shape, 1, dtype, device);
}
Tensor zeros_like(const Tensor& t) { return zeros(t.shape(), t.dtype(), t.device()); }
Tensor empty_like(const Tensor& t) { return empty(t.shape(), t.dtype(), t.device()); }
Tensor scalar_tensor(double value, DType dtype, Device device) {
  return full({}, value, dtype, device);
}

Tensor arange(double start, double end, double step, DType dtype) {
  DTRAIN_CHECK(step != 0, "arange: step must be non-zero");
  const int64_t n = std::max<int64_t>(0, static_cast<int64_t>(std::ceil((end - start) / step)));
  Tensor t({n}, dtype);
  for (int64_t i = 0; i < n; ++i) store_element(t.data_ptr(), dtype, i, start + i * step);
  return t;
}

template <class T>
Tensor from_vector(const std::vector<T>& values, Shape shape, Device device) {
  if (shape.empty() && values.size() != 1) shape = {static_cast<int64_t>(values.size())};
  DTRAIN_CHECK(shape_numel(shape) == static_cast<int64_t>(values.size()),
               "from_vector: ", values.size(), " values do not fill shape ", shape_str(shape));
  Tensor t(shape, DTypeOf<T>::value);
  if constexpr (std::is_same_v<T, bool>) {
    for (size_t i = 0; i < values.size(); ++i) t.data<bool>()[i] = values[i];
  } else if (!values.empty()) {  // an empty vector's data() may be null, which memcpy forbids
    std::memcpy(t.data_ptr(), values.data(), values.size() * sizeof(T));
  }
  return to_device(t, device);
}
template Tensor from_vector(const std::vector<float>&, Shape, Device);
template Tensor from_vector(const std::vector<double>&, Shape, Device);
template Tensor from_vector(const std::vector<int64_t>&, Shape, Device);
template Tensor from_vector(const std::vector<int32_t>&, Shape, Device);
template Tensor from_vector(const std::vector<uint8_t>&, Shape, Device);
template Tensor from_vector(const std::vector<bool>&, Shape, Device);

Tensor to_dtype(const Tensor& t, DType dtype) {
  if (t.dtype() == dtype) return t;
  Tensor out(t.shape(), dtype, t.device());
  out.copy_(t);
  return out;
}

Tensor to_device(const Tensor& t, Device device) {
  if (t.device() == device) return t;
  Tensor out(t.shape(), t.dtype(), device);
  cuda::copy_bytes(out.data_ptr(), device, t.data_ptr(), t.device(), t.nbytes());
  return out;
}

// ---- random ---------------------------------------------------------------------------------
Generator& default_generator() {
  static Generator gen(0, 0);
  return gen;
}
void manual_seed(uint64_t seed) { default_generator() = Generator(seed, 0); }

void uniform_(Tensor& t, double low, double high, Generator& gen) {
  const uint64_t offset = gen.reserve(t.numel());
  detail::dispatch_floating(t.dtype(), "uniform_", [&](auto tag) {
    using T = decltype(tag);
    run_kernel(
        t.device(), t.numel(),
        kernels::UniformFill<T>{t.data_ptr<T>(), gen.seed(), gen.stream(), offset, low, high},
        4096);
  });
}

void normal_(Tensor& t, double mean, double std, Generator& gen) {
  // Two normals per Philox block (Box-Muller on 64-bit uniforms): two words per element.
  const uint64_t offset = gen.reserve(2 * static_cast<uint64_t>(t.numel()));
  detail::dispatch_floating(t.dtype(), "normal_", [&](auto tag) {
    using T = decltype(tag);
    run_kernel(t.device(), t.numel(),
               kernels::NormalFill<T>{t.data_ptr<T>(), gen.seed(), gen.stream(), offset, mean, std},
               4096);
  });
}

Tensor rand(const Shape& shape, Generator& gen, DType dtype) {
  return uniform(shape, 0, 1, gen, dtype);
}

Tensor uniform(const Shape& shape, double low, double high, Generator& gen, DType dtype) {
  Tensor t(shape, dtype);
  uniform_(t, low, high, gen);
  return t;
}

Tensor randn(const Shape& shape, Generator& gen, DType dtype) {
  Tensor t(shape, dtype);
  normal_(t, 0, 1, gen);
  return t;
}

Tensor randint(int64_t low, int64_t high, const Shape& shape, Generator& gen) {
  DTRAIN_CHECK(high > low, "randint: empty range [", low, ", ", high, ")");
  Tensor t(shape, DType::kInt64);
  int64_t* p = t.data<int64_t>();
  const uint64_t range = static_cast<uint64_t>(high - low);
  if (range <= (uint64_t{1} << 32)) {
    const uint64_t offset = gen.reserve(t.numel());
    for (int64_t i = 0; i < t.numel(); ++i) {
      const kernels::Philox4 r = kernels::philox(gen.seed(), gen.stream(), offset + i / 4);
      p[i] = low + static_cast<int64_t>(r.v[i % 4] % range);
    }
    return t;
  }
  // Ranges wider than 32 bits take two words per element.
  const uint64_t offset = gen.reserve(2 * static_cast<uint64_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) {
    const kernels::Philox4 r = kernels::philox(gen.seed(), gen.stream(), offset + i / 2);
    const int lane = static_cast<int>(i % 2) * 2;
    const uint64_t word = (static_cast<uint64_t>(r.v[lane]) << 32) | r.v[lane + 1];
    p[i] = low + static_cast<int64_t>(word % range);
  }
  return t;
}

}  // namespace dtrain
