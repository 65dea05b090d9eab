// An explicit `cluster:` section in place of a launcher, mpirun or srun: every process is started
// with the same config and its own cluster.rank (by hand, by a container orchestrator, by any
// scheduler). Rank 0 hosts the Store at cluster.store, and every process then joins the job as a
// worker of `dtrain launch` does (the tcp backend through that Store), from the JobSpec here.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "dtrain/distributed/environment.h"

namespace dtrain::dist {
class StoreServer;
}

namespace dtrain::launch {

class ClusterJob {
 public:
  /// Nothing to do when world_size is 0 (the environment describes the job) or 1. Otherwise
  /// throws ValueError when the environment already describes a job (mpirun, dtrain launch,
  /// srun), or DTRAIN_STORE_TOKEN is unset or shorter than 16 characters; rank 0 starts the
  /// Store (errors name the address).
  ClusterJob(int64_t world_size, int64_t rank, const std::string& store, double timeout_s);
  ~ClusterJob();
  ClusterJob(const ClusterJob&) = delete;
  ClusterJob& operator=(const ClusterJob&) = delete;
  /// This process's place in the job: from the section when it describes a job of several
  /// processes, otherwise from the environment (job_spec_from_env).
  dist::JobSpec spec() const;
  /// After this process finished its work: every rank says so, and rank 0 keeps the Store up
  /// until all have (at most timeout_s), so no rank loses it while still using it.
  void finish();

 private:
  int64_t world_size_ = 0, rank_ = 0;
  std::string store_;
  std::string token_;
  double timeout_s_ = 0;
  std::unique_ptr<dist::StoreServer> server_;
};

}  // namespace dtrain::launch
