// One process's part of a job: replicas, their strategies, their Trainers.
#include "dtrain/train/run.h"

#include <vector>

#include "dtrain/distributed/registry.h"
#include "dtrain/tensor/cuda/cuda_backend.h"
#include "dtrain/train/device.h"
#include "dtrain/train/stop_signal.h"

namespace dtrain::train {

dist::JobSpec job_spec_for(const Config& config, dist::JobSpec base) {
  base.backend = config.strategy.backend;
  // Gradients of GPU replicas in several processes go over NCCL; the host backends move host
  // memory only.
  if (base.backend == "auto" && base.world.size > 1 && config.train.device != "cpu" &&
      wants_cuda(device_request(config.train.device, base.world.local_rank, 1))) {
    base.backend = "nccl";
  }
  base.timeout = config.strategy.ddp.timeout;
  base.stall_warning = config.strategy.stall_warning;
  return base;
}

namespace {
/// The strategy section, with the model section's choices that strategies carry out.
StrategyOptions strategy_options(const Config& config) {
  StrategyOptions o = config.strategy;
  o.sync_batch_norm = config.model.sync_batch_norm;
  return o;
}
}  // namespace

TrainResult train_in_job(const Config& config, dist::Job& job, const TrainerParts& parts) {
  const StrategyKind& kind = find_strategy(config.strategy.type);
  if (!kind.spans_processes && job.world_size() > 1) {
    throw ConfigError("strategy.type " + config.strategy.type +
                          " trains in one process, but this job has " +
                          std::to_string(job.world_size()) +
                          " processes (each would train alone and write the same files); use "
                          "strategy.type=ddp or multi_worker_mirrored",
                      __FILE__, __LINE__);
  }
  if (config.strategy.shard_optimizer && kind.name == "single") {
    throw ConfigError(
        "strategy.shard_optimizer shards the optimiser state over the replicas of a "
        "data-parallel strategy, and strategy.type single has one replica; use ddp, mirrored or "
        "multi_worker_mirrored, or set strategy.shard_optimizer=false",
        __FILE__, __LINE__);
  }
  if (config.strategy.bucket_cap_auto && config.strategy.shard_optimizer) {
    throw ConfigError(
        "strategy.bucket_cap_mb: auto tries bucket sizes while training, and "
        "strategy.shard_optimizer keeps each replica's optimiser state for fixed buckets; give "
        "bucket_cap_mb a size, or turn shard_optimizer off",
        __FILE__, __LINE__);
  }
  if (config.train.checkpoint_on_signal) install_stop_signal_handlers();
  const int replicas = kind.replicas_per_process(config.strategy);
  // Placement first: a GPU that cannot be used is a config error before any collective.
  const DeviceRequest request =
      device_request(config.train.device, job.spec().world.local_rank, replicas);
  std::vector<Device> devices;
  for (int r = 0; r < replicas; ++r) devices.push_back(replica_device(request, r));
  const bool on_gpus = devices[0].is_cuda();
  if (on_gpus && job.world_size() > 1 && job.backend() != "nccl") {
    throw ConfigError("train.device: cuda in a job of " + std::to_string(job.world_size()) +
                          " processes needs strategy.backend nccl (or auto), not " + job.backend() +
                          ": the host backends move host memory only",
                      __FILE__, __LINE__);
  }
  if (on_gpus && config.strategy.bucket_cap_auto) {
    // The tuner compares the communication the host waits for, and on GPUs the host does not
    // wait for NCCL (the default stream does), so every size would look alike.
    throw ConfigError(
        "strategy.bucket_cap_mb: auto measures the gradient communication the host waits for, "
        "which GPU replicas do not (their default stream waits for NCCL); give bucket_cap_mb a "
        "size (25 MiB is the default) on train.device cuda",
        __FILE__, __LINE__);
  }
  std::vector<dist::CommunicatorPtr> comms =
      on_gpus && replicas > 1 ? job.replica_communicators(devices, kind.spans_processes)
                              : job.replica_communicators(replicas, kind.spans_processes);
  std::vector<TrainResult> results(replicas);
  // Each replica builds its own data, model and optimiser; construction is collective (DDP
  // broadcasts rank 0's parameters), so every replica starts on its own thread.
  job.run_replicas(replicas, [&](int r) {
    TrainerParts own = parts;
    if (!own.device) own.device = devices[r];
    if (own.device->is_cuda()) cuda::set_device(own.device->index);  // this thread's kernels
    results[r] =
        Trainer(config, kind.make(strategy_options(config), comms[r]), std::move(own)).run();
  });
  for (const TrainResult& r : results) {
    if (r.primary) return r;
  }
  return results[0];
}

EvalResult evaluate_in_job(const Config& config, dist::Job& job, const std::string& path,
                           const TrainerParts& parts) {
  const StrategyKind& kind = find_strategy(config.strategy.type);
  dist::CommunicatorPtr comm = job.replica_communicators(1, kind.spans_processes)[0];
  TrainerParts own = parts;
  if (!own.device) {
    own.device =
        replica_device(device_request(config.train.device, job.spec().world.local_rank, 1), 0);
  }
  if (own.device->is_cuda()) cuda::set_device(own.device->index);
  Trainer trainer(config, kind.make(strategy_options(config), comm), std::move(own));
  return trainer.evaluate_checkpoint(path);
}

TrainResult fit(const Config& config, const TrainerParts& parts) {
  const std::string why = dist::backend_unavailable_reason(config.strategy.backend);
  DTRAIN_CHECK(why.empty(), "strategy.backend: ", why);
  dist::Job job(job_spec_for(config, dist::job_spec_from_env()));
  return train_in_job(config, job, parts);
}

}  // namespace dtrain::train
