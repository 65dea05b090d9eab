// Loss objects over the functional losses (mean reduction).
#pragma once

#include "dtrain/autograd/functions.h"

namespace dtrain::nn {

/// logits [N, C], int64 class indices [N]; optional label smoothing as in PyTorch.
class CrossEntropyLoss {
 public:
  explicit CrossEntropyLoss(double label_smoothing = 0.0) : label_smoothing_(label_smoothing) {}
  Tensor operator()(const Tensor& logits, const Tensor& targets) const {
    return cross_entropy(logits, targets, label_smoothing_);
  }

 private:
  double label_smoothing_;
};

/// log-probabilities [N, C], int64 class indices [N].
class NLLLoss {
 public:
  Tensor operator()(const Tensor& log_probs, const Tensor& targets) const {
    return nll_loss(log_probs, targets);
  }
};

class MSELoss {
 public:
  Tensor operator()(const Tensor& input, const Tensor& target) const {
    return mse_loss(input, target);
  }
};

}  // namespace dtrain::nn
