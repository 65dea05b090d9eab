// Dynamic loss scaling for float16 training (train.precision: fp16), with PyTorch's GradScaler
// rules: the loss is multiplied by scale() before backward, so that small gradients survive
// float16's range; a step whose reduced gradients hold an Inf or NaN is skipped and the scale
// halves; after `growth_interval` good steps in a row it doubles.
#pragma once

#include <cstdint>

namespace dtrain::train {

class LossScaler {
 public:
  explicit LossScaler(double initial_scale = 65536, int64_t growth_interval = 2000);
  double scale() const { return scale_; }
  /// After a step's reduction, with whether every reduced gradient is finite (the same on every
  /// replica): true when the step goes on (divide the gradients by the scale before it), false
  /// when it is skipped. Updates the scale either way.
  bool update(bool gradients_finite);
  int64_t skipped_steps() const { return skipped_; }
  int64_t good_steps() const { return good_; }
  /// A checkpoint's values, for an exact resume.
  void restore(double scale, int64_t good_steps, int64_t skipped_steps);

 private:
  double scale_;
  int64_t growth_interval_;
  int64_t good_ = 0, skipped_ = 0;
};

}  // namespace dtrain::train
