// Optimisers (SGD, Adam, AdamW, RMSprop) with PyTorch's update rules, their state for exact
// resume, and per-parameter weight-decay masks (PyTorch's no-decay param groups). The
// per-element updates are tensor ops (ops::sgd_update_, ...) that run on the parameter's device.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "dtrain/tensor/tensor.h"

namespace dtrain::nn {

class Module;

/// Everything an optimiser needs to continue exactly: per-parameter buffers by
/// "<param index>.<buffer>" and scalars such as "step" and "lr".
struct OptimizerState {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, double> scalars;
};

/// Elements [begin, end) of a parameter in its flattened (row-major) order.
struct ElementRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
  bool operator==(const ElementRange&) const = default;
};

class Optimizer {
 public:
  explicit Optimizer(std::vector<Tensor> params, double lr);
  virtual ~Optimizer() = default;
  virtual std::string_view name() const = 0;
  /// Applies one update to every parameter that has a gradient. Not recorded by autograd.
  void step();
  /// Zeroes gradients in place, or drops them.
  void zero_grad(bool set_to_none = false);
  double lr() const { return lr_; }
  void set_lr(double lr) { lr_ = lr; }
  int64_t steps() const { return steps_; }
  const std::vector<Tensor>& params() const { return params_; }
  /// One flag per parameter, in params() order: true = the parameter gets the optimiser's
  /// weight decay, false = it is updated as in a PyTorch param group with weight_decay=0.
  /// All true by default. Not part of state_dict(); set it again after constructing on resume.
  /// Throws ValueError naming both sizes when decays.size() != params().size().
  void set_weight_decay_mask(std::vector<bool> decays);
  const std::vector<bool>& weight_decay_mask() const { return decays_; }

  /// Sharded state (ZeRO-1, strategy.shard_optimizer): from now on step() updates only
  /// elements `owned[i]` of parameter i (one range per parameter, in params() order; an empty
  /// range updates nothing), and its state buffers hold only those elements, flat. Every
  /// parameter with a gradient is still stepped, with no elements where its range is empty, so
  /// the state's keys and per-parameter scalars are the same on every replica. State that
  /// exists already is cut to the ranges. Throws ValueError for a wrong count or a range
  /// outside its parameter, and when the optimiser is sharded already with other ranges.
  void shard(std::vector<ElementRange> owned);
  bool is_sharded() const { return !owned_.empty(); }
  const std::vector<ElementRange>& owned_elements() const { return owned_; }

  /// Sharded, a buffer holds the parameter's owned elements only (ElementRange order, flat).
  OptimizerState state_dict() const;
  /// Throws naming the first buffer whose shape or presence does not match the parameters (or,
  /// sharded, their owned elements).
  void load_state_dict(const OptimizerState& state);

 protected:
  /// Updates parameter i with its gradient g; buffers come from buffer(i, name).
  virtual void update(size_t i, Tensor& p, const Tensor& g) = 0;
  /// Per-parameter state buffer, zero-initialised on first use.
  Tensor& buffer(size_t i, const std::string& name);
  bool has_buffer(size_t i, const std::string& name) const;
  /// Per-parameter scalar state (0 until set), saved as "<i>.<name>" in the state's scalars.
  double& scalar(size_t i, const std::string& name);
  /// The parameter index that a state key "<index>.<name>" starts with (`dot`: its first '.').
  size_t parameter_index(const std::string& key, size_t dot) const;
  /// The weight decay parameter i gets: `weight_decay`, or 0 where the mask excludes it.
  double weight_decay_for(size_t i, double weight_decay) const {
    return decays_[i] ? weight_decay : 0.0;
  }

  std::vector<Tensor> params_;
  double lr_;
  int64_t steps_ = 0;  // completed step() calls

 private:
  /// The shape of parameter i's state buffers: the parameter's, or its owned elements' when
  /// sharded.
  Shape state_shape(size_t i) const;

  std::vector<bool> decays_;         // one per parameter
  std::vector<ElementRange> owned_;  // one per parameter when sharded, else empty
  std::map<std::string, Tensor> buffers_;
  std::map<std::string, double> scalars_;
};

struct SgdOptions {
  double lr = 0.01, momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false;
};
class SGD : public Optimizer {
 public:
  SGD(std::vector<Tensor> params, SgdOptions options);
  std::string_view name() const override { return "sgd"; }

 protected:
  void update(size_t i, Tensor& p, const Tensor& g) override;

 private:
  SgdOptions o_;
};

struct AdamOptions {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
};
/// Adam (weight decay added to the gradient); AdamW decouples it (PyTorch's default 0.01).
/// Bias correction counts each parameter's own steps, so a parameter that first gets a gradient
/// late is corrected as PyTorch does.
class Adam : public Optimizer {
 public:
  Adam(std::vector<Tensor> params, AdamOptions options, bool decoupled_weight_decay = false);
  std::string_view name() const override { return decoupled_ ? "adamw" : "adam"; }

 protected:
  void update(size_t i, Tensor& p, const Tensor& g) override;

 private:
  AdamOptions o_;
  bool decoupled_;
};
class AdamW : public Adam {
 public:
  AdamW(std::vector<Tensor> params, AdamOptions options) : Adam(std::move(params), options, true) {}
};

struct RmspropOptions {
  double lr = 1e-2, alpha = 0.99, eps = 1e-8, weight_decay = 0, momentum = 0;
};
class RMSprop : public Optimizer {
 public:
  RMSprop(std::vector<Tensor> params, RmspropOptions options);
  std::string_view name() const override { return "rmsprop"; }

 protected:
  void update(size_t i, Tensor& p, const Tensor& g) override;

 private:
  RmspropOptions o_;
};

/// A weight-decay mask for model.parameters() and the no_decay entries that matched nothing.
struct WeightDecayMask {
  std::vector<bool> decays;            // one per parameter, for Optimizer::set_weight_decay_mask
  std::vector<std::string> unmatched;  // no_decay entries, in the given order, that matched none
};

/// Excludes from weight decay the parameters of `model` that an entry of no_decay matches:
///   "bias"      a parameter whose name's last component is "bias";
///   "norm"      the weight and bias of BatchNorm and LayerNorm layers;
///   "embedding" the weight of Embedding and PositionalEmbedding layers;
///   otherwise   a parameter whose dotted name contains the entry.
/// Matching is case-sensitive. Throws ValueError for an empty entry (it would match everything).
WeightDecayMask weight_decay_mask(const Module& model, const std::vector<std::string>& no_decay);

}  // namespace dtrain::nn
