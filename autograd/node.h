// The recorded graph: nodes (one per differentiable op application), the per-tensor autograd
// metadata, and how ops record themselves. Define-by-run: the graph is built as ops execute.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "dtrain/autograd/hooks.h"
#include "dtrain/tensor/tensor.h"

namespace dtrain::autograd {

class Node;
using NodePtr = std::shared_ptr<Node>;

/// A backward function. Every node has exactly one (differentiable) output; apply() maps the
/// gradient of that output to gradients of the node's inputs (undefined where none is needed).
class Node {
 public:
  virtual ~Node() = default;
  virtual std::string_view name() const = 0;
  virtual std::vector<Tensor> apply(const Tensor& grad_output) = 0;
  /// Frees saved tensors after a backward without retain_graph.
  virtual void release() { released_ = true; }
  bool released() const { return released_; }

  /// One entry per forward input: the node its gradient flows to, or null.
  std::vector<NodePtr> next;
  /// Creation order; the engine runs ready nodes latest-first, like the reverse of the forward.
  uint64_t sequence = 0;
  /// Hooks on the gradient of this node's output (tensor hooks of non-leaf tensors).
  std::vector<GradHook> pre_hooks;
  /// "mul with inputs float32[3, 4], float32[4]": recorded in anomaly mode only.
  std::string forward_info;

 protected:
  bool released_ = false;
};

/// Backward of a forward op as a closure; saved tensors are the closure's captures.
class FunctionNode final : public Node {
 public:
  using Backward = std::function<std::vector<Tensor>(const Tensor&)>;
  FunctionNode(std::string name, Backward backward)
      : name_(std::move(name)), backward_(std::move(backward)) {}
  std::string_view name() const override { return name_; }
  std::vector<Tensor> apply(const Tensor& grad_output) override;
  void release() override;

 private:
  std::string name_;
  Backward backward_;
};

/// Adds incoming gradients into a leaf's .grad (in place when one exists, so a gradient that is a
/// view into a larger buffer stays one), running the leaf's hooks around it.
class AccumulateGrad final : public Node {
 public:
  explicit AccumulateGrad(std::shared_ptr<detail::TensorImpl> leaf) : leaf_(std::move(leaf)) {}
  std::string_view name() const override { return "AccumulateGrad"; }
  std::vector<Tensor> apply(const Tensor& grad_output) override;
  void release() override {}  // owns no saved tensors; may run again in the next backward

 private:
  std::shared_ptr<detail::TensorImpl> leaf_;
};

struct AutogradMeta {
  NodePtr grad_fn;                       // null for leaves
  std::weak_ptr<Node> grad_accumulator;  // leaves: reused across graphs
  std::vector<GradHook> hooks;           // leaves: run before accumulation
  std::vector<PostAccumulateHook> post_accumulate_hooks;
};

/// The tensor's metadata, created on first use.
AutogradMeta& meta(const Tensor& t);
NodePtr grad_fn(const Tensor& t);
/// The node a gradient for t flows into: its grad_fn, its accumulator (leaf requiring grad), or
/// null.
NodePtr gradient_edge(const Tensor& t);

/// Records `out` as produced by a node named `name` from `inputs` when grad mode is on and some
/// input requires grad; returns out (now requiring grad) either way.
Tensor record(Tensor out, const char* name, const std::vector<Tensor>& inputs,
              FunctionNode::Backward backward);

}  // namespace dtrain::autograd
