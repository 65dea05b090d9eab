// What a config's sections build: datasets, optimiser, learning-rate schedule, and the random
// streams of a model that a checkpoint keeps.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dtrain/data/dataset.h"
#include "dtrain/nn/lr_scheduler.h"
#include "dtrain/nn/module.h"
#include "dtrain/nn/optim.h"
#include "dtrain/tensor/tensor.h"
#include "dtrain/train/checkpoint.h"
#include "dtrain/train/config.h"
#include "dtrain/train/registry.h"

namespace dtrain::train {

/// The `data` section's train and test splits, from the dataset registry (`seed`: the run's).
Datasets make_datasets(const DataConfig& d, int64_t seed);
/// The built-in sets: fashion_mnist and synthetic (whose `seed` draws the set).
Datasets make_builtin_datasets(const DataConfig& d, int64_t seed);

/// The `model` section's model, from the model registry, for examples like those of `train_set`.
nn::ModulePtr make_model(const ModelConfig& m, const data::Dataset& train_set, uint64_t seed);

/// The `optimizer` section over `params`, with learning rate `lr`.
std::unique_ptr<nn::Optimizer> make_optimizer(const OptimizerConfig& o, std::vector<Tensor> params,
                                              double lr);

/// The `schedule` section over a run of `total_steps` optimiser steps.
std::unique_ptr<nn::LRScheduler> make_schedule(const ScheduleConfig& s, nn::Optimizer& opt,
                                               int64_t total_steps);

/// The model a checkpoint's config builds (as `dtrain eval` does), with the checkpoint's weights,
/// in eval mode, and the data sets whose training split gave its example shape. A training set that
/// cannot be read here is a ValueError naming the checkpoint at `path` and the override to give.
struct CheckpointModel {
  nn::ModulePtr model;
  Datasets sets;
};
CheckpointModel model_from_checkpoint(const CheckpointData& ckpt, const Config& config,
                                      const std::string& path);

/// The dropout layers' generators by module path ("dropout:<path>"), whose offsets a checkpoint
/// must keep for an exact resume.
std::vector<std::pair<std::string, Generator*>> model_generators(nn::Module& model);

}  // namespace dtrain::train
