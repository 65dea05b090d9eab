// The nccl backend. A collective is enqueued on the communicator's stream and returns at once; its
// Work records a CUDA event behind it. wait() polls the event and ncclCommGetAsyncError, and on
// timeout aborts the communicator (ncclCommAbort) so no rank stays stuck inside NCCL.
#include "distributed/backends/nccl/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <thread>

#include "distributed/reduce.h"
#include "tensor/check.h"

#define DTRAIN_NCCL_CHECK(expr)                                                         \
  do {                                                                                  \
    const ncclResult_t result_ = (expr);                                                \
    if (result_ != ncclSuccess) {                                                       \
      DTRAIN_THROW(::dtrain::DistError, "NCCL error ", static_cast<int>(result_), " (", \
                   ncclGetErrorString(result_), ") in ", #expr);                        \
    }                                                                                   \
  } while (0)

#define DTRAIN_CUDA_RT_CHECK(expr)                                                   \
  do {                                                                               \
    const cudaError_t err_ = (expr);                                                 \
    if (err_ != cudaSuccess) {                                                       \
      DTRAIN_THROW(::dtrain::DistError, "CUDA error ", static_cast<int>(err_), " (", \
                   cudaGetErrorString(err_), ") in ", #expr);                        \
    }                                                                                \
  } while (0)

namespace dtrain::dist {

struct NcclCommunicator::Impl {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t inputs_ready = nullptr;  // recorded on the default stream before each collective
  int device = 0;
  uint64_t sequence = 0;
  bool aborted = false;
};

namespace {

ncclDataType_t nccl_type(DType t, const char* op) {
  switch (t) {
    case DType::kFloat32:
      return ncclFloat32;
    case DType::kFloat64:
      return ncclFloat64;
    case DType::kFloat16:
      return ncclFloat16;
    case DType::kBFloat16:
      return ncclBfloat16;
    case DType::kInt32:
      return ncclInt32;
    case DType::kInt64:
      return ncclInt64;
    default:
      DTRAIN_THROW(UnsupportedError, op, ": dtype ", dtype_name(t),
                   " is not supported by the nccl backend");
  }
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kAvg:
      return ncclAvg;
    case ReduceOp::kMin:
      return ncclMin;
    case ReduceOp::kMax:
      return ncclMax;
    case ReduceOp::kProduct:
      return ncclProd;
  }
  return ncclSum;
}

struct DeviceScope {
  explicit DeviceScope(int device) {
    cudaGetDevice(&previous);
    cudaSetDevice(device);
  }
  ~DeviceScope() { cudaSetDevice(previous); }
  int previous = 0;
};

/// Kernels run on the legacy default stream and NCCL on a non-blocking stream that does not wait
/// for it: without this a collective could read a gradient its kernel has not written yet.
void wait_for_default_stream(NcclCommunicator::Impl& impl) {
  DTRAIN_CUDA_RT_CHECK(cudaEventRecord(impl.inputs_ready, cudaStreamLegacy));
  DTRAIN_CUDA_RT_CHECK(cudaStreamWaitEvent(impl.stream, impl.inputs_ready, 0));
}

/// The stream and the ordering event of a communicator on the current device.
void create_stream(NcclCommunicator::Impl& impl) {
  DTRAIN_CUDA_RT_CHECK(cudaStreamCreateWithFlags(&impl.stream, cudaStreamNonBlocking));
  DTRAIN_CUDA_RT_CHECK(cudaEventCreateWithFlags(&impl.inputs_ready, cudaEventDisableTiming));
}

class NcclWork final : public Work {
 public:
  NcclWork(CollectiveInfo info, NcclCommunicator::Impl& impl)
      : info_(std::move(info)), impl_(impl) {
    DeviceScope scope(impl.device);
    DTRAIN_CUDA_RT_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
    DTRAIN_CUDA_RT_CHECK(cudaEventRecord(event_, impl.stream));
  }
  ~NcclWork() override {
    if (event_) cudaEventDestroy(event_);
  }

  void wait(Timeout timeout) override {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (is_completed()) return;
      ncclResult_t async_error = ncclSuccess;
      DTRAIN_NCCL_CHECK(ncclCommGetAsyncError(impl_.comm, &async_error));
      if (async_error != ncclSuccess && async_error != ncclInProgress) {
        DTRAIN_THROW(DistError, info_.describe(),
                     " failed in NCCL: ", ncclGetErrorString(async_error));
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        // A collective stuck in NCCL cannot be cancelled; aborting the communicator releases the
        // stream so the process can report and exit instead of hanging.
        if (!impl_.aborted) {
          ncclCommAbort(impl_.comm);
          impl_.aborted = true;
        }
        DTRAIN_THROW(TimeoutError, info_.describe(), " did not complete within ", timeout.count(),
                     " ms on cuda:", impl_.device, "; the NCCL communicator was aborted");
      }
      std::this_thread::yield();
    }
  }
  bool is_completed() const override {
    const cudaError_t status = cudaEventQuery(event_);
    if (status == cudaErrorNotReady) return false;
    DTRAIN_CUDA_RT_CHECK(status);
    return true;
  }
  const CollectiveInfo& info() const override { return info_; }

 private:
  CollectiveInfo info_;
  NcclCommunicator::Impl& impl_;
  cudaEvent_t event_ = nullptr;
};

/// This rank's place in the clique `id` names, on cuda:`device`, with its stream.
std::unique_ptr<NcclCommunicator::Impl> join_clique(const ncclUniqueId& id, int rank, int size,
                                                    int device) {
  auto impl = std::make_unique<NcclCommunicator::Impl>();
  impl->device = device;
  DeviceScope scope(device);
  create_stream(*impl);
  DTRAIN_NCCL_CHECK(ncclCommInitRank(&impl->comm, size, id, rank));
  return impl;
}

void check_device_tensor(const char* op, const Tensor& t, int device) {
  DTRAIN_CHECK(t.defined() && t.device() == Device::cuda(device), op, ": tensor ",
               t.defined() ? t.describe() : "undefined", " must be on cuda:", device,
               " for this nccl communicator");
}

}  // namespace

NcclCommunicator::NcclCommunicator(int rank, int size, std::unique_ptr<Impl> impl)
    : Communicator(rank, size), impl_(std::move(impl)) {}

NcclCommunicator::~NcclCommunicator() {
  DeviceScope scope(impl_->device);
  if (impl_->comm && !impl_->aborted) ncclCommDestroy(impl_->comm);
  if (impl_->stream) cudaStreamDestroy(impl_->stream);
  if (impl_->inputs_ready) cudaEventDestroy(impl_->inputs_ready);
}

int NcclCommunicator::device() const { return impl_->device; }

std::shared_ptr<NcclCommunicator> NcclCommunicator::create(int rank, int size, int device,
                                                           StoreClient& store,
                                                           const std::string& store_key) {
  ncclUniqueId id;
  if (rank == 0) {
    DTRAIN_NCCL_CHECK(ncclGetUniqueId(&id));
    store.set(store_key, std::string(reinterpret_cast<const char*>(&id), sizeof id));
  } else {
    const std::string bytes = store.get(store_key);
    DTRAIN_CHECK(bytes.size() == sizeof id, "nccl: the id under '", store_key, "' in store ",
                 store.address(), " has ", bytes.size(), " bytes; expected ", sizeof id);
    std::memcpy(&id, bytes.data(), sizeof id);
  }
  return std::shared_ptr<NcclCommunicator>(
      new NcclCommunicator(rank, size, join_clique(id, rank, size, device)));
}

std::shared_ptr<NcclCommunicator> NcclCommunicator::create(Communicator& host, int device) {
  ncclUniqueId id;
  static_assert(sizeof id % sizeof(int64_t) == 0, "the NCCL id travels as int64 words");
  Tensor words = zeros({static_cast<int64_t>(sizeof id / sizeof(int64_t))}, DType::kInt64);
  if (host.rank() == 0) {
    DTRAIN_NCCL_CHECK(ncclGetUniqueId(&id));
    std::memcpy(words.data_ptr(), &id, sizeof id);
  }
  host.broadcast(words, {0})->wait();
  std::memcpy(&id, words.data_ptr(), sizeof id);
  return std::shared_ptr<NcclCommunicator>(new NcclCommunicator(
      host.rank(), host.size(), join_clique(id, host.rank(), host.size(), device)));
}

std::vector<std::shared_ptr<NcclCommunicator>> NcclCommunicator::create_local(
    const std::vector<int>& devices) {
  const int n = static_cast<int>(devices.size());
  DTRAIN_CHECK(n >= 1, "nccl: create_local needs at least one device");
  std::vector<ncclComm_t> comms(n);
  DTRAIN_NCCL_CHECK(ncclCommInitAll(comms.data(), n, devices.data()));
  std::vector<std::shared_ptr<NcclCommunicator>> out;
  for (int r = 0; r < n; ++r) {
    auto impl = std::make_unique<Impl>();
    impl->comm = comms[r];
    impl->device = devices[r];
    DeviceScope scope(devices[r]);
    create_stream(*impl);
    out.push_back(std::shared_ptr<NcclCommunicator>(new NcclCommunicator(r, n, std::move(impl))));
  }
  return out;
}

std::vector<WorkPtr> NcclCommunicator::group_all_reduce(
    const std::vector<std::shared_ptr<NcclCommunicator>>& communicators,
    std::vector<Tensor>& tensors, const AllReduceOptions& opts) {
  DTRAIN_CHECK(communicators.size() == tensors.size(),
               "nccl group_all_reduce: ", communicators.size(), " communicators but ",
               tensors.size(), " tensors");
  for (size_t i = 0; i < tensors.size(); ++i) {
    check_device_tensor("group_all_reduce", tensors[i], communicators[i]->device());
  }
  for (const auto& c : communicators) {
    DeviceScope scope(c->impl_->device);
    wait_for_default_stream(*c->impl_);
  }
  DTRAIN_NCCL_CHECK(ncclGroupStart());
  for (size_t i = 0; i < tensors.size(); ++i) {
    Impl& impl = *communicators[i]->impl_;
    DTRAIN_NCCL_CHECK(ncclAllReduce(tensors[i].data_ptr(), tensors[i].data_ptr(),
                                    tensors[i].numel(), nccl_type(tensors[i].dtype(), "all_reduce"),
                                    nccl_op(opts.op), impl.comm, impl.stream));
  }
  DTRAIN_NCCL_CHECK(ncclGroupEnd());
  std::vector<WorkPtr> works;
  for (size_t i = 0; i < tensors.size(); ++i) {
    Impl& impl = *communicators[i]->impl_;
    CollectiveInfo info{++impl.sequence, "all_reduce(" + std::string(reduce_op_name(opts.op)) + ")",
                        tensors[i].dtype(), tensors[i].numel()};
    works.push_back(std::make_shared<NcclWork>(info, impl));
  }
  return works;
}

WorkPtr NcclCommunicator::all_reduce(Tensor& t, const AllReduceOptions& opts) {
  check_device_tensor("all_reduce", t, impl_->device);
  DeviceScope scope(impl_->device);
  wait_for_default_stream(*impl_);
  CollectiveInfo info{++impl_->sequence, "all_reduce(" + std::string(reduce_op_name(opts.op)) + ")",
                      t.dtype(), t.numel()};
  DTRAIN_NCCL_CHECK(ncclAllReduce(t.data_ptr(), t.data_ptr(), t.numel(),
                                  nccl_type(t.dtype(), "all_reduce"), nccl_op(opts.op), impl_->comm,
                                  impl_->stream));
  return std::make_shared<NcclWork>(info, *impl_);
}

WorkPtr NcclCommunicator::all_reduce_coalesced(std::vector<Tensor>& ts,
                                               const AllReduceOptions& opts) {
  DTRAIN_CHECK(!ts.empty(), "all_reduce_coalesced: no tensors");
  DeviceScope scope(impl_->device);
  wait_for_default_stream(*impl_);
  int64_t total = 0;
  DTRAIN_NCCL_CHECK(ncclGroupStart());
  for (Tensor& t : ts) {
    check_device_tensor("all_reduce_coalesced", t, impl_->device);
    DTRAIN_NCCL_CHECK(ncclAllReduce(t.data_ptr(), t.data_ptr(), t.numel(),
                                    nccl_type(t.dtype(), "all_reduce_coalesced"), nccl_op(opts.op),
                                    impl_->comm, impl_->stream));
    total += t.numel();
  }
  DTRAIN_NCCL_CHECK(ncclGroupEnd());
  CollectiveInfo info{++impl_->sequence,
                      "all_reduce_coalesced(" + std::string(reduce_op_name(opts.op)) + ", " +
                          std::to_string(ts.size()) + " tensors)",
                      ts[0].dtype(), total};
  return std::make_shared<NcclWork>(info, *impl_);
}

WorkPtr NcclCommunicator::broadcast(Tensor& t, const BroadcastOptions& opts) {
  check_device_tensor("broadcast", t, impl_->device);
  DeviceScope scope(impl_->device);
  wait_for_default_stream(*impl_);
  CollectiveInfo info{++impl_->sequence, "broadcast(root " + std::to_string(opts.root) + ")",
                      t.dtype(), t.numel()};
  DTRAIN_NCCL_CHECK(ncclBroadcast(t.data_ptr(), t.data_ptr(), t.numel(),
                                  nccl_type(t.dtype(), "broadcast"), opts.root, impl_->comm,
                                  impl_->stream));
  return std::make_shared<NcclWork>(info, *impl_);
}

WorkPtr NcclCommunicator::reduce(Tensor& t, const ReduceOptions& opts) {
  check_device_tensor("reduce", t, impl_->device);
  DeviceScope scope(impl_->device);
  wait_for_default_stream(*impl_);
  CollectiveInfo info{++impl_->sequence,
                      "reduce(" + std::string(reduce_op_name(opts.op)) + ", root " +
                          std::to_string(opts.root) + ")",
                      t.dtype(), t.numel()};
  DTRAIN_NCCL_CHECK(ncclReduce(t.data_ptr(), t.data_ptr(), t.numel(),
                               nccl_type(t.dtype(), "reduce"), nccl_op(opts.op), opts.root,
                               impl_->comm, impl_->stream));
  return std::make_shared<NcclWork>(info, *impl_);
}

WorkPtr NcclCommunicator::all_gather(const Tensor& in, Tensor& out, const AllGatherOptions&) {
  check_device_tensor("all_gather", in, impl_->device);
  check_device_tensor("all_gather", out, impl_->device);
  DTRAIN_CHECK(out.numel() == in.numel() * size() && out.dtype() == in.dtype(),
               "all_gather: output ", out.describe(), " must hold ", size(), " x ", in.describe());
  DeviceScope scope(impl_->device);
  wait_for_default_stream(*impl_);
  CollectiveInfo info{++impl_->sequence, "all_gather", in.dtype(), in.numel()};
  DTRAIN_NCCL_CHECK(ncclAllGather(in.data_ptr(), out.data_ptr(), in.numel(),
                                  nccl_type(in.dtype(), "all_gather"), impl_->comm, impl_->stream));
  return std::make_shared<NcclWork>(info, *impl_);
}

WorkPtr NcclCommunicator::reduce_scatter(const Tensor& in, Tensor& out,
                                         const ReduceScatterOptions& opts) {
  check_device_tensor("reduce_scatter", in, impl_->device);
  check_device_tensor("reduce_scatter", out, impl_->device);
  DTRAIN_CHECK(in.numel() == out.numel() * size() && out.dtype() == in.dtype(),
               "reduce_scatter: input ", in.describe(), " must hold ", size(), " x ",
               out.describe());
  DeviceScope scope(impl_->device);
  wait_for_default_stream(*impl_);
  CollectiveInfo info{++impl_->sequence,
                      "reduce_scatter(" + std::string(reduce_op_name(opts.op)) + ")", out.dtype(),
                      out.numel()};
  DTRAIN_NCCL_CHECK(ncclReduceScatter(in.data_ptr(), out.data_ptr(), out.numel(),
                                      nccl_type(out.dtype(), "reduce_scatter"), nccl_op(opts.op),
                                      impl_->comm, impl_->stream));
  return std::make_shared<NcclWork>(info, *impl_);
}

WorkPtr NcclCommunicator::barrier(const BarrierOptions&) {
  // NCCL has no barrier: an all-reduce of one element orders every rank's stream the same way.
  Tensor one = zeros({1}, DType::kFloat32, Device::cuda(impl_->device));
  AllReduceOptions opts;
  WorkPtr w = all_reduce(one, opts);
  return w;
}

WorkPtr NcclCommunicator::send(const Tensor& t, int peer, const SendRecvOptions&) {
  check_device_tensor("send", t, impl_->device);
  DeviceScope scope(impl_->device);
  wait_for_default_stream(*impl_);
  CollectiveInfo info{0, "send(to " + std::to_string(peer) + ")", t.dtype(), t.numel()};
  DTRAIN_NCCL_CHECK(ncclSend(t.data_ptr(), t.numel(), nccl_type(t.dtype(), "send"), peer,
                             impl_->comm, impl_->stream));
  return std::make_shared<NcclWork>(info, *impl_);
}

WorkPtr NcclCommunicator::recv(Tensor& t, int peer, const SendRecvOptions&) {
  check_device_tensor("recv", t, impl_->device);
  DeviceScope scope(impl_->device);
  wait_for_default_stream(*impl_);
  CollectiveInfo info{0, "recv(from " + std::to_string(peer) + ")", t.dtype(), t.numel()};
  DTRAIN_NCCL_CHECK(ncclRecv(t.data_ptr(), t.numel(), nccl_type(t.dtype(), "recv"), peer,
                             impl_->comm, impl_->stream));
  return std::make_shared<NcclWork>(info, *impl_);
}

}  // namespace dtrain::dist
