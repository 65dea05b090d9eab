// Module: the base of every layer and model. Parameters, buffers and child modules are registered
// by name; names of nested ones are joined with dots ("fc1.weight"), in registration order.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dtrain/autograd/functions.h"
#include "dtrain/tensor/tensor.h"

namespace dtrain::nn {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class Module : public std::enable_shared_from_this<Module> {
 public:
  virtual ~Module() = default;
  /// The type's name for messages ("Linear(784 -> 256)").
  virtual std::string describe() const = 0;
  virtual Tensor forward(const Tensor& x) = 0;
  Tensor operator()(const Tensor& x) { return forward(x); }

  /// Parameters of this module and its children, depth first in registration order.
  NamedTensors named_parameters() const;
  std::vector<Tensor> parameters() const;
  NamedTensors named_buffers() const;
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& named_children() const {
    return children_;
  }

  /// Switches training behaviour (dropout, batch-norm statistics) here and in every child.
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  /// Copies of every parameter and buffer, by name (parameters first).
  NamedTensors state_dict() const;
  /// Copies values into the existing tensors (so references to them stay valid). With strict,
  /// any missing, unexpected or mis-shaped key is an error listing all of them.
  void load_state_dict(const NamedTensors& state, bool strict = true);
  /// A deep copy with its own parameters and buffers on `device` (replicas).
  std::shared_ptr<Module> clone(Device device = Device::cpu()) const;
  /// Moves every parameter and buffer to `device` in place: handles held elsewhere (layer
  /// members, optimisers) see the move. Gradients are dropped.
  Module& to(Device device);
  /// The device of the first parameter (or buffer); cpu for a module without state.
  Device device() const;
  /// Zeroes gradients in place (keeps gradient memory, e.g. views into a bucket), or drops them.
  void zero_grad(bool set_to_none = false);
  int64_t num_parameters() const;

 protected:
  /// Registers a parameter: it gets requires_grad and the name used in state dicts.
  Tensor register_parameter(std::string name, Tensor t);
  Tensor register_buffer(std::string name, Tensor t);
  template <class M>
  std::shared_ptr<M> register_module(std::string name, std::shared_ptr<M> m) {
    children_.emplace_back(std::move(name), m);
    return m;
  }
  /// A new module of the same type and configuration with freshly initialised state;
  /// clone() then copies the state in. Modules that do not override it cannot be cloned.
  virtual std::shared_ptr<Module> make_empty() const;

 private:
  void collect(const std::string& prefix, bool params, NamedTensors& out) const;
  NamedTensors params_, buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

using ModulePtr = std::shared_ptr<Module>;

}  // namespace dtrain::nn
