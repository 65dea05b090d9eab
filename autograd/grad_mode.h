// Thread-local switches: grad mode (record graphs or not) and anomaly mode (check backward for
// NaN/Inf and name the op that produced it).
#pragma once

namespace dtrain::autograd {

bool grad_enabled();
void set_grad_enabled(bool enabled);
bool anomaly_enabled();
void set_anomaly_enabled(bool enabled);

}  // namespace dtrain::autograd

namespace dtrain {

/// Disables graph recording in this thread for its lifetime (evaluation, optimiser steps).
class NoGradGuard {
 public:
  NoGradGuard() : previous_(autograd::grad_enabled()) { autograd::set_grad_enabled(false); }
  ~NoGradGuard() { autograd::set_grad_enabled(previous_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

/// Anomaly detection for its lifetime: forward ops record their inputs' shapes and a NaN or Inf
/// produced in backward raises an error naming the backward node and its forward op.
class AnomalyGuard {
 public:
  AnomalyGuard() : previous_(autograd::anomaly_enabled()) { autograd::set_anomaly_enabled(true); }
  ~AnomalyGuard() { autograd::set_anomaly_enabled(previous_); }
  AnomalyGuard(const AnomalyGuard&) = delete;
  AnomalyGuard& operator=(const AnomalyGuard&) = delete;

 private:
  bool previous_;
};

}  // namespace dtrain
