// Graph recording, hooks and the backward engine.
#include "dtrain/autograd/engine.h"

#include <atomic>
#include <cctype>
#include <functional>
#include <limits>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "dtrain/autograd/grad_mode.h"
#include "dtrain/autograd/node.h"
#include "dtrain/tensor/ops.h"

namespace dtrain::autograd {
namespace {

thread_local bool t_grad_enabled = true;
std::atomic<bool> g_anomaly{false};
std::atomic<uint64_t> g_sequence{0};
constexpr uint64_t kAccumulatePriority = std::numeric_limits<uint64_t>::max();
/// The callbacks queued by the backward running on this thread; null outside a backward. A
/// backward started from a hook (rare) gets a queue of its own and restores the outer one.
thread_local std::vector<std::function<void()>>* t_callbacks = nullptr;
std::atomic<uint64_t> g_backward_ids{0};
thread_local uint64_t t_backward_id = 0;

/// Installs a fresh callback queue for one backward and puts back the enclosing one on exit.
class CallbackScope {
 public:
  CallbackScope() : outer_(t_callbacks), outer_id_(t_backward_id) {
    t_callbacks = &queued_;
    t_backward_id = g_backward_ids.fetch_add(1, std::memory_order_relaxed) + 1;
  }
  ~CallbackScope() {
    t_callbacks = outer_;
    t_backward_id = outer_id_;
  }
  CallbackScope(const CallbackScope&) = delete;
  CallbackScope& operator=(const CallbackScope&) = delete;
  /// Runs the queued callbacks in order; those a callback queues run too.
  void run() {
    for (size_t i = 0; i < queued_.size(); ++i) {
      std::function<void()> callback = std::move(queued_[i]);
      callback();
    }
    queued_.clear();
  }

 private:
  std::vector<std::function<void()>>* outer_;
  uint64_t outer_id_;
  std::vector<std::function<void()>> queued_;
};

void engine_entry(const Tensor& root, const Tensor& grad, bool retain_graph) {
  backward(root, grad, retain_graph);
}

void add_into(Tensor& acc, const Tensor& g) {
  if (!acc.defined()) {
    acc = g;
  } else {
    acc = ops::binary(kernels::Binary::kAdd, acc, g);
  }
}

/// "max_pool2d" -> "MaxPool2dBackward", the PyTorch-style node name users look for in errors.
std::string backward_name(const char* op) {
  std::string s;
  bool upper = true;
  for (const char* c = op; *c; ++c) {
    if (*c == '_') {
      upper = true;
      continue;
    }
    s += upper ? static_cast<char>(std::toupper(static_cast<unsigned char>(*c))) : *c;
    upper = false;
  }
  return s + "Backward";
}

std::string input_description(const std::vector<Tensor>& inputs) {
  std::string s;
  for (size_t i = 0; i < inputs.size(); ++i) {
    s += (i ? ", " : "") + (inputs[i].defined() ? inputs[i].describe() : std::string("none"));
  }
  return s;
}

}  // namespace

bool grad_enabled() { return t_grad_enabled; }
void set_grad_enabled(bool enabled) { t_grad_enabled = enabled; }
bool anomaly_enabled() { return g_anomaly.load(std::memory_order_relaxed); }
void set_anomaly_enabled(bool enabled) { g_anomaly.store(enabled); }

std::vector<Tensor> FunctionNode::apply(const Tensor& grad_output) {
  if (released_) {
    DTRAIN_THROW(ValueError, "backward through ", name_,
                 " a second time: its saved tensors were freed by the first backward. Pass "
                 "retain_graph=true to the first backward() if you need to run it twice");
  }
  return backward_(grad_output);
}

void FunctionNode::release() {
  released_ = true;
  backward_ = nullptr;  // drops the saved tensors captured by the closure
}

std::vector<Tensor> AccumulateGrad::apply(const Tensor& grad_output) {
  Tensor leaf(leaf_);
  AutogradMeta& m = meta(leaf);
  Tensor g = grad_output;
  for (const auto& hook : m.hooks) {
    Tensor replaced = hook(g);
    if (replaced.defined()) g = replaced;
  }
  Tensor current = leaf.grad();
  if (current.defined()) {
    ops::binary_(kernels::Binary::kAdd, current, g);
  } else {
    // A fresh tensor: the incoming gradient may be shared with other parts of the graph.
    // Take the incoming tensor when nothing else refers to it (a fresh result of a backward
    // function); otherwise copy, since it may be shared with other parts of the graph.
    const bool sole_owner = g.impl_ptr().use_count() <= 2 && g.storage().use_count() == 1;
    leaf.set_grad(sole_owner ? g.detach() : g.clone());
  }
  for (const auto& hook : m.post_accumulate_hooks) hook(leaf);
  return {};
}

AutogradMeta& meta(const Tensor& t) {
  auto& impl = t.impl();
  if (!impl.autograd) impl.autograd = std::make_shared<AutogradMeta>();
  return *impl.autograd;
}

NodePtr grad_fn(const Tensor& t) {
  return t.defined() && t.impl().autograd ? t.impl().autograd->grad_fn : nullptr;
}

NodePtr gradient_edge(const Tensor& t) {
  if (!t.defined() || !t.requires_grad()) return nullptr;
  AutogradMeta& m = meta(t);
  if (m.grad_fn) return m.grad_fn;
  NodePtr acc = m.grad_accumulator.lock();
  if (!acc) {
    acc = std::make_shared<AccumulateGrad>(t.impl_ptr());
    acc->sequence = kAccumulatePriority;
    m.grad_accumulator = acc;
  }
  return acc;
}

Tensor record(Tensor out, const char* name, const std::vector<Tensor>& inputs,
              FunctionNode::Backward backward) {
  if (!grad_enabled()) return out;
  bool any = false;
  for (const Tensor& t : inputs) any = any || (t.defined() && t.requires_grad());
  if (!any) return out;
  auto node = std::make_shared<FunctionNode>(backward_name(name), std::move(backward));
  node->sequence = g_sequence.fetch_add(1, std::memory_order_relaxed);
  node->next.reserve(inputs.size());
  for (const Tensor& t : inputs) node->next.push_back(gradient_edge(t));
  if (anomaly_enabled())
    node->forward_info = std::string(name) + " with inputs " + input_description(inputs);
  // An output that is an input's own handle gets an impl of its own, so its graph link does not
  // overwrite the input's (outputs are almost always fresh: no allocation then).
  for (const Tensor& t : inputs) {
    if (t.defined() && t.impl_ptr() == out.impl_ptr()) {
      out = Tensor(out.storage(), out.storage_offset_bytes(), out.shape(), out.dtype());
      break;
    }
  }
  out.impl().requires_grad = true;
  out.impl().is_leaf = false;
  meta(out).grad_fn = std::move(node);
  detail::set_backward_fn(&engine_entry);
  return out;
}

void register_hook(const Tensor& t, GradHook hook) {
  DTRAIN_CHECK(t.requires_grad(), "register_hook on ", t.describe(),
               ", which does not require grad");
  if (NodePtr fn = grad_fn(t)) {
    fn->pre_hooks.push_back(std::move(hook));
  } else {
    meta(t).hooks.push_back(std::move(hook));
  }
}

void register_post_accumulate_grad_hook(const Tensor& leaf, PostAccumulateHook hook) {
  DTRAIN_CHECK(leaf.requires_grad() && leaf.is_leaf(),
               "register_post_accumulate_grad_hook: ", leaf.describe(),
               " is not a leaf that requires grad");
  meta(leaf).post_accumulate_hooks.push_back(std::move(hook));
}

void retain_grad(const Tensor& t) {
  if (t.is_leaf()) return;  // leaves keep their gradient anyway
  std::weak_ptr<detail::TensorImpl> weak = t.impl_ptr();
  register_hook(t, [weak](const Tensor& g) {
    if (auto impl = weak.lock()) {
      Tensor target(impl);
      Tensor current = target.grad();
      target.set_grad(current.defined() ? ops::binary(kernels::Binary::kAdd, current, g)
                                        : g.clone());
    }
    return Tensor();
  });
}

void queue_callback(std::function<void()> callback) {
  DTRAIN_CHECK(t_callbacks != nullptr,
               "queue_callback: called outside a backward; call it from a gradient hook");
  t_callbacks->push_back(std::move(callback));
}

bool in_backward() { return t_callbacks != nullptr; }

uint64_t backward_id() { return t_backward_id; }

void backward(const Tensor& root, const Tensor& grad, bool retain_graph) {
  DTRAIN_CHECK(root.requires_grad(), "backward(): ", root.describe(), " does not require grad");
  Tensor seed = grad;
  if (!seed.defined()) {
    DTRAIN_CHECK(root.numel() == 1,
                 "backward(): grad can be implicitly created only for scalar "
                 "outputs; got ",
                 root.describe(), ". Pass a gradient of the same shape or reduce first");
    seed = ones(root.shape(), root.dtype(), root.device());
  } else {
    DTRAIN_CHECK(seed.shape() == root.shape() && seed.dtype() == root.dtype(),
                 "backward(): gradient ", seed.describe(), " does not match the output ",
                 root.describe());
  }
  NodePtr start = gradient_edge(root);
  CallbackScope callbacks;

  // 1. Count, for every reachable node, how many edges lead into it.
  std::unordered_map<Node*, int> deps;
  {
    std::vector<Node*> stack{start.get()};
    std::unordered_set<Node*> seen{start.get()};
    while (!stack.empty()) {
      Node* n = stack.back();
      stack.pop_back();
      for (const NodePtr& next : n->next) {
        if (!next) continue;
        ++deps[next.get()];
        if (seen.insert(next.get()).second) stack.push_back(next.get());
      }
    }
  }
  // 2. Run ready nodes, latest-created first; accumulators (highest priority) immediately.
  auto later_first = [](const NodePtr& a, const NodePtr& b) { return a->sequence < b->sequence; };
  std::priority_queue<NodePtr, std::vector<NodePtr>, decltype(later_first)> ready(later_first);
  std::unordered_map<Node*, Tensor> buffers;
  buffers[start.get()] = seed;
  ready.push(start);
  while (!ready.empty()) {
    NodePtr node = ready.top();
    ready.pop();
    Tensor g;
    if (auto it = buffers.find(node.get()); it != buffers.end()) {
      g = std::move(it->second);
      buffers.erase(it);
    }
    std::vector<Tensor> input_grads;
    if (g.defined()) {  // otherwise no gradient reached this node: only release its children
      for (const auto& hook : node->pre_hooks) {
        Tensor replaced = hook(g);
        if (replaced.defined()) g = replaced;
      }
      input_grads = node->apply(g);
    }
    if (anomaly_enabled()) {
      for (size_t i = 0; i < input_grads.size(); ++i) {
        if (input_grads[i].defined() && !ops::all_finite(input_grads[i])) {
          DTRAIN_THROW(ValueError, "anomaly: ", node->name(),
                       " returned NaN or Inf in its gradient ", "for input ", i, " (",
                       input_grads[i].describe(), "); the forward op was ",
                       node->forward_info.empty() ? std::string("unknown") : node->forward_info);
        }
      }
    }
    if (!retain_graph) node->release();
    for (size_t i = 0; i < node->next.size(); ++i) {
      Node* next = node->next[i].get();
      if (!next) continue;
      if (i < input_grads.size() && input_grads[i].defined())
        add_into(buffers[next], input_grads[i]);
      if (--deps[next] == 0) ready.push(node->next[i]);
    }
  }
  // 3. Every node has run: end-of-backward work (DDP waits for its gradient all-reduces here).
  callbacks.run();
}

}  // namespace dtrain::autograd
