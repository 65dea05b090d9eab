// Strategy: how replicas are created and kept in sync. The Trainer calls only this interface, so
// data-parallel strategies plug in without changing the training loop.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "nn/module.h"

namespace dtrain {

class Strategy {
 public:
  virtual ~Strategy() = default;
  virtual std::string_view name() const = 0;
  /// Replicas whose gradients are averaged each step (the global batch is this times the
  /// per-replica batch).
  virtual int num_replicas_in_sync() const = 0;
  /// This process's replica index among num_replicas_in_sync() (0 for single-process runs).
  virtual int rank() const = 0;
  /// Once before training: make every replica start from rank 0's parameters, install hooks.
  virtual void prepare(nn::Module& model) = 0;
  /// The forward pass of a replica (DDP broadcasts batch-norm buffers first).
  virtual Tensor forward(nn::Module& model, const Tensor& x) { return model.forward(x); }
  /// After backward: returns when every gradient holds the average over all replicas.
  virtual void synchronize_gradients(nn::Module& model) = 0;
  /// In place: each value becomes its sum over replicas (metrics such as loss and accuracy).
  virtual void sum_across_replicas(std::vector<double>& values) = 0;
  /// Collective, at start-up: every replica must run the same configuration (its text, one
  /// `key: value` per line); otherwise every replica throws, naming the replicas and keys that
  /// differ from replica 0.
  virtual void check_same_config(const std::string& config_text) { (void)config_text; }
  /// Collective: replicas' parameters must be bit-identical; otherwise every replica throws,
  /// naming the replicas that drifted from replica 0.
  virtual void check_parameters_in_sync(nn::Module& model, int64_t step) {
    (void)model;
    (void)step;
  }
  /// The replica that writes checkpoints, summaries and the progress display.
  bool is_primary() const { return rank() == 0; }
};

/// One process, one replica: nothing to synchronise.
class SingleProcessStrategy final : public Strategy {
 public:
  std::string_view name() const override { return "single"; }
  int num_replicas_in_sync() const override { return 1; }
  int rank() const override { return 0; }
  void prepare(nn::Module&) override {}
  void synchronize_gradients(nn::Module&) override {}
  void sum_across_replicas(std::vector<double>&) override {}
};

/// What the `strategy` config section says, in strategies/' own terms.
struct StrategyOptions {
  std::string type = "single";  // single | ddp | mirrored | multi_worker_mirrored
  int devices = 1;              // replicas per process (mirrored, multi_worker_mirrored)
  std::string backend = "auto";
  double bucket_cap_mb = 25;
  double timeout_s = 300;
  double stall_warning_s = 60;
  bool find_unused_parameters = false;
  bool broadcast_buffers = true;
  std::string comm_hook = "none";
  bool overlap = true;
  int64_t check_parameters_every_steps = 1000;  // 0: never
};

/// The strategy `options.type` names; throws ValueError listing the known names otherwise.
/// Strategies that span processes join the job described by the environment (mpirun, srun).
/// Only for strategies with one replica per process (see make_replica_strategies).
std::unique_ptr<Strategy> make_strategy(const StrategyOptions& options);

/// One strategy per replica of this process: one for single and ddp; `devices` for mirrored
/// (replica threads over a local group) and multi_worker_mirrored (replica threads over a
/// hierarchical communicator: local group plus the job's processes). Run each replica's training
/// loop on its own thread; if one fails, call abort_replicas so the others stop waiting for it.
std::vector<std::unique_ptr<Strategy>> make_replica_strategies(const StrategyOptions& options);
/// A function that makes every replica waiting in a collective of this process's local group
/// throw `reason` (a no-op for strategies without one). Take it before the strategies move away.
std::function<void(const std::string& reason)> replica_abort(
    const std::vector<std::unique_ptr<Strategy>>& replicas);

}  // namespace dtrain
