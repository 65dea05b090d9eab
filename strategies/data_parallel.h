// Data parallelism as a Strategy: DistributedDataParallel over the communicator the job gives
// each replica. `ddp` (a process per replica), `mirrored` (replica threads) and
// `multi_worker_mirrored` (both) differ only in that communicator.
#pragma once

#include <memory>
#include <string>

#include "dtrain/strategies/ddp.h"
#include "dtrain/strategies/sharded_optimizer.h"
#include "dtrain/strategies/strategy.h"

namespace dtrain {

/// One trial of strategy.bucket_cap_mb: auto.
struct BucketCapTrial {
  double cap_mb = 0;
  double exposed_ms = 0;  // per step, averaged over the trial's steps and the replicas
};

class DataParallelStrategy final : public Strategy {
 public:
  /// `name` is the configured strategy.type; `comm` spans every replica of the job.
  DataParallelStrategy(std::string name, const StrategyOptions& options,
                       dist::CommunicatorPtr comm);
  ~DataParallelStrategy() override;
  std::string_view name() const override { return name_; }
  int num_replicas_in_sync() const override { return comm_->size(); }
  int rank() const override { return comm_->rank(); }
  void prepare(nn::Module& model) override;
  Tensor forward(nn::Module& model, const Tensor& x) override;
  void set_gradient_sync(bool enabled) override;
  void synchronize_gradients(nn::Module& model) override;
  void sum_across_replicas(std::vector<double>& values) override;
  std::function<StepAgreement()> start_step_agreement(double stop_vote) override;
  void check_same_config(const ConfigEntries& config) override;
  void check_parameters_in_sync(nn::Module& model, int64_t step) override;
  // Sharded (strategy.shard_optimizer): each over this replica's shard, then across replicas.
  bool gradients_finite(nn::Module& model) override;
  double clip_gradients(nn::Module& model, double max_norm) override;
  void step_optimizer(nn::Optimizer& opt) override;
  nn::OptimizerState optimizer_state(nn::Optimizer& opt) override;
  void load_optimizer_state(nn::Optimizer& opt, const nn::OptimizerState& state) override;
  const DdpStepTiming* last_step_communication() const override;
  bool gradients_stay_in_place() const override { return true; }  // DDP bucket views
  std::vector<std::string> gather_text(const std::string& text) override;
  std::string take_message() override;

  /// bucket_cap_mb: auto: the caps tried (MiB), in order; each for kStepsPerTrial steps after
  /// kWarmupSteps.
  static constexpr double kBucketCapTrials[] = {1, 4, 16, 64};
  static constexpr int kWarmupSteps = 2, kStepsPerTrial = 5;
  /// The trials so far, with their agreed exposed times once all have run.
  const std::vector<BucketCapTrial>& bucket_cap_trials() const { return trials_; }
  /// The bucket cap in use, MiB.
  double bucket_cap_mb() const { return ddp_ ? ddp_->bucket_cap_mb() : options_.ddp.bucket_cap_mb; }

 private:
  DistributedDataParallel& ddp();
  /// The sharded optimiser over `opt` (made on first use); throws if `opt` changes.
  ShardedOptimizer& sharded(nn::Optimizer& opt);
  /// After each synchronised step with bucket_cap_mb: auto: runs the trials, then keeps the best.
  void tune_bucket_cap();
  std::string name_;
  StrategyOptions options_;
  dist::CommunicatorPtr comm_;
  std::unique_ptr<DistributedDataParallel> ddp_;
  std::unique_ptr<ShardedOptimizer> sharded_;
  int64_t synchronized_steps_ = 0;
  double trial_exposed_s_ = 0;
  std::vector<BucketCapTrial> trials_;
  bool tuned_ = false;
  std::string message_;
};

}  // namespace dtrain
