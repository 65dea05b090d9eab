// Two communicators over the same ranks used as one, like PyTorch's "cpu:gloo,cuda:nccl" backend:
// host tensors go through `host` (DDP's model check and bucket order, metrics, config hashes),
// device tensors through `device` (gradients, parameters, buffers). Each keeps its own order, so
// every rank must issue the same sequence of host and of device collectives (DDP does).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "dtrain/distributed/communicator.h"

namespace dtrain::dist {

class DeviceRoutedCommunicator final : public Communicator {
 public:
  /// Both must have the same rank and size; throws ValueError naming both otherwise.
  DeviceRoutedCommunicator(CommunicatorPtr host, CommunicatorPtr device);
  /// "<host>+<device>", e.g. "local+nccl".
  std::string_view backend_name() const override { return name_; }
  Communicator& host() { return *host_; }
  Communicator& device() { return *device_; }

  WorkPtr all_reduce(Tensor& t, const AllReduceOptions& opts = {}) override;
  void all_reduce_now(Tensor& t, const AllReduceOptions& opts = {}) override;
  WorkPtr all_reduce_coalesced(std::vector<Tensor>& ts, const AllReduceOptions& opts = {}) override;
  WorkPtr broadcast(Tensor& t, const BroadcastOptions& opts = {}) override;
  WorkPtr reduce(Tensor& t, const ReduceOptions& opts = {}) override;
  WorkPtr all_gather(const Tensor& in, Tensor& out, const AllGatherOptions& opts = {}) override;
  WorkPtr reduce_scatter(const Tensor& in, Tensor& out,
                         const ReduceScatterOptions& opts = {}) override;
  /// A host barrier: it orders the processes, which is what a caller of barrier() wants.
  WorkPtr barrier(const BarrierOptions& opts = {}) override;
  WorkPtr send(const Tensor& t, int peer, const SendRecvOptions& opts = {}) override;
  WorkPtr recv(Tensor& t, int peer, const SendRecvOptions& opts = {}) override;
  Tensor allocate_symmetric(int64_t numel, DType dtype) override;
  /// The host side's calls (the device backend does not track its own).
  uint64_t calls_digest() const override { return host_->calls_digest(); }

 private:
  /// The communicator for tensors on `device`; `op` and the other tensor name a mix in errors.
  Communicator& route(const char* op, const Tensor& t, const Tensor* other = nullptr);
  CommunicatorPtr host_, device_;
  std::string name_;
};

}  // namespace dtrain::dist
