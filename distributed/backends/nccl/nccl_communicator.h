// The nccl backend: collectives on GPU tensors through NCCL, ordered on one CUDA stream per
// communicator. One GPU per rank (the unique id travels through the Store), or one process driving
// several GPUs (MirroredStrategy) through NCCL group calls. No CUDA or NCCL type appears here.
//
// Work::wait() here does not block the host: it orders the device's default stream (where every
// kernel and copy runs) after the collective, so what uses the result on that device, or reads it
// to the host, sees it, while the host goes on queuing work. Work on another device must order
// itself (cuda::synchronize). The timeout holds all the same: a waited collective not done by its
// deadline aborts the communicator from a watching thread, and the next call on it throws
// TimeoutError naming that collective.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "dtrain/distributed/communicator.h"
#include "dtrain/distributed/store.h"

namespace dtrain::dist {

class NcclCommunicator final : public Communicator {
 public:
  /// One GPU per rank: rank 0 creates the NCCL unique id and publishes it under `store_key`, the
  /// others read it; every rank then joins the clique on cuda:`device`. Joining is nonblocking:
  /// when the clique is not complete within `init_timeout` (a peer never came), this rank aborts
  /// its part and throws TimeoutError.
  static std::shared_ptr<NcclCommunicator> create(int rank, int size, int device,
                                                  StoreClient& store,
                                                  const std::string& store_key = "dtrain/nccl_id",
                                                  Timeout init_timeout = kDefaultTimeout);
  /// One GPU per rank, the NCCL id sent from rank 0 through `host` (a communicator over the same
  /// ranks: mpi, tcp, or a local group), so no Store is needed (plain mpirun, srun).
  static std::shared_ptr<NcclCommunicator> create(Communicator& host, int device,
                                                  Timeout init_timeout = kDefaultTimeout);
  /// Several GPUs in every process (multi_worker_mirrored): one clique over every (process,
  /// device) pair, rank host.rank() * devices.size() + i on cuda:devices[i]. `host` is a
  /// communicator over the processes; every process must pass as many devices (checked on
  /// `host` first, ValueError otherwise). The NCCL id goes from process 0 through `host`; this
  /// process joins on all its devices in one NCCL group, nonblocking, bounded by `init_timeout`.
  static std::vector<std::shared_ptr<NcclCommunicator>> create_across_processes(
      Communicator& host, const std::vector<int>& devices, Timeout init_timeout = kDefaultTimeout);
  /// One communicator per device of this process (ncclCommInitAll), ranks in `devices` order.
  static std::vector<std::shared_ptr<NcclCommunicator>> create_local(
      const std::vector<int>& devices);
  /// All-reduce over communicators of one process in a single NCCL group call: tensors[i] lives on
  /// communicators[i]'s device. Returns one Work per communicator.
  ///
  /// Every Work keeps the tensors it uses alive until it is destroyed, and their blocks stay out
  /// of the CUDA allocator's cache until NCCL's stream is past them. After a timeout has aborted
  /// the communicator, every later call and every outstanding wait() throws DistError.
  static std::vector<WorkPtr> group_all_reduce(
      const std::vector<std::shared_ptr<NcclCommunicator>>& communicators,
      std::vector<Tensor>& tensors, const AllReduceOptions& opts = {});

  ~NcclCommunicator() override;
  std::string_view backend_name() const override { return "nccl"; }
  int device() const;

  WorkPtr all_reduce(Tensor& t, const AllReduceOptions& opts = {}) override;
  WorkPtr all_reduce_coalesced(std::vector<Tensor>& ts, const AllReduceOptions& opts = {}) override;
  WorkPtr broadcast(Tensor& t, const BroadcastOptions& opts = {}) override;
  WorkPtr reduce(Tensor& t, const ReduceOptions& opts = {}) override;
  WorkPtr all_gather(const Tensor& in, Tensor& out, const AllGatherOptions& opts = {}) override;
  WorkPtr reduce_scatter(const Tensor& in, Tensor& out,
                         const ReduceScatterOptions& opts = {}) override;
  WorkPtr barrier(const BarrierOptions& opts = {}) override;
  WorkPtr send(const Tensor& t, int peer, const SendRecvOptions& opts = {}) override;
  WorkPtr recv(Tensor& t, int peer, const SendRecvOptions& opts = {}) override;

  struct Impl;

 private:
  NcclCommunicator(int rank, int size, std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;  // shared with the Works, which may outlive this object
};

}  // namespace dtrain::dist
