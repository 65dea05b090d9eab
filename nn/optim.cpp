// Optimiser steps: state, per-step scalars and weight-decay masks here; the per-element update is
// an in-place op of the tensor layer (ops::sgd_update_, ...), which runs it on the parameter's
// device.
#include "dtrain/nn/optim.h"

#include <charconv>
#include <cmath>
#include <unordered_set>

#include "dtrain/autograd/grad_mode.h"
#include "dtrain/nn/layers.h"
#include "dtrain/tensor/kernels.h"
#include "dtrain/tensor/ops.h"
#include "dtrain/tensor/printable.h"

namespace dtrain::nn {

namespace {
std::string key(size_t i, const std::string& name) { return std::to_string(i) + "." + name; }
}  // namespace

Optimizer::Optimizer(std::vector<Tensor> params, double lr) : params_(std::move(params)), lr_(lr) {
  DTRAIN_CHECK(lr >= 0, "optimizer: learning rate must be >= 0; got ", lr);
  for (size_t i = 0; i < params_.size(); ++i) {
    DTRAIN_CHECK(params_[i].defined() && params_[i].requires_grad(), "optimizer: parameter ", i,
                 " (", params_[i].name(), ") does not require grad");
  }
  decays_.assign(params_.size(), true);
}

void Optimizer::set_weight_decay_mask(std::vector<bool> decays) {
  DTRAIN_CHECK(decays.size() == params_.size(), name(), ": the weight decay mask has ",
               decays.size(), " entries but the optimiser has ", params_.size(),
               " parameters; expected one flag per parameter, in params() order");
  decays_ = std::move(decays);
}

namespace {
/// Elements `r` of contiguous `t` as a flat tensor sharing its memory.
Tensor flat_elements(const Tensor& t, ElementRange r) {
  return Tensor(t.storage(), t.storage_offset_bytes() + r.begin * dtype_size(t.dtype()), {r.size()},
                t.dtype());
}
}  // namespace

void Optimizer::step() {
  NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor g = params_[i].grad();
    if (!g.defined()) continue;
    if (is_sharded()) {
      Tensor p = flat_elements(params_[i], owned_[i]);
      update(i, p, flat_elements(g, owned_[i]));
    } else {
      update(i, params_[i], g);
    }
  }
  ++steps_;
}

Shape Optimizer::state_shape(size_t i) const {
  return is_sharded() ? Shape{owned_[i].size()} : params_[i].shape();
}

void Optimizer::shard(std::vector<ElementRange> owned) {
  DTRAIN_CHECK(owned.size() == params_.size(), name(), ": shard() got ", owned.size(),
               " element ranges for ", params_.size(), " parameters; expected one per parameter");
  for (size_t i = 0; i < owned.size(); ++i) {
    const ElementRange r = owned[i];
    DTRAIN_CHECK(r.begin >= 0 && r.begin <= r.end && r.end <= params_[i].numel(), name(),
                 ": shard(): elements [", r.begin, ", ", r.end, ") are outside parameter ", i, " (",
                 params_[i].describe(), ")");
  }
  if (is_sharded()) {
    DTRAIN_CHECK(owned == owned_, name(),
                 ": shard(): the optimiser is sharded already with other element ranges");
    return;
  }
  for (auto& [k, t] : buffers_) {
    const size_t i = parameter_index(k, k.find('.'));
    t = flat_elements(t, owned[i]).clone();
  }
  owned_ = std::move(owned);
}

void Optimizer::zero_grad(bool set_to_none) {
  for (Tensor& p : params_) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    if (set_to_none)
      p.set_grad(Tensor());
    else
      g.zero_();
  }
}

Tensor& Optimizer::buffer(size_t i, const std::string& name) {
  auto [it, inserted] = buffers_.try_emplace(key(i, name));
  if (inserted) it->second = zeros(state_shape(i), params_[i].dtype(), params_[i].device());
  return it->second;
}

double& Optimizer::scalar(size_t i, const std::string& name) { return scalars_[key(i, name)]; }

bool Optimizer::has_buffer(size_t i, const std::string& name) const {
  return buffers_.count(key(i, name)) > 0;
}

OptimizerState Optimizer::state_dict() const {
  OptimizerState s;
  for (const auto& [k, t] : buffers_) s.tensors[k] = t.clone();
  s.scalars = scalars_;
  s.scalars["step"] = static_cast<double>(steps_);
  s.scalars["lr"] = lr_;
  return s;
}

size_t Optimizer::parameter_index(const std::string& key, size_t dot) const {
  size_t i = 0;
  const auto [end, ec] = std::from_chars(key.data(), key.data() + dot, i);
  DTRAIN_CHECK(ec == std::errc() && end == key.data() + dot && dot > 0, name(), " state: key '",
               printable(key), "' does not start with a parameter index (\"<index>.<buffer>\")");
  return i;
}

void Optimizer::load_state_dict(const OptimizerState& state) {
  std::map<std::string, Tensor> loaded;
  for (const auto& [k, t] : state.tensors) {
    const size_t dot = k.find('.');
    const size_t i = dot == std::string::npos ? params_.size() : parameter_index(k, dot);
    DTRAIN_CHECK(i < params_.size(), name(), " state: buffer '", printable(k),
                 "' refers to parameter ", i, " but the optimiser has ", params_.size(),
                 " parameters");
    DTRAIN_CHECK(t.shape() == state_shape(i), name(), " state: buffer '", printable(k),
                 "' has shape ", shape_str(t.shape()), " but parameter ", i, " (",
                 params_[i].name(), ") is ", shape_str(params_[i].shape()),
                 is_sharded() ? " and this replica's shard of it " + shape_str(state_shape(i))
                              : std::string());
    // Checkpoints hold CPU tensors; the update kernels read the buffers on the parameter's device.
    Tensor placed = to_device(to_dtype(t, params_[i].dtype()), params_[i].device());
    loaded[k] = placed.shares_storage(t) ? placed.clone() : placed;
  }
  std::map<std::string, double> per_param;
  for (const auto& [k, v] : state.scalars) {
    const size_t dot = k.find('.');
    if (dot == std::string::npos) continue;  // optimiser-wide: "step", "lr"
    const size_t i = parameter_index(k, dot);
    DTRAIN_CHECK(i < params_.size(), name(), " state: scalar '", printable(k),
                 "' refers to parameter ", i, " but the optimiser has ", params_.size(),
                 " parameters");
    per_param[k] = v;
  }
  buffers_ = std::move(loaded);
  scalars_ = std::move(per_param);
  if (auto it = state.scalars.find("step"); it != state.scalars.end())
    steps_ = static_cast<int64_t>(it->second);
  if (auto it = state.scalars.find("lr"); it != state.scalars.end()) lr_ = it->second;
}

// ---- SGD ------------------------------------------------------------------------------------
SGD::SGD(std::vector<Tensor> params, SgdOptions o) : Optimizer(std::move(params), o.lr), o_(o) {
  DTRAIN_CHECK(o.momentum >= 0 && o.weight_decay >= 0,
               "sgd: momentum and weight_decay must be >= 0");
  DTRAIN_CHECK(!o.nesterov || (o.momentum > 0 && o.dampening == 0),
               "sgd: nesterov needs momentum > 0 and dampening = 0");
}

void SGD::update(size_t i, Tensor& p, const Tensor& g) {
  const bool first = !has_buffer(i, "momentum_buffer");
  Tensor buf = o_.momentum != 0 ? buffer(i, "momentum_buffer") : Tensor();
  const kernels::SgdParams s{static_cast<float>(lr_),
                             static_cast<float>(o_.momentum),
                             static_cast<float>(o_.dampening),
                             static_cast<float>(weight_decay_for(i, o_.weight_decay)),
                             o_.nesterov,
                             first};
  ops::sgd_update_(p, g, buf, s);
}

// ---- Adam / AdamW ---------------------------------------------------------------------------
Adam::Adam(std::vector<Tensor> params, AdamOptions o, bool decoupled)
    : Optimizer(std::move(params), o.lr), o_(o), decoupled_(decoupled) {
  DTRAIN_CHECK(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1,
               "adam: betas must be in [0, 1); got ", o.beta1, ", ", o.beta2);
  DTRAIN_CHECK(o.eps >= 0 && o.weight_decay >= 0, "adam: eps and weight_decay must be >= 0");
}

void Adam::update(size_t i, Tensor& p, const Tensor& g) {
  Tensor& m = buffer(i, "exp_avg");
  Tensor& v = buffer(i, "exp_avg_sq");
  const double t = (scalar(i, "step") += 1);
  const kernels::AdamParams s{static_cast<float>(lr_),
                              static_cast<float>(o_.beta1),
                              static_cast<float>(o_.beta2),
                              static_cast<float>(o_.eps),
                              static_cast<float>(weight_decay_for(i, o_.weight_decay)),
                              static_cast<float>(1 - std::pow(o_.beta1, t)),
                              static_cast<float>(1 - std::pow(o_.beta2, t)),
                              decoupled_};
  ops::adam_update_(p, g, m, v, s);
}

// ---- RMSprop --------------------------------------------------------------------------------
RMSprop::RMSprop(std::vector<Tensor> params, RmspropOptions o)
    : Optimizer(std::move(params), o.lr), o_(o) {
  DTRAIN_CHECK(o.alpha >= 0 && o.eps >= 0 && o.momentum >= 0 && o.weight_decay >= 0,
               "rmsprop: alpha, eps, momentum and weight_decay must be >= 0");
}

void RMSprop::update(size_t i, Tensor& p, const Tensor& g) {
  Tensor& sq = buffer(i, "square_avg");
  Tensor buf = o_.momentum > 0 ? buffer(i, "momentum_buffer") : Tensor();
  const kernels::RmspropParams s{
      static_cast<float>(lr_), static_cast<float>(o_.alpha), static_cast<float>(o_.eps),
      static_cast<float>(weight_decay_for(i, o_.weight_decay)), static_cast<float>(o_.momentum)};
  ops::rmsprop_update_(p, g, sq, buf, s);
}

// ---- weight-decay masks ---------------------------------------------------------------------
namespace {

using TensorSet = std::unordered_set<const dtrain::detail::TensorImpl*>;

void insert_defined(TensorSet& set, const Tensor& t) {
  if (t.defined()) set.insert(t.impl_ptr().get());
}

/// Parameters of normalisation and embedding layers, by identity: names alone cannot tell a
/// LayerNorm's weight from a Linear's.
void collect_norm_and_embedding(const Module& m, TensorSet& norm, TensorSet& embedding) {
  if (const auto* bn = dynamic_cast<const BatchNorm*>(&m)) {
    insert_defined(norm, bn->weight);
    insert_defined(norm, bn->bias);
  } else if (const auto* ln = dynamic_cast<const LayerNorm*>(&m)) {
    insert_defined(norm, ln->weight);
    insert_defined(norm, ln->bias);
  } else if (const auto* e = dynamic_cast<const Embedding*>(&m)) {
    insert_defined(embedding, e->weight);
  } else if (const auto* pe = dynamic_cast<const PositionalEmbedding*>(&m)) {
    insert_defined(embedding, pe->weight);
  }
  for (const auto& [name, child] : m.named_children())
    collect_norm_and_embedding(*child, norm, embedding);
}

}  // namespace

WeightDecayMask weight_decay_mask(const Module& model, const std::vector<std::string>& no_decay) {
  for (const std::string& entry : no_decay) {
    DTRAIN_CHECK(!entry.empty(), "weight_decay_mask: an empty no_decay entry would match every ",
                 "parameter of ", model.describe(), "; remove it");
  }
  TensorSet norm, embedding;
  collect_norm_and_embedding(model, norm, embedding);
  const NamedTensors named = model.named_parameters();
  WeightDecayMask out;
  out.decays.assign(named.size(), true);
  std::vector<bool> used(no_decay.size(), false);
  for (size_t i = 0; i < named.size(); ++i) {
    const auto& [name, p] = named[i];
    const std::string last = name.substr(name.rfind('.') + 1);  // npos + 1 == 0: the whole name
    for (size_t j = 0; j < no_decay.size(); ++j) {
      const std::string& entry = no_decay[j];
      bool hit = false;
      if (entry == "bias")
        hit = last == "bias";
      else if (entry == "norm")
        hit = norm.count(p.impl_ptr().get()) > 0;
      else if (entry == "embedding")
        hit = embedding.count(p.impl_ptr().get()) > 0;
      else
        hit = name.find(entry) != std::string::npos;
      if (hit) {
        out.decays[i] = false;
        used[j] = true;
      }
    }
  }
  for (size_t j = 0; j < no_decay.size(); ++j) {
    if (!used[j]) out.unmatched.push_back(no_decay[j]);
  }
  return out;
}

}  // namespace dtrain::nn
