// The public hooks of the backward engine: what code outside autograd/ (DDP, users) may attach to
// a backward without reaching into the graph's internals.
#pragma once

#include <cstdint>
#include <functional>

#include "dtrain/tensor/tensor.h"

namespace dtrain::autograd {

/// May return a replacement gradient, or an undefined tensor to keep the one given.
using GradHook = std::function<Tensor(const Tensor&)>;
/// Called with the leaf after its gradient has been accumulated.
using PostAccumulateHook = std::function<void(Tensor&)>;

/// Tensor hook: runs on t's gradient each time it is computed; may replace it.
void register_hook(const Tensor& t, GradHook hook);
/// Leaf hook: runs after the gradient has been accumulated into t.grad(), once per backward.
void register_post_accumulate_grad_hook(const Tensor& leaf, PostAccumulateHook hook);
/// Keeps the gradient of a non-leaf tensor in its grad() after backward.
void retain_grad(const Tensor& t);

/// From inside a backward (a hook): runs `callback` on this thread once that backward has run
/// every node, before backward() returns, in the order queued (PyTorch's queue_callback). A
/// callback that throws makes backward() throw; the callbacks after it are dropped. If the
/// backward itself fails, its callbacks are dropped. Throws ValueError outside a backward.
void queue_callback(std::function<void()> callback);
/// Whether this thread is running a backward (so queue_callback may be called).
bool in_backward();
/// A number for the backward running on this thread, different for every backward of the
/// process (0 outside one): code that queues one callback per backward compares it, so a backward
/// that failed and dropped its callbacks does not stop the next one from queueing.
uint64_t backward_id();

}  // namespace dtrain::autograd
