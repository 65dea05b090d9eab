// Running a config as this process's part of a job: the job (distributed/job.h) hands out one
// communicator per replica, the strategy registry says how many replicas this process runs, and
// each replica is a Trainer on its own thread.
#pragma once

#include <string>

#include "dtrain/distributed/job.h"
#include "dtrain/train/config.h"
#include "dtrain/train/trainer.h"

namespace dtrain::train {

/// The JobSpec of this process: `base` (the environment's, or a cluster section's) with the
/// config's backend, collective timeout and stall warning.
dist::JobSpec job_spec_for(const Config& config, dist::JobSpec base);

/// Trains to the end on every replica of this process and returns the result of the replica that
/// reports for the job (or of the first). The first replica to fail stops the others. With
/// train.checkpoint_on_signal, SIGTERM and SIGUSR1 end the run after a checkpoint at a step all
/// replicas agree on (TrainResult::stopped_by_signal; stop_signal.h).
TrainResult train_in_job(const Config& config, dist::Job& job, const TrainerParts& parts = {});

/// Loads checkpoint `path` and evaluates it on the test split, with one replica per process (the
/// job's processes share the test set when the strategy spans them).
EvalResult evaluate_in_job(const Config& config, dist::Job& job, const std::string& path,
                           const TrainerParts& parts = {});

/// The whole run for C++ code, as `dtrain train` does it: this process's job from the
/// environment (dtrain launch, mpirun, srun, or one process alone), heartbeats to the launcher,
/// every replica trained to the end. Returns the reporting replica's result; throws ValueError
/// when strategy.backend cannot run here.
TrainResult fit(const Config& config, const TrainerParts& parts = {});

}  // namespace dtrain::train
