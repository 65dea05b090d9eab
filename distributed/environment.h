// Where this process sits in the job, read from the environment contract of DESIGN.md: dtrain's
// launcher, then Open MPI, then Slurm with PMIx, then plain Slurm, else a single process.
#pragma once

#include <chrono>
#include <cstdlib>
#include <functional>
#include <string>

#include "dtrain/distributed/communicator.h"

namespace dtrain::dist {

/// This process's place in the job. Invariants: 0 <= rank < size, 0 <= local_rank < local_size.
struct WorldInfo {
  int rank = 0;
  int size = 1;
  int local_rank = 0;  // among the processes on this machine
  int local_size = 1;
  std::string source = "single";  // "dtrain", "openmpi", "pmix", "slurm", "cluster" or "single"
  /// "rank 1 of 4 (local 1 of 2, from openmpi)".
  std::string describe() const;
};

/// Reads the first complete source, in this order (a variable set to "" counts as unset):
///  1. dtrain's launcher: DTRAIN_RANK, DTRAIN_WORLD_SIZE, DTRAIN_LOCAL_RANK,
///  DTRAIN_LOCAL_WORLD_SIZE;
///  2. Open MPI's mpirun: OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE. It beats Slurm
///     because under mpirun inside a Slurm allocation the SLURM_PROCID/LOCALID values describe
///     the batch step, not the ranks;
///  3. srun --mpi=pmix: PMIX_RANK with SLURM_NTASKS and SLURM_LOCALID;
///  4. srun: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID;
///  otherwise a single process (0 of 1, source "single").
/// The local size comes from the source's own variable; for Slurm from this node's entry (at
/// SLURM_NODEID) of SLURM_STEP_TASKS_PER_NODE ("2(x3),1"), else SLURM_NTASKS_PER_NODE, else
/// SLURM_TASKS_PER_NODE. Where a source gives no local values the job is taken to be on one machine
/// (local = global). Throws ValueError naming the variable and its value when a value is not a
/// non-negative integer, a size is 0, a rank is not below its size, or a source's rank is set
/// without its size. `getenv` is a parameter so tests can pass a fake environment.
WorldInfo detect_world(const std::function<const char*(const char*)>& getenv = ::getenv);

/// Everything a process needs to join its job (distributed/job.h builds the job from it). Made
/// from the environment by job_spec_from_env, or filled in by a caller (the config's `cluster:`
/// section, tests), so that nothing within a process talks through environment variables.
struct JobSpec {
  WorldInfo world;
  std::string store_address;     // host:port of the job's Store; "" when it has none (mpirun, srun)
  std::string store_token;       // the Store's shared secret (never on a command line)
  int restart_count = 0;         // restarts of the job so far (dtrain launch --max-restarts)
  std::string backend = "auto";  // strategy.backend
  Timeout timeout = kDefaultTimeout;             // a collective slower than this stops the job
  Timeout stall_warning = kDefaultStallWarning;  // ... slower than this is reported
};

/// detect_world, plus dtrain launch's DTRAIN_STORE_ADDR, DTRAIN_STORE_TOKEN and
/// DTRAIN_RESTART_COUNT. Throws ValueError naming a variable whose value is malformed.
JobSpec job_spec_from_env(const std::function<const char*(const char*)>& getenv = ::getenv);

}  // namespace dtrain::dist
