// dist::Job: the one place a process's distributed state is assembled. Built once per process from
// a JobSpec, it owns the Store client, the world communicator (from the backend registry), the
// communicators of this process's replica threads, the collective watchdogs, and the thread loop
// that runs the replicas. Strategies get communicators from here and never build their own.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dtrain/distributed/communicator.h"
#include "dtrain/distributed/environment.h"
#include "dtrain/distributed/store.h"
#include "dtrain/tensor/dtype.h"

namespace dtrain::dist {

class HostCommunicator;
class LocalGroup;
class Watchdog;
class WorkerHeartbeat;

/// Not thread-safe: one thread assembles the job (replica threads only use their communicators).
/// Destroy it after everything that uses its communicators.
class Job {
 public:
  explicit Job(JobSpec spec);
  /// The job the environment describes (dtrain launch, mpirun, srun, or one process) over
  /// `backend` (a name from available_backends(), or "auto").
  static Job from_env(std::string_view backend = "auto");
  ~Job();
  Job(Job&&) noexcept;
  Job& operator=(Job&&) = delete;

  const JobSpec& spec() const { return spec_; }
  int rank() const { return spec_.world.rank; }
  int world_size() const { return spec_.world.size; }
  /// The backend spec().backend resolves to: "auto" is tcp under dtrain launch and in a
  /// `cluster:` job, mpi under mpirun or srun, local for a single process.
  std::string backend() const;
  /// Where this process's replica computes: cpu, or with the nccl backend cuda:<local rank>.
  /// Throws when the machine runs more local ranks than it has GPUs, naming the ranks.
  Device device() const;

  /// A new client of the job's Store, or null when the job has none (one process; under mpirun and
  /// srun, before world(): rank 0 then hosts a Store for the watchdogs, see start_own_store).
  std::shared_ptr<StoreClient> store_client() const;
  /// The same with another limit on each request (the watchdogs' progress reports give up fast).
  std::shared_ptr<StoreClient> store_client(std::chrono::milliseconds request_timeout) const;

  /// The communicator over every process of the job, watched by the watchdog. Created at the
  /// first call, which is collective: it ends with a pre-flight all-reduce every rank must pass.
  /// With the nccl backend, device tensors go through NCCL and host tensors through the host
  /// backend auto picks. Throws UnsupportedError when the backend cannot run here, saying why.
  CommunicatorPtr world();

  /// One communicator per replica thread of this process (a group of n). With span_processes
  /// they also reach every other process's replicas (hierarchical: local group, then world());
  /// with n == 1 that is world() itself. Each is watched by a watchdog.
  std::vector<CommunicatorPtr> replica_communicators(int n, bool span_processes);
  /// One communicator per replica thread on `devices`, all cpu or distinct GPUs (NCCL between
  /// them, the local group for host tensors). Throws ValueError for mixed or repeated devices and
  /// UnsupportedError for GPUs this build or machine cannot use, naming them. With
  /// span_processes and GPUs, one NCCL clique over every (process, GPU) pair of the job, and the
  /// hierarchical host communicators of replica_communicators(n, true) for host tensors.
  std::vector<CommunicatorPtr> replica_communicators(const std::vector<Device>& devices,
                                                     bool span_processes = false);

  /// Runs fn(replica) for every replica in [0, n), each on its own thread (on this one when
  /// n == 1). The first replica to throw aborts the replica group of this process, so the others
  /// stop waiting for it in their collectives, and its exception is rethrown after all ended.
  void run_replicas(int n, const std::function<void(int replica)>& fn);

 private:
  /// Installs a watchdog on `comm` (when it reports its collectives) for the job's lifetime. It
  /// publishes progress to the job's Store when `publish` (ranks of the whole job, so keys
  /// never collide).
  void watch(const CommunicatorPtr& comm, bool publish);
  std::shared_ptr<HostCommunicator> host_world();
  /// For a job of several processes that came without a Store (mpirun, srun): rank 0 hosts one
  /// and passes its address and a fresh token over `comm`, so that the watchdogs can publish
  /// progress and name the ranks a collective waits for. Collective over `comm`. A rank that
  /// cannot reach it goes on without (its watchdog then knows only its own progress).
  void start_own_store(HostCommunicator& comm);
  /// world() without its watchdog (the hierarchical communicators built on it have their own).
  CommunicatorPtr make_world();

  JobSpec spec_;
  std::shared_ptr<HostCommunicator> host_world_;
  CommunicatorPtr world_;
  std::shared_ptr<LocalGroup> replica_group_;  // aborted by run_replicas on a failure
  std::vector<std::pair<CommunicatorPtr, std::unique_ptr<Watchdog>>> watched_;
  std::unique_ptr<WorkerHeartbeat> heartbeat_;  // to the launcher, when one started this process
  std::unique_ptr<StoreServer> own_store_;      // rank 0's, for a job that came without a Store
  bool has_own_store_ = false;                  // on every rank of such a job
};

}  // namespace dtrain::dist
