// In-place optimiser updates: the *Step functors of tensor/kernels.h run by the CPU loop or on
// CUDA (tensor/run.h), so an optimiser never needs to know its parameter's device.
#include "dtrain/tensor/dispatch.h"
#include "dtrain/tensor/kernels.h"
#include "dtrain/tensor/ops.h"
#include "dtrain/tensor/run.h"

namespace dtrain::ops {

namespace {

/// A gradient or state buffer must match its parameter in device, dtype and shape.
void check_like_param(const char* op, const Tensor& param, const Tensor& t, const char* what) {
  detail::check_defined(op, t, what);
  if (t.device() != param.device() || t.dtype() != param.dtype() || t.shape() != param.shape()) {
    DTRAIN_THROW(ValueError, op, ": ", what, " is ", t.describe(), " but the parameter",
                 param.name().empty() ? "" : " '" + param.name() + "'", " is ", param.describe(),
                 "; it must match in device, dtype and shape",
                 t.device() != param.device()
                     ? " (create the optimiser after moving the model, or load its state after)"
                     : "");
  }
}

}  // namespace

void sgd_update_(Tensor& param, const Tensor& grad, Tensor& momentum_buffer,
                 const kernels::SgdParams& s) {
  const char* op = "sgd_update_";
  detail::check_defined(op, param, "parameter");
  check_like_param(op, param, grad, "grad");
  if (s.momentum != 0) check_like_param(op, param, momentum_buffer, "momentum buffer");
  detail::dispatch_floating(param.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    T* buf = s.momentum != 0 ? momentum_buffer.data_ptr<T>() : nullptr;
    // One instantiation per variant: the flags are compile-time, so the CPU loop vectorises.
    kernels::dispatch_sgd_variant(s, [&](auto momentum, auto nesterov, auto first_step) {
      run_kernel(param.device(), param.numel(),
                 kernels::SgdStep<T, momentum.value, nesterov.value, first_step.value>{
                     param.data_ptr<T>(), grad.data_ptr<T>(), buf, s});
    });
  });
}

void adam_update_(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                  const kernels::AdamParams& s) {
  const char* op = "adam_update_";
  detail::check_defined(op, param, "parameter");
  check_like_param(op, param, grad, "grad");
  check_like_param(op, param, exp_avg, "exp_avg");
  check_like_param(op, param, exp_avg_sq, "exp_avg_sq");
  detail::dispatch_floating(param.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    run_elementwise_simd(param.device(), param.numel(),
                         kernels::AdamStep<T>{param.data_ptr<T>(), grad.data_ptr<T>(),
                                              exp_avg.data_ptr<T>(), exp_avg_sq.data_ptr<T>(), s});
  });
}

void rmsprop_update_(Tensor& param, const Tensor& grad, Tensor& square_avg, Tensor& momentum_buffer,
                     const kernels::RmspropParams& s) {
  const char* op = "rmsprop_update_";
  detail::check_defined(op, param, "parameter");
  check_like_param(op, param, grad, "grad");
  check_like_param(op, param, square_avg, "square_avg");
  if (s.momentum > 0) check_like_param(op, param, momentum_buffer, "momentum buffer");
  detail::dispatch_floating(param.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    T* buf = s.momentum > 0 ? momentum_buffer.data_ptr<T>() : nullptr;
    run_kernel(param.device(), param.numel(),
               kernels::RmspropStep<T>{param.data_ptr<T>(), grad.data_ptr<T>(),
                                       square_avg.data_ptr<T>(), buf, s});
  });
}

}  // namespace dtrain::ops
