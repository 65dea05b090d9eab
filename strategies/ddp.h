// DistributedDataParallel: replicas in separate processes (or threads) keep identical parameters
// by averaging gradients. Gradients live in flat buckets; a bucket's all-reduce starts from the
// autograd post-accumulate hook of its last gradient while backward continues.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "dtrain/distributed/communicator.h"
#include "dtrain/nn/module.h"
#include "dtrain/nn/optim.h"

namespace dtrain {

struct DdpOptions {
  double bucket_cap_mb = 25;       // bucket size after the first
  double bucket_first_cap_mb = 1;  // small first bucket: communication starts early
  bool find_unused_parameters = false;
  bool broadcast_buffers = true;   // rank 0's buffers (batch-norm statistics) before each forward
  std::string comm_hook = "none";  // none | fp16 | bf16: compress buckets for the all-reduce
  /// Start each bucket's all-reduce from backward (true) or all of them when backward ends
  /// (false). Overlap pays when communication progresses on a core of its
  /// own; with one core per rank a polling communicator competes with backward for it.
  bool overlap = true;
  dist::Timeout timeout = dist::kDefaultTimeout;
  /// Time the gradient all-reduces (stats()). Needs a communicator that observes its collectives
  /// (Communicator::observes_collectives: host backends), beside any watchdog.
  bool collect_stats = false;
  /// ZeRO-1's half of the reduction: each bucket is reduce-scattered instead of all-reduced, so
  /// a rank ends the reduction holding the average of its own chunk of each bucket only
  /// (owned_elements()); the first synchronised step, which settles the buckets, all-reduces.
  bool reduce_scatter = false;
};

/// How much of the gradient all-reduce backward hid, summed over the synchronised steps since
/// construction or reset_stats() (DdpOptions::collect_stats). Seconds of steady_clock.
struct DdpStats {
  int64_t steps = 0;
  /// Busy time: per step, the union over buckets of [all-reduce launched, all-reduce finished on
  /// the communicator's thread].
  double all_reduce_s = 0;
  /// The part of all_reduce_s after backward ran its last node (the reduction's wait began).
  double exposed_s = 0;
  /// Time spent waiting for the reduction at the end of backward (exposed_s plus launching and
  /// waking up).
  double synchronize_s = 0;
  /// The fraction of all-reduce time hidden behind backward: 1 - exposed_s / all_reduce_s.
  double hidden_fraction() const { return all_reduce_s > 0 ? 1.0 - exposed_s / all_reduce_s : 0; }
};

/// One bucket's reduction in the last synchronised step (DistributedDataParallel::last_step).
struct BucketTiming {
  std::chrono::steady_clock::time_point launched, finished;
  int64_t bytes = 0;
  bool scattered = false;  // reduce_scatter (strategy.shard_optimizer) rather than all_reduce
};
/// Where the last synchronised step's communication went: each bucket's reduction, when
/// backward's last node ran (the wait for the reductions began), and how long that wait took
/// (the communication backward did not hide). `finished` is when the communicator's thread
/// finished the bucket with DdpOptions::collect_stats, else when the wait for it returned.
struct DdpStepTiming {
  std::vector<BucketTiming> buckets;
  std::chrono::steady_clock::time_point wait_began;
  double exposed_s = 0;
};

/// Wraps a model. Construction is collective: rank 0's parameters and buffers are broadcast after
/// the ranks have checked that their models agree (names, shapes, dtypes; a difference names the
/// first differing parameter and the ranks). Usage, as in PyTorch's loop:
///   DistributedDataParallel ddp(model, comm);
///   loss_fn(ddp.forward(x), y).backward();   // buckets all-reduce during backward; backward
///                                            // returns when gradients hold the average
///   opt.step();
/// Not thread-safe; one per replica.
class DistributedDataParallel {
 public:
  DistributedDataParallel(nn::Module& model, std::shared_ptr<dist::Communicator> comm,
                          DdpOptions options = {});
  ~DistributedDataParallel();
  DistributedDataParallel(const DistributedDataParallel&) = delete;
  DistributedDataParallel& operator=(const DistributedDataParallel&) = delete;

  /// Broadcasts buffers from rank 0 (when enabled), then runs the model.
  Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) { return forward(x); }
  /// Returns when every gradient holds the average over all replicas. backward() already ends
  /// with this (an end-of-backward callback), so calling it once after backward is optional and
  /// does nothing. Called with no backward since the previous call, it takes part in the step's
  /// all-reduces with the gradients as they are: how a replica without data for a step joins
  /// the others (with find_unused_parameters). Without find_unused_parameters, a parameter that got
  /// no gradient this step is an error naming it (thrown from backward()).
  void synchronize_gradients();

  /// With false, backward accumulates gradients locally without communicating (gradient
  /// accumulation); the next backward with true reduces everything accumulated. True at first.
  void set_gradient_sync(bool enabled);
  bool gradient_sync() const;
  /// set_gradient_sync(false) while alive; restores the previous setting.
  class NoSync {
   public:
    explicit NoSync(DistributedDataParallel& ddp);
    ~NoSync();

   private:
    DistributedDataParallel& ddp_;
    bool previous_;
  };
  NoSync no_sync() { return NoSync(*this); }

  nn::Module& module() { return model_; }
  dist::Communicator& communicator() { return *comm_; }
  /// Bucket membership as parameter names, in all-reduce order (for tests and logs).
  std::vector<std::vector<std::string>> bucket_layout() const;
  /// The parameters DDP reduces (those that require grad, in named_parameters() order) and,
  /// for each, the elements whose average this rank holds after a reduction: all of them, or
  /// with DdpOptions::reduce_scatter its chunk of each bucket (an empty range where the
  /// parameter lies outside it). The chunks change once, when the first synchronised step
  /// settles the buckets.
  std::vector<Tensor> parameters() const;
  bool reduces_scatter() const { return options_.reduce_scatter; }
  /// True once the first synchronised step has settled the buckets, and with them
  /// owned_elements().
  bool buckets_settled() const;
  std::vector<nn::ElementRange> owned_elements() const;
  /// Collective (DdpOptions::reduce_scatter): each tensors[k], shaped like parameters()[k] or
  /// undefined, gets in every element the value the rank owning that element holds: the
  /// parameters after each rank updated its own elements, or optimiser state for a checkpoint.
  /// Every rank passes the same tensors defined.
  void all_gather_owned(const std::vector<Tensor>& tensors);
  /// Regroups the gradients into buckets of at most `mb` MiB after the first, in the current
  /// order, keeping their values. Between steps only (no reduction in flight), at the same step on
  /// every rank; not with reduce_scatter (the shards would move under the optimiser's state).
  void set_bucket_cap_mb(double mb);
  double bucket_cap_mb() const { return options_.bucket_cap_mb; }
  /// The last synchronised step's reductions (always recorded; a few clock reads per bucket).
  const DdpStepTiming& last_step() const;
  /// All-reduce timing so far; zeros unless DdpOptions::collect_stats.
  DdpStats stats() const;
  void reset_stats();

  struct State;

 private:
  void check_models_agree();
  void broadcast_state(bool parameters, bool buffers);
  nn::Module& model_;
  std::shared_ptr<dist::Communicator> comm_;
  DdpOptions options_;
  std::shared_ptr<State> state_;
};

}  // namespace dtrain
