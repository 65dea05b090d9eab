// Strategy: how replicas are kept in sync. The Trainer calls only this interface, so
// data-parallel strategies plug in without changing the training loop. Strategies are policy over
// a communicator that the job (distributed/job.h) hands them; they never build one.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dtrain/distributed/communicator.h"
#include "dtrain/nn/module.h"
#include "dtrain/nn/optim.h"
#include "dtrain/strategies/ddp.h"

namespace dtrain {

/// A resolved configuration as ("section.key", value text) pairs, in a fixed order.
using ConfigEntries = std::vector<std::pair<std::string, std::string>>;

class Strategy {
 public:
  virtual ~Strategy() = default;
  /// The configured strategy.type.
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
  /// False while gradients accumulate over micro-batches: backward then communicates nothing,
  /// and the next backward with true reduces everything accumulated. True at first.
  virtual void set_gradient_sync(bool enabled) { (void)enabled; }
  /// After backward: returns when every gradient holds the average over all replicas.
  virtual void synchronize_gradients(nn::Module& model) = 0;
  /// True when gradients are views into the strategy's communication buffers, so that clearing
  /// them must zero them in place; otherwise the Trainer drops them (zero_grad(set_to_none)) and
  /// backward writes each fresh, saving a memset and an addition per parameter and step.
  virtual bool gradients_stay_in_place() const { return false; }
  /// After synchronize_gradients: whether every reduced gradient is finite. The same answer on
  /// every replica, so all of them skip the same steps.
  virtual bool gradients_finite(nn::Module& model);
  /// After synchronize_gradients: scales the gradients so that their global L2 norm is at most
  /// max_norm (clip_grad_norm_), alike on every replica; returns the norm before clipping.
  virtual double clip_gradients(nn::Module& model, double max_norm);
  /// After synchronize_gradients: one update of the model's parameters by `opt`. A sharded
  /// optimiser (strategy.shard_optimizer) updates this replica's shard, then gathers.
  virtual void step_optimizer(nn::Optimizer& opt) { opt.step(); }
  /// Collective (every replica calls it at the same step): `opt`'s state in an unsharded
  /// optimiser's layout, for a checkpoint the primary writes. Replicas other than the primary
  /// may get an empty state.
  virtual nn::OptimizerState optimizer_state(nn::Optimizer& opt) {
    return is_primary() ? opt.state_dict() : nn::OptimizerState{};
  }
  /// Loads a state in the unsharded layout (a checkpoint's, of any number of replicas).
  virtual void load_optimizer_state(nn::Optimizer& opt, const nn::OptimizerState& state) {
    opt.load_state_dict(state);
  }
  /// The last synchronised step's gradient reductions (the straggler table, log.trace); null for
  /// strategies that do not communicate.
  virtual const DdpStepTiming* last_step_communication() const { return nullptr; }
  /// A line for the run's output that the strategy has to report (on the primary), once; "" when
  /// there is none. Polled by the Trainer after each step.
  virtual std::string take_message() { return ""; }
  /// Collective: every replica's `text`, in replica order, on the primary; others get {}.
  virtual std::vector<std::string> gather_text(const std::string& text) { return {text}; }
  /// In place: each value becomes its sum over replicas (metrics such as loss and accuracy).
  virtual void sum_across_replicas(std::vector<double>& values) = 0;
  /// What replicas agree on at the end of every step without a round trip of its own, started
  /// now and read (by calling the result) a step later: the largest stop vote (a signal some of
  /// them received), and whether every replica has issued the same collectives so far (the
  /// communicator's calls_digest; a replica that took another code path would otherwise pair
  /// its collectives with the wrong ones of its peers).
  struct StepAgreement {
    double stop_vote = 0;
    bool same_calls = true;
  };
  virtual std::function<StepAgreement()> start_step_agreement(double stop_vote) {
    return [stop_vote] { return StepAgreement{stop_vote, true}; };
  }
  /// Collective, at start-up: every replica must run the same resolved configuration; otherwise
  /// every replica throws, naming the replicas and the keys that differ from replica 0.
  virtual void check_same_config(const ConfigEntries& config) { (void)config; }
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

/// The `strategy` config section: the schema (train/config.cpp) binds every key straight to a
/// field here or in `ddp`, so each default is written once.
struct StrategyOptions {
  std::string type = "single";   // a name from strategy_kinds()
  std::string backend = "auto";  // a name from dist::available_backends(), or auto
  int64_t devices = 1;           // replica threads per process (mirrored, multi_worker_mirrored)
  /// A collective this slow is reported once by the watchdog.
  dist::Timeout stall_warning = dist::kDefaultStallWarning;
  int64_t check_parameters_every_steps = 1000;  // 0: never
  /// ZeRO-1: gradients reduce-scattered, each replica keeps and updates only its shard of the
  /// optimiser state, parameters all-gathered (data-parallel strategies).
  bool shard_optimizer = false;
  /// SyncBatchNorm: every BatchNorm layer normalises with the global batch's statistics
  /// (model.sync_batch_norm; data-parallel strategies).
  bool sync_batch_norm = false;
  /// strategy.bucket_cap_mb: auto — DDP tries bucket caps over the first steps, the same trials
  /// on every replica, and keeps the one with the least exposed communication.
  bool bucket_cap_auto = false;
  DdpOptions ddp;  // its timeout is strategy.timeout_s, also the watchdog's
};

/// One line of the strategy registry.
struct StrategyKind {
  std::string_view name;
  /// Replica threads per process: 1, or strategy.devices.
  bool threads;
  /// Whether replicas of the job's other processes take part (the job's world communicator).
  bool spans_processes;
  /// The strategy of one replica, over its communicator (from dist::Job).
  std::unique_ptr<Strategy> (*make)(const StrategyOptions& options, dist::CommunicatorPtr comm);
  /// "" or one line of help.
  std::string_view summary;

  int replicas_per_process(const StrategyOptions& o) const {
    return threads ? static_cast<int>(o.devices) : 1;
  }
};

/// Every strategy, in a fixed order (the config's strategy.type accepts these names).
const std::vector<StrategyKind>& strategy_kinds();
/// The kind named `name`; throws ValueError listing the known names otherwise.
const StrategyKind& find_strategy(std::string_view name);
std::vector<std::string> strategy_names();

}  // namespace dtrain
