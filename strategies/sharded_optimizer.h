// ZeRO-1: the optimiser state sharded over the replicas of a DistributedDataParallel. Gradients
// are reduce-scattered (DdpOptions::reduce_scatter), each replica updates only its chunk of each
// bucket, keeping optimiser state for those elements alone, and the parameters are all-gathered.
// Communication equals plain DDP's (reduce-scatter + all-gather = one all-reduce); the optimiser
// state per replica is about 1/N of it.
#pragma once

#include <vector>

#include "dtrain/nn/optim.h"
#include "dtrain/strategies/ddp.h"

namespace dtrain {

/// The L2 norm of ddp's averaged gradients (DdpOptions::reduce_scatter), from each replica's
/// owned elements, summed across replicas: the same on every replica. Collective.
double sharded_grad_norm(DistributedDataParallel& ddp);
/// clip_grad_norm_ with sharded_grad_norm: every gradient scaled by max_norm / (norm + 1e-6)
/// when that is below 1. Returns the norm before clipping. Collective.
double sharded_clip_grad_norm_(DistributedDataParallel& ddp, double max_norm);

/// Usage, in place of opt.step() after DDP's backward:
///   DdpOptions o; o.reduce_scatter = true;
///   DistributedDataParallel ddp(model, comm, o);
///   SGD opt(model.parameters(), {...});
///   ShardedOptimizer sharded(ddp, opt);
///   loss_fn(ddp(x), y).backward();
///   sharded.step();          // every replica ends with the same parameters
///   opt.zero_grad();
/// Every method is collective: all replicas call it at the same point. One per replica.
class ShardedOptimizer {
 public:
  /// `ddp` must reduce-scatter; `optimizer` must hold exactly ddp.parameters() (in any order).
  /// Both must outlive this object.
  ShardedOptimizer(DistributedDataParallel& ddp, nn::Optimizer& optimizer);

  /// Updates this replica's elements of every parameter, then gathers the parameters. The first
  /// call cuts the optimiser's state to this replica's elements (nn::Optimizer::shard).
  void step();
  /// The L2 norm of the averaged gradients, from each replica's owned elements: the same on
  /// every replica, and what an unsharded run computes over whole gradients.
  double grad_norm() { return sharded_grad_norm(ddp_); }
  double clip_grad_norm_(double max_norm) { return sharded_clip_grad_norm_(ddp_, max_norm); }
  /// The optimiser state in an unsharded optimiser's layout, whole on every replica, so a
  /// checkpoint resumes on any number of replicas, sharded or not.
  nn::OptimizerState state_dict();
  /// Loads a state in the unsharded layout (state_dict() of any world size, or of an unsharded
  /// optimiser); each replica keeps its own elements.
  void load_state_dict(const nn::OptimizerState& state);

  nn::Optimizer& optimizer() { return opt_; }

 private:
  /// Shards the optimiser on first use, once DDP's buckets are settled.
  void shard_once();
  DistributedDataParallel& ddp_;
  nn::Optimizer& opt_;
  std::vector<size_t> ddp_index_;  // per optimiser parameter: its index in ddp.parameters()
};

}  // namespace dtrain
