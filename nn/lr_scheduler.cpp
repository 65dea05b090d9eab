// LR schedule formulas.
#include "dtrain/nn/lr_scheduler.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace dtrain::nn {

LRScheduler::LRScheduler(Optimizer& optimizer, double base_lr)
    : optimizer_(optimizer), base_lr_(base_lr) {}

void LRScheduler::step() {
  ++step_;
  optimizer_.set_lr(lr_at(step_));
}

void LRScheduler::load_state_dict(int64_t step) {
  DTRAIN_CHECK(step >= 0, "lr schedule state: step must be >= 0; got ", step);
  step_ = step;
  optimizer_.set_lr(lr_at(step_));
}

StepLR::StepLR(Optimizer& opt, int64_t step_size, double gamma)
    : LRScheduler(opt, opt.lr()), step_size_(step_size), gamma_(gamma) {
  DTRAIN_CHECK(step_size > 0, "StepLR: step_size must be positive; got ", step_size);
}
double StepLR::lr_at(int64_t step) const {
  return base_lr() * std::pow(gamma_, static_cast<double>(step / step_size_));
}

MultiStepLR::MultiStepLR(Optimizer& opt, std::vector<int64_t> milestones, double gamma)
    : LRScheduler(opt, opt.lr()), milestones_(std::move(milestones)), gamma_(gamma) {
  DTRAIN_CHECK(std::is_sorted(milestones_.begin(), milestones_.end()),
               "MultiStepLR: milestones must be increasing");
}
double MultiStepLR::lr_at(int64_t step) const {
  const auto passed =
      std::upper_bound(milestones_.begin(), milestones_.end(), step) - milestones_.begin();
  return base_lr() * std::pow(gamma_, static_cast<double>(passed));
}

CosineLR::CosineLR(Optimizer& opt, int64_t total_steps, double eta_min)
    : LRScheduler(opt, opt.lr()), total_(total_steps), eta_min_(eta_min) {
  DTRAIN_CHECK(total_steps > 0, "CosineLR: total_steps must be positive; got ", total_steps);
}
double CosineLR::lr_at(int64_t step) const {
  if (step >= total_) return eta_min_;
  return eta_min_ + (base_lr() - eta_min_) *
                        (1 + std::cos(std::numbers::pi * static_cast<double>(step) / total_)) / 2;
}

LinearWarmup::LinearWarmup(Optimizer& opt, int64_t warmup_steps, std::unique_ptr<LRScheduler> after,
                           double start_factor)
    : LRScheduler(opt, opt.lr()),
      warmup_(warmup_steps),
      after_(std::move(after)),
      start_factor_(start_factor) {
  DTRAIN_CHECK(warmup_steps >= 0, "LinearWarmup: warmup_steps must be >= 0");
  DTRAIN_CHECK(after_ != nullptr, "LinearWarmup: needs the schedule that follows the warm-up");
  opt.set_lr(lr_at(0));
}
double LinearWarmup::lr_at(int64_t step) const {
  if (step >= warmup_) return after_->lr_at(step - warmup_);
  const double target = after_->lr_at(0);
  const double f = start_factor_ + (1 - start_factor_) * static_cast<double>(step) / warmup_;
  return target * f;
}

}  // namespace dtrain::nn
