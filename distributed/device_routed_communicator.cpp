// DeviceRoutedCommunicator: every collective goes to the communicator of its tensors' device kind.
#include "dtrain/distributed/device_routed_communicator.h"

#include "dtrain/tensor/check.h"

namespace dtrain::dist {

DeviceRoutedCommunicator::DeviceRoutedCommunicator(CommunicatorPtr host, CommunicatorPtr device)
    : Communicator(host ? host->rank() : 0, host ? host->size() : 0),
      host_(std::move(host)),
      device_(std::move(device)) {
  DTRAIN_CHECK(host_ != nullptr && device_ != nullptr,
               "DeviceRoutedCommunicator: needs a host and a device communicator");
  DTRAIN_CHECK(host_->rank() == device_->rank() && host_->size() == device_->size(),
               "DeviceRoutedCommunicator: the host communicator (", host_->backend_name(),
               ", rank ", host_->rank(), " of ", host_->size(), ") and the device communicator (",
               device_->backend_name(), ", rank ", device_->rank(), " of ", device_->size(),
               ") must cover the same ranks");
  name_ = std::string(host_->backend_name()) + "+" + std::string(device_->backend_name());
}

Communicator& DeviceRoutedCommunicator::route(const char* op, const Tensor& t,
                                              const Tensor* other) {
  DTRAIN_CHECK(t.defined(), op, ": undefined tensor");
  if (other != nullptr) {
    DTRAIN_CHECK(other->defined() && other->device().is_cpu() == t.device().is_cpu(), op,
                 ": input ", t.describe(), " and output ",
                 other->defined() ? other->describe() : "undefined",
                 " must both be host tensors or both device tensors");
  }
  return t.device().is_cpu() ? *host_ : *device_;
}

WorkPtr DeviceRoutedCommunicator::all_reduce(Tensor& t, const AllReduceOptions& opts) {
  return route("all_reduce", t).all_reduce(t, opts);
}

void DeviceRoutedCommunicator::all_reduce_now(Tensor& t, const AllReduceOptions& opts) {
  route("all_reduce", t).all_reduce_now(t, opts);
}

WorkPtr DeviceRoutedCommunicator::all_reduce_coalesced(std::vector<Tensor>& ts,
                                                       const AllReduceOptions& opts) {
  DTRAIN_CHECK(!ts.empty(), "all_reduce_coalesced: no tensors");
  for (const Tensor& t : ts) route("all_reduce_coalesced", ts[0], &t);
  return route("all_reduce_coalesced", ts[0]).all_reduce_coalesced(ts, opts);
}

WorkPtr DeviceRoutedCommunicator::broadcast(Tensor& t, const BroadcastOptions& opts) {
  return route("broadcast", t).broadcast(t, opts);
}

WorkPtr DeviceRoutedCommunicator::reduce(Tensor& t, const ReduceOptions& opts) {
  return route("reduce", t).reduce(t, opts);
}

WorkPtr DeviceRoutedCommunicator::all_gather(const Tensor& in, Tensor& out,
                                             const AllGatherOptions& opts) {
  return route("all_gather", in, &out).all_gather(in, out, opts);
}

WorkPtr DeviceRoutedCommunicator::reduce_scatter(const Tensor& in, Tensor& out,
                                                 const ReduceScatterOptions& opts) {
  return route("reduce_scatter", in, &out).reduce_scatter(in, out, opts);
}

WorkPtr DeviceRoutedCommunicator::barrier(const BarrierOptions& opts) {
  return host_->barrier(opts);
}

WorkPtr DeviceRoutedCommunicator::send(const Tensor& t, int peer, const SendRecvOptions& opts) {
  return route("send", t).send(t, peer, opts);
}

WorkPtr DeviceRoutedCommunicator::recv(Tensor& t, int peer, const SendRecvOptions& opts) {
  return route("recv", t).recv(t, peer, opts);
}

Tensor DeviceRoutedCommunicator::allocate_symmetric(int64_t numel, DType dtype) {
  return host_->allocate_symmetric(numel, dtype);
}

}  // namespace dtrain::dist
