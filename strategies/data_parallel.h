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
  std::function<double()> start_sum_across_replicas(double value) override;
  void check_same_config(const ConfigEntries& config) override;
  void check_parameters_in_sync(nn::Module& model, int64_t step) override;
  // Sharded (strategy.shard_optimizer): each over this replica's shard, then across replicas.
  bool gradients_finite(nn::Module& model) override;
  double clip_gradients(nn::Module& model, double max_norm) override;
  void step_optimizer(nn::Optimizer& opt) override;
  nn::OptimizerState optimizer_state(nn::Optimizer& opt) override;
  void load_optimizer_state(nn::Optimizer& opt, const nn::OptimizerState& state) override;
  const DdpStepTiming* last_step_communication() const override;
  std::vector<std::string> gather_text(const std::string& text) override;

 private:
  DistributedDataParallel& ddp();
  /// The sharded optimiser over `opt` (made on first use); throws if `opt` changes.
  ShardedOptimizer& sharded(nn::Optimizer& opt);
  std::string name_;
  StrategyOptions options_;
  dist::CommunicatorPtr comm_;
  std::unique_ptr<DistributedDataParallel> ddp_;
  std::unique_ptr<ShardedOptimizer> sharded_;
};

}  // namespace dtrain
