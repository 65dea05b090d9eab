// One process's part of a job: replicas, their strategies, their Trainers.
#include "train/run.h"

#include <vector>

#include "distributed/registry.h"
#include "train/stop_signal.h"

namespace dtrain::train {

dist::JobSpec job_spec_for(const Config& config, dist::JobSpec base) {
  base.backend = config.strategy.backend;
  base.timeout = config.strategy.ddp.timeout;
  base.stall_warning = config.strategy.stall_warning;
  return base;
}

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
  if (config.train.checkpoint_on_signal) install_stop_signal_handlers();
  const int replicas = kind.replicas_per_process(config.strategy);
  std::vector<dist::CommunicatorPtr> comms =
      job.replica_communicators(replicas, kind.spans_processes);
  std::vector<TrainResult> results(replicas);
  // Each replica builds its own data, model and optimiser; construction is collective (DDP
  // broadcasts rank 0's parameters), so every replica starts on its own thread.
  job.run_replicas(replicas, [&](int r) {
    results[r] = Trainer(config, kind.make(config.strategy, comms[r]), parts).run();
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
  Trainer trainer(config, kind.make(config.strategy, comm), parts);
  return trainer.evaluate_checkpoint(path);
}

TrainResult fit(const Config& config, const TrainerParts& parts) {
  const std::string why = dist::backend_unavailable_reason(config.strategy.backend);
  DTRAIN_CHECK(why.empty(), "strategy.backend: ", why);
  dist::Job job(job_spec_for(config, dist::job_spec_from_env()));
  return train_in_job(config, job, parts);
}

}  // namespace dtrain::train
