// The model zoo: models built from the `model` config section.
#pragma once

#include "dtrain/nn/layers.h"
#include "dtrain/train/config.h"

namespace dtrain::train {

/// mlp: Flatten, [Linear, (BatchNorm1d), activation, (Dropout)] per hidden width, Linear head.
/// cnn: Conv5x5(pad 2)-c1, (BatchNorm2d), ReLU, MaxPool2, Conv5x5-c2, (BatchNorm2d), ReLU,
/// MaxPool2, Flatten, Linear-fc_units, ReLU, (Dropout), Linear head.
/// Parameters are drawn from Philox(seed); dropout layers get their own streams of that seed.
/// Throws ValueError when the input shape does not suit the model (cnn needs [C, H, W]).
std::shared_ptr<nn::Sequential> build_model(const ModelConfig& config, const Shape& example_shape,
                                            int64_t num_classes, uint64_t seed);

}  // namespace dtrain::train
