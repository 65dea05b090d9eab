// Hierarchical composition for MultiWorkerMirroredStrategy: replicas that are threads of one
// process reduce through a local group, and only each process's leader (local rank 0) talks to the
// other processes through a cross-process communicator (the job's world: tcp, mpi, or nccl routed
// with one of them). Global rank = process rank * replicas per process + local rank; every process
// must have the same number.
#pragma once

#include <memory>

#include "dtrain/distributed/host_communicator.h"

namespace dtrain::dist {

class HierarchicalCommunicator final : public HostCommunicator {
 public:
  /// `local`: this replica's communicator in its process's local group. `cross`: the process-level
  /// communicator, used by the local leader only (may be null on other local ranks); `processes`
  /// and `process_rank` describe the cross level for every local rank.
  HierarchicalCommunicator(std::shared_ptr<HostCommunicator> local, CommunicatorPtr cross,
                           int process_rank, int processes);
  ~HierarchicalCommunicator() override;
  std::string_view backend_name() const override { return "hierarchical"; }
  int local_rank() const { return local_->rank(); }
  int process_rank() const { return process_rank_; }
  HostCommunicator& local() { return *local_; }

 protected:
  // Each collective runs in three steps (intra-process, leaders across processes,
  // intra-process again); every step waits for the previous one.
  void run_all_reduce(Tensor& t, ReduceOp op, const CollectiveInfo& info, Timeout timeout) override;
  void run_broadcast(Tensor& t, int root, const CollectiveInfo& info, Timeout timeout) override;
  void run_reduce(Tensor& t, ReduceOp op, int root, const CollectiveInfo& info,
                  Timeout timeout) override;
  void run_all_gather(const Tensor& in, Tensor& out, const CollectiveInfo& info,
                      Timeout timeout) override;
  void run_reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op, const CollectiveInfo& info,
                          Timeout timeout) override;
  void run_barrier(const CollectiveInfo& info, Timeout timeout) override;
  void run_send(const Tensor& t, int peer, int tag, const CollectiveInfo& info,
                Timeout timeout) override;
  void run_recv(Tensor& t, int peer, int tag, const CollectiveInfo& info, Timeout timeout) override;

 private:
  bool leader() const { return local_->rank() == 0; }
  std::shared_ptr<HostCommunicator> local_;
  CommunicatorPtr cross_;
  int process_rank_;
};

}  // namespace dtrain::dist
