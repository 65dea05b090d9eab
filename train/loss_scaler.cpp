// LossScaler.
#include "dtrain/train/loss_scaler.h"

#include "dtrain/tensor/check.h"

namespace dtrain::train {

LossScaler::LossScaler(double initial_scale, int64_t growth_interval)
    : scale_(initial_scale), growth_interval_(growth_interval) {
  DTRAIN_CHECK(initial_scale > 0 && growth_interval > 0,
               "loss scaler: needs a positive scale and growth interval; got ", initial_scale,
               " and ", growth_interval);
}

bool LossScaler::update(bool gradients_finite) {
  if (!gradients_finite) {
    ++skipped_;
    good_ = 0;
    scale_ *= 0.5;
    return false;
  }
  if (++good_ == growth_interval_) {
    good_ = 0;
    scale_ *= 2;
  }
  return true;
}

void LossScaler::restore(double scale, int64_t good_steps, int64_t skipped_steps) {
  DTRAIN_CHECK(scale > 0 && good_steps >= 0 && skipped_steps >= 0,
               "loss scaler: a checkpoint holds scale ", scale, ", ", good_steps,
               " good steps and ", skipped_steps, " skipped steps; the checkpoint is damaged");
  scale_ = scale;
  good_ = good_steps;
  skipped_ = skipped_steps;
}

}  // namespace dtrain::train
