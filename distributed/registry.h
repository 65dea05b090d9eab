// The backend registry: which communicator backends this build has, and how to create the world
// communicator of one by name. One explicit line per backend in registry.cpp.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "distributed/async_communicator.h"
#include "distributed/store.h"

namespace dtrain::dist {

/// The backends compiled into this build, in a fixed order: "local" and "tcp" always, then "mpi"
/// when built with MPI.
std::vector<std::string> available_backends();

/// A communicator over every process of the job for a backend that spans processes ("tcp" under
/// `dtrain launch`, which finds its peers through the launcher's Store; "mpi").
/// Collective: every rank calls it the same number of times in the same order. Throws
/// UnsupportedError for "local" (its ranks are threads: use make_local_group) and for a backend
/// this build does not have, listing the available ones.
std::shared_ptr<AsyncCommunicator> create_world_communicator(std::string_view backend);

/// The job's communicator from the environment contract (detect_world): a one-rank local group
/// for a single process; otherwise `backend` ("auto" picks tcp under dtrain launch, mpi under
/// mpirun or srun). Checks that the backend's rank and size agree with the environment and names
/// both when they do not, then runs a pre-flight all-reduce that every rank must pass.
std::shared_ptr<AsyncCommunicator> init_from_env(std::string_view backend = "auto");

/// A job with one GPU per process: the communicator init_from_env(backend) gives, for host
/// tensors, joined with an nccl one for device tensors (DeviceRoutedCommunicator), on the GPU
/// `local rank mod GPUs of this machine`. Put the model there and wrap it in
/// DistributedDataParallel with `comm`. Throws UnsupportedError in a build without NCCL or on a
/// machine without a GPU, with the reason.
struct GpuJob {
  std::shared_ptr<Communicator> comm;
  Device device;
};
GpuJob init_gpu_job_from_env(std::string_view backend = "auto");

/// A new client of the job's Store (DTRAIN_STORE_ADDR and DTRAIN_STORE_TOKEN, set by dtrain
/// launch), or null when the job has none (mpirun, srun, a single process).
std::shared_ptr<StoreClient> job_store();

}  // namespace dtrain::dist
