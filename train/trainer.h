// Trainer: the training loop driven by a Config. It builds data, model, optimiser and schedule
// (the model, data and loss may come from C++ code instead: TrainerParts), resumes from
// checkpoints, evaluates every epoch and writes checkpoints and summaries; how replicas stay in
// sync is the Strategy's business. run() composes: plan the run (resume, batch, steps), restore
// its state, then epochs of steps, each epoch ending in an evaluation.
#pragma once

#include <chrono>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "dtrain/data/dataset.h"
#include "dtrain/data/loader.h"
#include "dtrain/nn/lr_scheduler.h"
#include "dtrain/nn/optim.h"
#include "dtrain/strategies/strategy.h"
#include "dtrain/train/checkpoint.h"
#include "dtrain/train/config.h"
#include "dtrain/train/loss_scaler.h"
#include "dtrain/train/models.h"
#include "dtrain/train/registry.h"
#include "dtrain/train/timeline.h"

namespace dtrain::train {

struct EvalResult {
  double loss = 0, accuracy = 0;
  int64_t examples = 0;
};

struct TrainResult {
  EvalResult test;
  int64_t steps = 0;           // optimiser steps completed in total (resumed runs included)
  double samples_per_sec = 0;  // training throughput of this run (all replicas)
  double gflops = 0;  // this process's matrix products per second of training (ops::matrix_flops)
  double wall_s = 0;  // this process's time from start to end
  bool stopped_early = false;   // train.stop_at_step, early stopping or a signal ended the run
  int stopped_by_signal = 0;    // the signal that ended the run after its checkpoint, or 0
  bool primary = true;          // this process is the replica that reports for the job
  std::string last_checkpoint;  // written by the primary; "" when none was written
  /// "final: test_accuracy=<x> test_loss=<y> steps=<n> samples_per_sec=<z> wall_s=<t> gflops=<g>"
  std::string final_line() const;
};

/// (model output, labels) -> the scalar loss to minimise.
using LossFn = std::function<Tensor(const Tensor& output, const Tensor& target)>;

/// Cross-entropy over the last dimension of `output` ([N, C], or [N, T, C] with labels [N, T]).
Tensor classification_loss(const Tensor& output, const Tensor& target, double label_smoothing);

/// What C++ code gives a Trainer in place of the config's sections; each part left empty comes
/// from the config (model.type, data.name, cross-entropy with train.label_smoothing). Checkpoints,
/// exact resume, summaries and strategies work the same either way.
struct TrainerParts {
  /// Builds one replica's model (called once per replica, on its thread, with the data's shapes
  /// and the run's seed); it must build the same parameters on every replica.
  ModelFactory model;
  data::DatasetPtr train_set, test_set;  // both or neither
  LossFn loss;
  /// Where this replica computes (train_in_job resolves train.device per replica); empty: cpu.
  std::optional<Device> device;
};

class MetricsSink;

class Trainer {
 public:
  Trainer(Config config, std::unique_ptr<Strategy> strategy, TrainerParts parts = {});
  ~Trainer();
  /// Trains to the end (or train.stop_at_step) and evaluates on the test split.
  TrainResult run();
  /// Loads a checkpoint's model state (no training state) and evaluates on the test split.
  EvalResult evaluate_checkpoint(const std::string& path);
  const Config& config() const { return config_; }
  nn::Module& model() { return *model_; }
  const data::DatasetPtr& train_set() const { return train_set_; }
  const data::DatasetPtr& test_set() const { return test_set_; }

 private:
  /// What the run does, fixed at its start: the per-replica batch (a resumed run keeps the global
  /// batch of the run that wrote the checkpoint), the steps and epochs.
  struct Plan {
    int replicas = 1;
    int lr_replicas = 1;  // replicas the learning rate is scaled for (those of the first run)
    int64_t batch = 0;
    int64_t steps_per_epoch = 0;
    int64_t batches_per_epoch_used = 0;  // steps_per_epoch * grad_accum_steps
    int64_t total_steps = 0;
    int64_t stop_step = 0;  // train.stop_at_step, or total_steps
    int64_t epochs = 0;
  };
  /// Where training stands: optimiser steps done, and the next batch.
  struct Position {
    int64_t step = 0;
    int64_t epoch = 0;
    int64_t batch_in_epoch = 0;
  };

  EvalResult evaluate();
  void build(TrainerParts parts);
  /// The checkpoint to continue from: train.resume: auto refuses (ConfigError) one written with
  /// other model, data or optimizer settings.
  std::optional<LoadedCheckpoint> find_checkpoint_to_resume() const;
  /// "" when `c` fits this model (parameter and buffer names and shapes, optimizer state keys),
  /// else why not: resume: auto then skips it for an older one.
  std::string why_unfit(const CheckpointData& c) const;
  /// "key: old -> new" for every model, data and optimizer key that differs from `ckpt`'s config.
  /// (`config_yaml`: a checkpoint's config; `path` names it in messages.)
  std::vector<std::string> settings_changed_since(const std::string& config_yaml,
                                                  const std::string& path) const;
  Plan plan(const std::optional<LoadedCheckpoint>& resumed, int64_t batches_per_epoch) const;
  /// Builds the optimiser and schedule, then restores them, the model and the dropout streams
  /// from `resumed`; returns where to continue.
  Position restore(const Plan& plan, const std::optional<LoadedCheckpoint>& resumed);
  /// Trains from `at` to the end of its epoch or to the stop step (writing checkpoints on the
  /// way); returns where it stopped. Adds the epoch's samples, seconds and matrix FLOPs to the
  /// totals.
  Position train_epoch(const Plan& plan, Position at, data::DataLoader& loader, MetricsSink* sink,
                       TrainResult& result, int64_t& samples, double& seconds,
                       uint64_t& matrix_flops);
  /// One micro-batch: forward and backward; returns its loss (scaled by 1/grad_accum_steps), or
  /// 0 with defer_loss_, which adds it to device_loss_sum_ instead.
  double train_micro_batch(const data::Batch& b, bool last_of_step);
  /// After a step's micro-batches: reduced gradients, optimiser and schedule step, drift check.
  /// A step is skipped when a reduced gradient is not finite, with train.on_nonfinite: skip_step
  /// or, in fp16, as the loss scaler's overflow.
  enum class StepResult { kStepped, kSkippedNonFinite, kSkippedOverflow };
  StepResult optimizer_step(int64_t step);
  /// Moves a batch from the loader (host memory) to this replica's device.
  void on_device(data::Batch& b) const;
  /// A periodic checkpoint that cannot be written is a warning (training goes on); the run's
  /// last one, or one before a stop, is an error.
  enum class Checkpoint { kNone, kPeriodic, kFinal };
  /// The primary's checkpoint at `at`; older ones are pruned first, so that a nearly full disk
  /// still has room for it, keeping the newest valid one. Returns its path, or "" when a periodic
  /// one could not be written. `optimizer_state`: Strategy::optimizer_state, which every replica
  /// takes part in.
  std::string save(const Plan& plan, Position at, Checkpoint kind,
                   const nn::OptimizerState& optimizer_state);
  /// At the end of each step: whether every replica has agreed to stop because some of them
  /// received a stop signal (stop_signal.h); the vote started one step earlier rides along with
  /// this step's work, and with it the check that every replica issued the same collectives
  /// (throws naming the step when they did not).
  bool stop_agreed(int64_t step);
  /// Collective: prints, on the primary, the optimiser state this replica keeps and the whole.
  void report_optimizer_shard();
  /// Collective, every log.every_steps: the straggler table of the steps since the last one.
  void report_stragglers(int64_t step, MetricsSink* sink);
  /// Collective: the Chrome trace (log.trace) once its window is complete, or at the end
  /// (`final`) if the run ended first.
  void write_trace_if_due(int64_t step, bool final);
  /// Everything a checkpoint at `at` holds.
  CheckpointData snapshot(const Plan& plan, Position at,
                          const nn::OptimizerState& optimizer_state) const;
  /// After an evaluation: keeps the best model (best.dtck) and says whether train.early_stop
  /// patience has run out.
  bool early_stop_after(const Plan& plan, Position at, const EvalResult& eval);

  Config config_;
  std::unique_ptr<Strategy> strategy_;
  data::DatasetPtr train_set_, test_set_;
  nn::ModulePtr model_;
  Device device_;  // the model's and the batches'; checkpoints hold host copies
  LossFn loss_;
  std::unique_ptr<nn::Optimizer> optimizer_;
  std::unique_ptr<nn::LRScheduler> schedule_;
  std::vector<std::pair<std::string, Generator*>> generators_;
  struct EarlyStop {
    double best = -std::numeric_limits<double>::infinity();
    int64_t bad_evals = 0;
  } early_stop_;
  // A checkpoint fell due at the end of an epoch; it waits for the epoch's evaluation.
  Checkpoint checkpoint_after_evaluation_ = Checkpoint::kNone;
  std::function<Strategy::StepAgreement()> stop_vote_;  // the pending agreement of the step before
  int stop_signal_ = 0;                                 // set when the replicas agreed to stop
  Timeline timeline_;
  DType precision_ = DType::kFloat32;          // train.precision: the matmul operands' type
  std::optional<LossScaler> scaler_;           // fp16
  std::chrono::milliseconds slow_batches_{0};  // DTRAIN_TEST_SLOW_REPLICA
  // On a GPU the loss stays on the device, summed over the steps since it was last read, and is
  // read only where a value is shown or checked (DTRAIN_TEST_DEFER_LOSS=1 does the same on the
  // CPU, for tests): an item() per step would make the host wait for every step's kernels.
  bool defer_loss_ = false;
  Tensor device_loss_sum_;  // [1] on device_, or undefined while nothing is pending
  /// The loss summed on the device since the last read, as a host value; resets the sum.
  double read_device_loss();
  bool trace_written_ = false;
};

}  // namespace dtrain::train
