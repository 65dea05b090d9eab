// `dtrain launch`: spawns this node's workers, meets the other nodes' launchers at node 0's Store,
// watches the workers (exit status, heartbeats) and restarts the whole job from its latest
// checkpoint after a failure. MPI and Slurm start processes themselves; this adds what they lack.
#pragma once

#include <string>
#include <vector>

#include "dtrain/train/config.h"

namespace dtrain::launch {

/// The config's `launcher` section (train::LauncherConfig, which the schema binds and whose
/// defaults are the only ones), then what only the command line or the launcher itself knows.
struct LaunchOptions : train::LauncherConfig {
  std::string config_path;
  std::vector<std::string> overrides;  // passed to every worker's `dtrain train`
  int node_rank = 0;
  std::string config_hash;        // of the resolved config, compared across nodes
  std::string version;            // dtrain's, compared across nodes
  std::string worker_executable;  // the dtrain binary the workers run
  /// The program every worker runs instead of `worker_executable train config overrides`: its
  /// path first, then its arguments (`dtrain launch -- PROGRAM ARGS`).
  std::vector<std::string> command;
};

/// Exit status of a launcher stopped by SIGINT / SIGTERM (128 + signal, as shells report; SIGHUP
/// stops the job the same way and exits with 129).
inline constexpr int kInterruptedExit = 130;
inline constexpr int kTerminatedExit = 143;

/// Runs the job to the end and returns the launcher's exit status: 0 when every worker of the
/// final attempt succeeded, 1 when restarts ran out (after a summary of every failure), 2 for
/// bad options or nodes that disagree, 130/143 when interrupted. Every worker is gone on return.
int run_launch(const LaunchOptions& options);

}  // namespace dtrain::launch
