// The hierarchical composition of a local group and a cross-process communicator.
#include "dtrain/distributed/hierarchical_communicator.h"

#include <cstring>

#include "dtrain/tensor/check.h"

namespace dtrain::dist {

HierarchicalCommunicator::HierarchicalCommunicator(std::shared_ptr<HostCommunicator> local,
                                                   CommunicatorPtr cross, int process_rank,
                                                   int processes)
    : HostCommunicator(process_rank * local->size() + local->rank(), processes * local->size()),
      local_(std::move(local)),
      cross_(std::move(cross)),
      process_rank_(process_rank) {
  if (leader()) {
    DTRAIN_CHECK(cross_ != nullptr && cross_->size() == processes && cross_->rank() == process_rank,
                 "hierarchical communicator: the leader of process ", process_rank,
                 " needs a cross-process communicator of size ", processes, " with rank ",
                 process_rank);
  }
  start_worker();
}

HierarchicalCommunicator::~HierarchicalCommunicator() { stop_worker(); }

void HierarchicalCommunicator::run_all_reduce(Tensor& t, ReduceOp op, const CollectiveInfo&,
                                              Timeout timeout) {
  // 1. Reduce within the process (every local replica gets the process sum); 2. leaders reduce
  //    across processes; 3. the leader's result goes to its local replicas.
  local_->all_reduce(t, {op, timeout})->wait(timeout);
  if (leader()) cross_->all_reduce(t, {op, timeout})->wait(timeout);
  local_->broadcast(t, {0, timeout})->wait(timeout);
}

void HierarchicalCommunicator::run_broadcast(Tensor& t, int root, const CollectiveInfo&,
                                             Timeout timeout) {
  const int root_process = root / local_->size(), root_local = root % local_->size();
  // 1. Within the root's process its leader receives the root's tensor (other processes
  //    broadcast from their leader, a no-op for the data that matters); 2. leaders; 3. locally.
  local_->broadcast(t, {process_rank_ == root_process ? root_local : 0, timeout})->wait(timeout);
  if (leader()) cross_->broadcast(t, {root_process, timeout})->wait(timeout);
  local_->broadcast(t, {0, timeout})->wait(timeout);
}

void HierarchicalCommunicator::run_reduce(Tensor& t, ReduceOp op, int, const CollectiveInfo& info,
                                          Timeout timeout) {
  run_all_reduce(t, op, info, timeout);  // every rank, root included, gets the result
}

void HierarchicalCommunicator::run_all_gather(const Tensor& in, Tensor& out, const CollectiveInfo&,
                                              Timeout timeout) {
  // Global rank order is process-major, so the processes' local gathers concatenate in order.
  Tensor mine({in.numel() * local_->size()}, in.dtype());
  local_->all_gather(in, mine, {timeout})->wait(timeout);
  if (leader()) cross_->all_gather(mine, out, {timeout})->wait(timeout);
  local_->broadcast(out, {0, timeout})->wait(timeout);
}

void HierarchicalCommunicator::run_reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op,
                                                  const CollectiveInfo& info, Timeout timeout) {
  Tensor all = in.clone();
  run_all_reduce(all, op, info, timeout);
  std::memcpy(out.data_ptr(), static_cast<const char*>(all.data_ptr()) + rank() * out.nbytes(),
              out.nbytes());
}

void HierarchicalCommunicator::run_barrier(const CollectiveInfo&, Timeout timeout) {
  local_->barrier({timeout})->wait(timeout);
  if (leader()) cross_->barrier({timeout})->wait(timeout);
  local_->barrier({timeout})->wait(timeout);
}

void HierarchicalCommunicator::run_send(const Tensor&, int, int, const CollectiveInfo& info,
                                        Timeout) {
  DTRAIN_THROW(UnsupportedError, info.describe(),
               ": the hierarchical communicator has no point-to-point; use the local or the "
               "cross-process communicator");
}

void HierarchicalCommunicator::run_recv(Tensor&, int, int, const CollectiveInfo& info, Timeout) {
  DTRAIN_THROW(UnsupportedError, info.describe(),
               ": the hierarchical communicator has no point-to-point; use the local or the "
               "cross-process communicator");
}

}  // namespace dtrain::dist
