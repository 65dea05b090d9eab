// nn::functional: the functional forms of the layers, for users who write models without modules.
#pragma once

#include "dtrain/autograd/functions.h"

namespace dtrain::nn::functional {
using dtrain::avg_pool2d;
using dtrain::batch_norm;
using dtrain::bmm;
using dtrain::conv2d;
using dtrain::cross_entropy;
using dtrain::dropout;
using dtrain::embedding;
using dtrain::flatten;
using dtrain::gelu;
using dtrain::layer_norm;
using dtrain::linear;
using dtrain::log_softmax;
using dtrain::max_pool2d;
using dtrain::mse_loss;
using dtrain::nll_loss;
using dtrain::relu;
using dtrain::sigmoid;
using dtrain::softmax;
using dtrain::tanh;
}  // namespace dtrain::nn::functional
