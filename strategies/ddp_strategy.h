// DistributedDataParallel as a Strategy. `ddp`: one replica per process (mpirun, srun) over the
// job's communicator; `mirrored` and `multi_worker_mirrored` run one of these per replica thread
// over a local (or hierarchical) communicator. The collective watchdog is installed on each.
#pragma once

#include <memory>

#include "distributed/async_communicator.h"
#include "distributed/watchdog.h"
#include "strategies/ddp.h"
#include "strategies/strategy.h"

namespace dtrain {

class DdpStrategy final : public Strategy {
 public:
  /// Over the job's communicator from the environment (init_from_env).
  explicit DdpStrategy(const StrategyOptions& options);
  /// Over a given communicator (a replica thread's local or hierarchical one).
  DdpStrategy(const StrategyOptions& options, std::shared_ptr<dist::AsyncCommunicator> comm);
  ~DdpStrategy() override;
  std::string_view name() const override { return "ddp"; }
  int num_replicas_in_sync() const override { return comm_->size(); }
  int rank() const override { return comm_->rank(); }
  void prepare(nn::Module& model) override;
  Tensor forward(nn::Module& model, const Tensor& x) override;
  void synchronize_gradients(nn::Module& model) override;
  void sum_across_replicas(std::vector<double>& values) override;
  void check_same_config(const std::string& config_text) override;
  void check_parameters_in_sync(nn::Module& model, int64_t step) override;
  dist::AsyncCommunicator& communicator() { return *comm_; }

 private:
  StrategyOptions options_;
  std::shared_ptr<dist::AsyncCommunicator> comm_;
  std::unique_ptr<dist::Watchdog> watchdog_;
  std::unique_ptr<DistributedDataParallel> ddp_;
};

}  // namespace dtrain
