// The backward engine: runs the recorded graph from a root, ordering nodes by dependency count.
#pragma once

#include "dtrain/tensor/tensor.h"

namespace dtrain::autograd {

/// Computes d(root)/d(leaf) for every leaf that requires grad, accumulating into leaf.grad().
/// `grad` seeds the root (required unless root is a scalar). Without retain_graph the saved
/// tensors are freed and a second backward through the same nodes throws.
/// Nodes whose gradient inputs are all in run as soon as they can, latest-created first; leaf
/// accumulators run the moment their gradient is complete (DDP starts communication there).
void backward(const Tensor& root, const Tensor& grad = Tensor(), bool retain_graph = false);

}  // namespace dtrain::autograd
