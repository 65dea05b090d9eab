// Trainer: the training loop driven by a Config. It builds data, model, optimiser and schedule,
// resumes from checkpoints, evaluates every epoch and writes checkpoints and summaries; how
// replicas stay in sync is the Strategy's business.
#pragma once

#include <memory>
#include <string>

#include "data/dataset.h"
#include "nn/lr_scheduler.h"
#include "nn/optim.h"
#include "strategies/strategy.h"
#include "train/config.h"
#include "train/models.h"

namespace dtrain::train {

struct EvalResult {
  double loss = 0, accuracy = 0;
  int64_t examples = 0;
};

struct TrainResult {
  EvalResult test;
  int64_t steps = 0;            // optimiser steps completed in total (resumed runs included)
  double samples_per_sec = 0;   // training throughput of this run (all replicas)
  double wall_s = 0;            // this process's time from start to end
  bool stopped_early = false;   // train.stop_at_step ended the run
  bool primary = true;          // this process is the replica that reports for the job
  std::string last_checkpoint;  // written by the primary; "" when none was written
  /// "final: test_accuracy=<x> test_loss=<y> steps=<n> samples_per_sec=<z> wall_s=<t>"
  std::string final_line() const;
};

class Trainer {
 public:
  Trainer(Config config, std::unique_ptr<Strategy> strategy);
  ~Trainer();
  /// Trains to the end (or train.stop_at_step) and evaluates on the test split.
  TrainResult run();
  /// Loads a checkpoint's model state (no training state) and evaluates on the test split.
  EvalResult evaluate_checkpoint(const std::string& path);
  const Config& config() const { return config_; }
  nn::Module& model() { return *model_; }

 private:
  EvalResult evaluate();
  void build();
  Config config_;
  std::unique_ptr<Strategy> strategy_;
  data::DatasetPtr train_set_, test_set_;
  std::shared_ptr<nn::Sequential> model_;
  std::unique_ptr<nn::Optimizer> optimizer_;
  std::unique_ptr<nn::LRScheduler> schedule_;
};

}  // namespace dtrain::train
