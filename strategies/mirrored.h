// MirroredStrategy for C++ users who write their own loop, shaped like TensorFlow's:
// replicas are threads of this process, each with its own copy of the model on its own device
// (logical CPU devices, or one GPU each), kept in sync by DistributedDataParallel: over a local
// group on the CPU; on GPUs gradients and parameters go through NCCL and DDP's small host checks
// through the local group. run(step_fn) runs one step on every replica.
#pragma once

#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "dtrain/distributed/communicator.h"
#include "dtrain/distributed/job.h"
#include "dtrain/strategies/ddp.h"

namespace dtrain {

/// What step_fn sees on one replica.
struct ReplicaContext {
  int replica;
  int num_replicas;
  Device device;                 // where this replica's model lives: move its inputs here
  nn::Module& model;             // this replica's copy
  DistributedDataParallel& ddp;  // forward through it; backward() returns reduced gradients
};

class MirroredStrategy {
 public:
  /// Replica 0 trains `model` itself; the others train clones (make_empty + state copy). The
  /// replicas start from identical parameters.
  MirroredStrategy(nn::Module& model, int replicas, DdpOptions options = {});
  /// One replica per device: all cpu (threads), or distinct GPUs (cuda:0, cuda:1, ...). On GPUs
  /// `model` moves to devices[0] and the clones are made on the others. Throws ValueError for
  /// mixed or repeated devices, UnsupportedError when this build or machine has no such GPUs.
  MirroredStrategy(nn::Module& model, const std::vector<Device>& devices, DdpOptions options = {});
  ~MirroredStrategy();
  int num_replicas_in_sync() const { return static_cast<int>(models_.size()); }
  /// The model replica r trains (replica 0: the model given to the constructor).
  nn::Module& replica_model(int r) { return *models_.at(r); }
  Device replica_device(int r) const { return devices_.at(r); }

  /// Runs step_fn on every replica at once, each on its own thread, and returns each replica's
  /// result in replica order. The first replica to throw stops the others' collectives, and its
  /// exception is re-thrown here (after all finished).
  template <class R>
  std::vector<R> run(const std::function<R(ReplicaContext&)>& step_fn) {
    std::vector<R> results(models_.size());
    run_each([&](ReplicaContext& ctx) { results[ctx.replica] = step_fn(ctx); });
    return results;
  }
  void run(const std::function<void(ReplicaContext&)>& step_fn) { run_each(step_fn); }

  /// Reduces per-replica values on the host: kSum, kAvg, kMin, kMax, kProduct.
  static double reduce(dist::ReduceOp op, const std::vector<double>& per_replica);

 private:
  void run_each(const std::function<void(ReplicaContext&)>& step_fn);
  dist::Job job_{dist::JobSpec{}};  // this process alone: its replica threads and their group
  std::vector<Device> devices_;
  std::vector<nn::Module*> models_;
  std::vector<std::shared_ptr<nn::Module>> clones_;
  std::vector<std::unique_ptr<DistributedDataParallel>> ddps_;
};

}  // namespace dtrain
