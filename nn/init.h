// Parameter initialisers (PyTorch's formulas), all drawing from an explicit Philox generator.
#pragma once

#include "dtrain/tensor/tensor.h"

namespace dtrain::nn::init {

/// fan_in and fan_out of a weight [out, in, k...].
std::pair<int64_t, int64_t> fans(const Tensor& w);
/// U(-b, b) with b = gain * sqrt(3 / fan_in), gain = sqrt(2 / (1 + a^2)); PyTorch's default for
/// Linear and Conv weights uses a = sqrt(5).
void kaiming_uniform_(Tensor& w, double a, Generator& gen = default_generator());
void kaiming_normal_(Tensor& w, double a = 0, Generator& gen = default_generator());
void xavier_uniform_(Tensor& w, double gain = 1.0, Generator& gen = default_generator());
void xavier_normal_(Tensor& w, double gain = 1.0, Generator& gen = default_generator());
void uniform_(Tensor& t, double low, double high, Generator& gen = default_generator());
void normal_(Tensor& t, double mean, double std, Generator& gen = default_generator());
void zeros_(Tensor& t);
void ones_(Tensor& t);

}  // namespace dtrain::nn::init
