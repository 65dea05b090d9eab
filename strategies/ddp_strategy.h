// The `ddp` strategy: one replica per process (mpirun, srun), gradients averaged by
// DistributedDataParallel over the job's communicator, with the collective watchdog installed.
#pragma once

#include <memory>

#include "distributed/async_communicator.h"
#include "distributed/watchdog.h"
#include "strategies/ddp.h"
#include "strategies/strategy.h"

namespace dtrain {

class DdpStrategy final : public Strategy {
 public:
  explicit DdpStrategy(const StrategyOptions& options);
  ~DdpStrategy() override;
  std::string_view name() const override { return "ddp"; }
  int num_replicas_in_sync() const override { return comm_->size(); }
  int rank() const override { return comm_->rank(); }
  void prepare(nn::Module& model) override;
  Tensor forward(nn::Module& model, const Tensor& x) override;
  void synchronize_gradients(nn::Module& model) override;
  void sum_across_replicas(std::vector<double>& values) override;

 private:
  StrategyOptions options_;
  std::shared_ptr<dist::AsyncCommunicator> comm_;
  std::unique_ptr<dist::Watchdog> watchdog_;
  std::unique_ptr<DistributedDataParallel> ddp_;
};

}  // namespace dtrain
