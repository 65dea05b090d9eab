// Learning-rate schedules as pure functions of the step, so their whole state is one counter and
// a resumed run continues exactly. Call step() once per optimiser step, after it.
#pragma once

#include <memory>
#include <vector>

#include "dtrain/nn/optim.h"

namespace dtrain::nn {

class LRScheduler {
 public:
  LRScheduler(Optimizer& optimizer, double base_lr);
  virtual ~LRScheduler() = default;
  /// The learning rate for 0-based step `step`.
  virtual double lr_at(int64_t step) const = 0;
  /// Advances one step and sets the optimiser's learning rate for the next one.
  void step();
  int64_t last_step() const { return step_; }
  double base_lr() const { return base_lr_; }
  /// The state is the step counter; load sets the optimiser's lr to match it.
  int64_t state_dict() const { return step_; }
  void load_state_dict(int64_t step);

 private:
  Optimizer& optimizer_;
  double base_lr_;
  int64_t step_ = 0;
};

/// lr * gamma^(step / step_size).
class StepLR : public LRScheduler {
 public:
  StepLR(Optimizer& opt, int64_t step_size, double gamma = 0.1);
  double lr_at(int64_t step) const override;

 private:
  int64_t step_size_;
  double gamma_;
};

/// lr * gamma^(number of milestones <= step).
class MultiStepLR : public LRScheduler {
 public:
  MultiStepLR(Optimizer& opt, std::vector<int64_t> milestones, double gamma = 0.1);
  double lr_at(int64_t step) const override;

 private:
  std::vector<int64_t> milestones_;
  double gamma_;
};

/// eta_min + (lr - eta_min) * (1 + cos(pi * step / total_steps)) / 2, then eta_min.
class CosineLR : public LRScheduler {
 public:
  CosineLR(Optimizer& opt, int64_t total_steps, double eta_min = 0.0);
  double lr_at(int64_t step) const override;

 private:
  int64_t total_;
  double eta_min_;
};

class ConstantLR : public LRScheduler {
 public:
  explicit ConstantLR(Optimizer& opt) : LRScheduler(opt, opt.lr()) {}
  double lr_at(int64_t) const override { return base_lr(); }
};

/// Linear warm-up from start_factor * lr to the wrapped schedule's value over warmup_steps, then
/// the wrapped schedule shifted by warmup_steps.
class LinearWarmup : public LRScheduler {
 public:
  LinearWarmup(Optimizer& opt, int64_t warmup_steps, std::unique_ptr<LRScheduler> after,
               double start_factor = 0.0);
  double lr_at(int64_t step) const override;

 private:
  int64_t warmup_;
  std::unique_ptr<LRScheduler> after_;
  double start_factor_;
};

}  // namespace dtrain::nn
