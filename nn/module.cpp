// Module registration, traversal, state dicts and cloning.
#include "dtrain/nn/module.h"

#include <map>
#include <sstream>

#include "dtrain/autograd/grad_mode.h"
#include "dtrain/tensor/printable.h"

namespace dtrain::nn {

Tensor Module::register_parameter(std::string name, Tensor t) {
  t.set_requires_grad(true);
  t.set_name(name);
  params_.emplace_back(std::move(name), t);
  return t;
}

Tensor Module::register_buffer(std::string name, Tensor t) {
  t.set_name(name);
  buffers_.emplace_back(std::move(name), t);
  return t;
}

void Module::collect(const std::string& prefix, bool params, NamedTensors& out) const {
  for (const auto& [name, t] : params ? params_ : buffers_) out.emplace_back(prefix + name, t);
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", params, out);
}

NamedTensors Module::named_parameters() const {
  NamedTensors out;
  collect("", true, out);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

NamedTensors Module::named_buffers() const {
  NamedTensors out;
  collect("", false, out);
  return out;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

NamedTensors Module::state_dict() const {
  NamedTensors out;
  for (auto& [name, t] : named_parameters()) out.emplace_back(name, t.detach().clone());
  for (auto& [name, t] : named_buffers()) out.emplace_back(name, t.detach().clone());
  return out;
}

void Module::load_state_dict(const NamedTensors& state, bool strict) {
  std::map<std::string, Tensor> given(state.begin(), state.end());
  NamedTensors own = named_parameters();
  for (auto& entry : named_buffers()) own.push_back(entry);
  std::vector<std::string> missing, mismatched;
  for (auto& [name, t] : own) {
    auto it = given.find(name);
    if (it == given.end()) {
      missing.push_back(name);
      continue;
    }
    if (it->second.shape() != t.shape()) {
      mismatched.push_back(printable(name) + " (expected " + shape_str(t.shape()) + ", got " +
                           shape_str(it->second.shape()) + ")");
    }
    given.erase(it);
  }
  std::vector<std::string> unexpected;
  for (auto& [name, t] : given) unexpected.push_back(name);
  if (strict && (!missing.empty() || !unexpected.empty() || !mismatched.empty())) {
    std::ostringstream os;
    os << "load_state_dict into " << describe() << ":";
    const auto list = [&](const char* what, const std::vector<std::string>& names) {
      if (names.empty()) return;
      os << " " << what << ":";
      for (const auto& n : names) os << " " << printable(n);  // names may come from a file
      os << ";";
    };
    list("missing keys", missing);
    list("unexpected keys", unexpected);
    list("shape mismatches", mismatched);
    DTRAIN_THROW(ValueError, os.str());
  }
  if (!mismatched.empty()) {
    DTRAIN_THROW(ValueError, "load_state_dict: shape mismatches: ", mismatched.front());
  }
  NoGradGuard no_grad;
  std::map<std::string, Tensor> lookup(state.begin(), state.end());
  for (auto& [name, t] : own) {
    auto it = lookup.find(name);
    if (it != lookup.end()) t.copy_(it->second);
  }
}

std::shared_ptr<Module> Module::make_empty() const {
  DTRAIN_THROW(UnsupportedError, describe(),
               " cannot be cloned: override make_empty() to construct a module of the same "
               "configuration");
}

std::shared_ptr<Module> Module::clone(Device device) const {
  std::shared_ptr<Module> copy = make_empty();
  copy->load_state_dict(state_dict());  // copy_ moves values across devices
  copy->to(device);
  copy->train(training_);
  return copy;
}

Module& Module::to(Device device) {
  NamedTensors all = named_parameters();
  for (auto& entry : named_buffers()) all.push_back(entry);
  for (auto& [name, t] : all) {
    if (t.device() == device) continue;
    // Swap the storage under the shared impl, so every handle to this tensor moves with it.
    Tensor moved = to_device(t, device);
    detail::TensorImpl& impl = t.impl();
    impl.storage = moved.storage();
    impl.offset_bytes = moved.storage_offset_bytes();
    impl.grad.reset();
  }
  return *this;
}

Device Module::device() const {
  auto params = named_parameters();
  if (!params.empty()) return params.front().second.device();
  auto buffers = named_buffers();
  return buffers.empty() ? Device::cpu() : buffers.front().second.device();
}

void Module::zero_grad(bool set_to_none) {
  for (auto& [name, p] : named_parameters()) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    if (set_to_none) {
      p.set_grad(Tensor());
    } else {
      g.zero_();
    }
  }
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& [name, p] : named_parameters()) n += p.numel();
  return n;
}

}  // namespace dtrain::nn
