// Tensor: a contiguous, row-major view (storage, byte offset, shape, dtype) of a Storage, plus the
// autograd fields every tensor carries (requires_grad, grad, and an opaque slot the autograd layer
// fills). Views share storage, so a gradient can live inside a larger flat buffer.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dtrain/tensor/check.h"
#include "dtrain/tensor/dtype.h"
#include "dtrain/tensor/storage.h"

namespace dtrain {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& shape);  // "[64, 784]"
/// The number of elements: the product of the dimensions (1 for [], 0 when a dimension is 0).
/// Throws ValueError naming the shape when the product of its non-zero dimensions does not fit
/// in int64 (kernels that step through the dimensions would compute it).
int64_t shape_numel(const Shape& shape);
/// shape_numel without the throw: nullopt when the product overflows int64.
std::optional<int64_t> try_shape_numel(const Shape& shape);

namespace autograd {
struct AutogradMeta;  // defined by the autograd layer
}

class Tensor;

namespace detail {
struct TensorImpl {
  std::shared_ptr<Storage> storage;
  size_t offset_bytes = 0;
  Shape shape;
  DType dtype = DType::kFloat32;
  bool requires_grad = false;
  bool is_leaf = true;               // false once the autograd layer records it as an op's output
  std::shared_ptr<TensorImpl> grad;  // accumulated gradient (leaves, or tensors that retain it)
  std::shared_ptr<autograd::AutogradMeta> autograd;
  std::string name;  // optional, used in error messages (parameters carry their names)
};
/// Installed by the autograd layer when it records the first graph node; Tensor::backward calls it.
using BackwardFn = void (*)(const Tensor& root, const Tensor& grad, bool retain_graph);
void set_backward_fn(BackwardFn fn);
}  // namespace detail

/// Copying a Tensor copies the handle, never the data: both refer to the same memory.
class Tensor {
 public:
  Tensor() = default;
  /// Uninitialised memory of the given shape.
  Tensor(const Shape& shape, DType dtype = DType::kFloat32, Device device = Device::cpu());
  /// A view of `storage` starting at offset_bytes; throws ValueError if it does not fit.
  Tensor(std::shared_ptr<Storage> storage, size_t offset_bytes, const Shape& shape, DType dtype);

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  int64_t dim() const { return static_cast<int64_t>(impl().shape.size()); }
  /// size(-1) is the last dimension.
  int64_t size(int64_t d) const;
  int64_t numel() const { return shape_numel(impl().shape); }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage->device(); }
  size_t nbytes() const { return numel() * dtype_size(dtype()); }
  /// "float32[64, 784] on cpu", for messages.
  std::string describe() const;

  void* data_ptr() const {
    return static_cast<char*>(impl().storage->data()) + impl().offset_bytes;
  }
  /// Typed pointer for host code: throws ValueError when T does not match dtype() or when the
  /// tensor is on a CUDA device (reading it on the host would fault; copy it with
  /// to_device(t, Device::cpu()) first, or take data_ptr<T>() to hand a kernel).
  template <class T>
  T* data() const {
    check_dtype(DTypeOf<T>::value);
    if (!device().is_cpu()) throw_not_host(DTypeOf<T>::value);
    return static_cast<T*>(data_ptr());
  }
  /// Typed pointer on the tensor's own device, for kernel arguments; checks the dtype only.
  template <class T>
  T* data_ptr() const {
    check_dtype(DTypeOf<T>::value);
    return static_cast<T*>(data_ptr());
  }
  const std::shared_ptr<Storage>& storage() const { return impl().storage; }
  size_t storage_offset_bytes() const { return impl().offset_bytes; }
  bool shares_storage(const Tensor& other) const;

  /// Shares memory, no autograd link (see dtrain::reshape for the differentiable form).
  Tensor view(Shape shape) const;
  /// A new tensor with the same data in fresh memory, no autograd link.
  Tensor clone() const;
  /// Same memory, no autograd history, requires_grad false.
  Tensor detach() const;
  /// Copies src's values into this tensor (same numel; dtypes and devices may differ).
  void copy_(const Tensor& src);
  void fill_(double value);
  void zero_() { fill_(0.0); }

  /// The single value of a one-element tensor, converted to T.
  template <class T>
  T item() const;
  /// All values, copied to the host and converted to T.
  template <class T>
  std::vector<T> to_vector() const;

  // Autograd fields. Ops that record graph nodes live in the autograd layer.
  bool requires_grad() const { return impl().requires_grad; }
  /// Marks a leaf as needing a gradient; throws for integer dtypes.
  Tensor& set_requires_grad(bool enabled = true);
  Tensor& requires_grad_(bool enabled = true) { return set_requires_grad(enabled); }
  bool is_leaf() const;
  /// The accumulated gradient (undefined until a backward reaches this tensor).
  Tensor grad() const;
  void set_grad(const Tensor& grad);
  /// Computes gradients of this tensor with respect to the leaves. A non-scalar needs `grad`.
  void backward(const Tensor& grad = Tensor(), bool retain_graph = false) const;
  const std::string& name() const { return impl().name; }
  void set_name(std::string name) { impl().name = std::move(name); }

  detail::TensorImpl& impl() const;
  const std::shared_ptr<detail::TensorImpl>& impl_ptr() const { return impl_; }
  explicit Tensor(std::shared_ptr<detail::TensorImpl> impl) : impl_(std::move(impl)) {}

 private:
  void check_dtype(DType expected) const;
  [[noreturn]] void throw_not_host(DType expected) const;
  std::shared_ptr<detail::TensorImpl> impl_;
};

// ---- creation -------------------------------------------------------------------------------
Tensor empty(const Shape& shape, DType dtype = DType::kFloat32, Device device = Device::cpu());
Tensor zeros(const Shape& shape, DType dtype = DType::kFloat32, Device device = Device::cpu());
Tensor ones(const Shape& shape, DType dtype = DType::kFloat32, Device device = Device::cpu());
Tensor full(const Shape& shape, double value, DType dtype = DType::kFloat32,
            Device device = Device::cpu());
Tensor zeros_like(const Tensor& t);
Tensor empty_like(const Tensor& t);
/// [start, start + step, ...) below end.
Tensor arange(double start, double end, double step = 1.0, DType dtype = DType::kFloat32);
/// From host values; shape defaults to [values.size()].
template <class T>
Tensor from_vector(const std::vector<T>& values, Shape shape = {}, Device device = Device::cpu());
Tensor scalar_tensor(double value, DType dtype = DType::kFloat32, Device device = Device::cpu());

/// A copy converted to dtype (the same tensor when it already has that dtype).
Tensor to_dtype(const Tensor& t, DType dtype);
/// A copy on device (the same tensor when it is already there).
Tensor to_device(const Tensor& t, Device device);

/// Counter-based random numbers: Philox4x32-10 keyed by (seed, stream). Element i of a draw uses
/// counter (offset + i / 4), so values do not depend on thread count or device. Not thread-safe.
class Generator {
 public:
  explicit Generator(uint64_t seed = 0, uint64_t stream = 0) : seed_(seed), stream_(stream) {}
  uint64_t seed() const { return seed_; }
  uint64_t stream() const { return stream_; }
  /// Philox blocks consumed so far; with seed and stream it is the whole state.
  uint64_t offset() const { return offset_; }
  void set_offset(uint64_t offset) { offset_ = offset; }
  /// Reserves n values and returns the block offset where they start.
  uint64_t reserve(uint64_t n) {
    const uint64_t start = offset_;
    offset_ += (n + 3) / 4;
    return start;
  }

 private:
  uint64_t seed_, stream_, offset_ = 0;
};
/// The process-wide generator used when none is passed; manual_seed resets it.
Generator& default_generator();
void manual_seed(uint64_t seed);

Tensor rand(const Shape& shape, Generator& gen = default_generator(),
            DType dtype = DType::kFloat32);
Tensor randn(const Shape& shape, Generator& gen = default_generator(),
             DType dtype = DType::kFloat32);
/// Uniform in [low, high).
Tensor uniform(const Shape& shape, double low, double high, Generator& gen = default_generator(),
               DType dtype = DType::kFloat32);
/// In place: fills t with U[low, high) or N(mean, std) draws.
void uniform_(Tensor& t, double low, double high, Generator& gen = default_generator());
void normal_(Tensor& t, double mean, double std, Generator& gen = default_generator());
/// Integers uniform in [low, high), int64.
Tensor randint(int64_t low, int64_t high, const Shape& shape, Generator& gen = default_generator());

}  // namespace dtrain
