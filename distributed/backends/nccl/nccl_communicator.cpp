// The nccl backend. A collective is enqueued on the communicator's stream and returns at once; its
// Work records a CUDA event behind it. wait() polls the event and ncclCommGetAsyncError, and on
// timeout aborts the communicator (ncclCommAbort) so no rank stays stuck inside NCCL; from then on
// every use of the communicator throws instead of reaching the destroyed NCCL object.
#include "dtrain/distributed/backends/nccl/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>

#include "dtrain/distributed/reduce.h"
#include "dtrain/tensor/check.h"
#include "dtrain/tensor/cuda/cuda_backend.h"

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

using Clock = std::chrono::steady_clock;

struct NcclCommunicator::Impl {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t inputs_ready = nullptr;  // recorded on the default stream before each collective
  int device = 0;
  int rank = 0, size = 1;
  bool nonblocking = false;  // joined through ncclCommInitRankConfig with blocking = 0
  uint64_t sequence = 0;
  /// Set once, by abort(). The issuing thread reads it before every NCCL call; wait() may run on
  /// another thread, so it reads it, and calls into NCCL, under abort_mu.
  std::atomic<bool> aborted{false};
  mutable std::mutex abort_mu;
  std::string abort_reason;  // guarded by abort_mu

  ~Impl();
  /// "rank 1 of 4 on cuda:1", for messages.
  std::string where() const {
    return "rank " + std::to_string(rank) + " of " + std::to_string(size) +
           " on cuda:" + std::to_string(device);
  }
  /// Throws DistError when the communicator was aborted: its NCCL object no longer exists.
  void check_live(std::string_view op) const {
    if (!aborted.load()) return;
    std::lock_guard lock(abort_mu);
    DTRAIN_THROW(DistError, "nccl communicator aborted (", where(), ") after ", abort_reason, ": ",
                 op, " cannot run on it; a new communicator is needed (restart the job)");
  }
  /// ncclCommAbort, once; `reason` says what led to it. Holding abort_mu keeps wait() on another
  /// thread from querying the communicator while it is destroyed.
  void abort(const std::string& reason) {
    std::lock_guard lock(abort_mu);
    if (aborted.load()) return;
    abort_reason = reason;
    aborted.store(true);
    if (comm != nullptr) ncclCommAbort(comm);
  }
};

namespace {

/// How long the destructor lets a nonblocking communicator finish before aborting it instead.
constexpr std::chrono::seconds kFinalizeTimeout{30};

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

/// Waits out ncclInProgress: a nonblocking communicator finishes a call in the background, and
/// nothing may be enqueued behind it (not even the Work's event) before it has. At `limit` the
/// communicator is aborted and TimeoutError thrown; any other result than success is a DistError.
/// `pause` between polls: zero yields (collectives settle in microseconds); joining a clique can
/// take seconds while peers start, and a busy loop would take a core from them.
void settle(NcclCommunicator::Impl& impl, ncclResult_t result, const char* what, Timeout limit,
            std::chrono::microseconds pause = std::chrono::microseconds(0)) {
  const auto deadline = Clock::now() + limit;
  while (result == ncclInProgress) {
    if (Clock::now() >= deadline) {
      impl.abort(std::string(what) + " did not finish within " + std::to_string(limit.count()) +
                 " ms");
      DTRAIN_THROW(TimeoutError, "nccl: ", what, " on ", impl.where(), " did not finish within ",
                   limit.count(), " ms; the communicator was aborted",
                   impl.sequence == 0 ? " (a peer that never joined the clique? NCCL_DEBUG=INFO "
                                        "shows which ranks it reached)"
                                      : "");
    }
    if (pause.count() > 0) {
      std::this_thread::sleep_for(pause);
    } else {
      std::this_thread::yield();
    }
    ncclResult_t state = ncclInProgress;
    const ncclResult_t queried = ncclCommGetAsyncError(impl.comm, &state);
    result = queried != ncclSuccess ? queried : state;
  }
  if (result != ncclSuccess) {
    DTRAIN_THROW(DistError, "NCCL error ", static_cast<int>(result), " (",
                 ncclGetErrorString(result), ") in ", what, " on ", impl.where());
  }
}

/// ncclGroupStart for a scope. The group is ended on every path, also when an enqueue inside it
/// throws: an open group would swallow this thread's next NCCL call, which then never launches.
class GroupGuard {
 public:
  GroupGuard() { DTRAIN_NCCL_CHECK(ncclGroupStart()); }
  ~GroupGuard() {
    if (open_) ncclGroupEnd();
  }
  GroupGuard(const GroupGuard&) = delete;
  GroupGuard& operator=(const GroupGuard&) = delete;
  ncclResult_t end() {
    open_ = false;
    return ncclGroupEnd();
  }

 private:
  bool open_ = true;
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
  /// Right after the collective was enqueued: its event, and the tensors it reads or writes, which
  /// stay alive with this Work and whose blocks the allocator holds back until the stream is past
  /// them (a caller may drop a tensor, or the Work, before the collective ran).
  NcclWork(CollectiveInfo info, std::shared_ptr<NcclCommunicator::Impl> impl,
           const std::vector<Tensor>& used)
      : info_(std::move(info)), impl_(std::move(impl)) {
    cuda::DeviceGuard guard(impl_->device);
    DTRAIN_CUDA_RT_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
    DTRAIN_CUDA_RT_CHECK(cudaEventRecord(event_, impl_->stream));
    for (const Tensor& t : used) keep(t);
  }
  ~NcclWork() override {
    if (event_) cudaEventDestroy(event_);
  }

  void wait(Timeout timeout) override {
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      if (is_completed()) return;
      {
        std::lock_guard lock(impl_->abort_mu);
        if (impl_->aborted.load()) {
          DTRAIN_THROW(DistError, info_.describe(), " on ", impl_->where(),
                       ": nccl communicator aborted (after ", impl_->abort_reason,
                       ") before this collective completed; its result is undefined");
        }
        ncclResult_t async_error = ncclSuccess;
        DTRAIN_NCCL_CHECK(ncclCommGetAsyncError(impl_->comm, &async_error));
        if (async_error != ncclSuccess && async_error != ncclInProgress) {
          DTRAIN_THROW(DistError, info_.describe(), " on ", impl_->where(),
                       " failed in NCCL: ", ncclGetErrorString(async_error));
        }
      }
      if (Clock::now() >= deadline) {
        // A collective stuck in NCCL cannot be cancelled; aborting the communicator releases the
        // stream so the process can report and exit instead of hanging.
        impl_->abort(info_.describe() + " timed out after " + std::to_string(timeout.count()) +
                     " ms");
        DTRAIN_THROW(TimeoutError, info_.describe(), " did not complete within ", timeout.count(),
                     " ms on ", impl_->where(), "; the NCCL communicator was aborted");
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
  void keep(const Tensor& t) {
    cuda::record_stream(*t.storage(), impl_->stream);
    storages_.push_back(t.storage());
  }

  CollectiveInfo info_;
  std::shared_ptr<NcclCommunicator::Impl> impl_;
  cudaEvent_t event_ = nullptr;
  std::vector<std::shared_ptr<Storage>> storages_;
};

/// This rank's place in the clique `id` names, on cuda:`device`, with its stream. Nonblocking:
/// ncclCommInitRank would wait forever for a peer that never comes; here that is a TimeoutError
/// after `init_timeout`.
std::shared_ptr<NcclCommunicator::Impl> join_clique(const ncclUniqueId& id, int rank, int size,
                                                    int device, Timeout init_timeout) {
  auto impl = std::make_shared<NcclCommunicator::Impl>();
  impl->device = device;
  impl->rank = rank;
  impl->size = size;
  impl->nonblocking = true;
  cuda::DeviceGuard guard(device);
  create_stream(*impl);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  try {
    settle(*impl, ncclCommInitRankConfig(&impl->comm, size, id, rank, &config),
           "ncclCommInitRankConfig (joining the clique)", init_timeout,
           std::chrono::milliseconds(1));
  } catch (...) {
    impl->abort("joining the clique failed");
    throw;
  }
  return impl;
}

void check_device_tensor(const char* op, const Tensor& t, int device) {
  DTRAIN_CHECK(t.defined() && t.device() == Device::cuda(device), op, ": tensor ",
               t.defined() ? t.describe() : "undefined", " must be on cuda:", device,
               " for this nccl communicator");
}

}  // namespace

NcclCommunicator::Impl::~Impl() {
  std::optional<cuda::DeviceGuard> guard;
  try {
    guard.emplace(device);
  } catch (const std::exception&) {
    // A faulted device: release what can still be released.
  }
  if (comm != nullptr && !aborted.load()) {
    ncclResult_t done = ncclSuccess;
    if (nonblocking) {
      // Outstanding work finishes in the background; bounded, so a dead peer cannot hold the
      // process at exit.
      done = ncclCommFinalize(comm);
      const auto deadline = Clock::now() + kFinalizeTimeout;
      while (done == ncclInProgress && Clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        ncclResult_t state = ncclInProgress;
        done = ncclCommGetAsyncError(comm, &state) == ncclSuccess ? state : ncclInternalError;
      }
    }
    if (done == ncclSuccess) {
      ncclCommDestroy(comm);
    } else {
      ncclCommAbort(comm);
    }
  }
  if (stream) cudaStreamDestroy(stream);
  if (inputs_ready) cudaEventDestroy(inputs_ready);
}

NcclCommunicator::NcclCommunicator(int rank, int size, std::shared_ptr<Impl> impl)
    : Communicator(rank, size), impl_(std::move(impl)) {}

NcclCommunicator::~NcclCommunicator() = default;

int NcclCommunicator::device() const { return impl_->device; }

std::shared_ptr<NcclCommunicator> NcclCommunicator::create(int rank, int size, int device,
                                                           StoreClient& store,
                                                           const std::string& store_key,
                                                           Timeout init_timeout) {
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
      new NcclCommunicator(rank, size, join_clique(id, rank, size, device, init_timeout)));
}

std::shared_ptr<NcclCommunicator> NcclCommunicator::create(Communicator& host, int device,
                                                           Timeout init_timeout) {
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
      host.rank(), host.size(), join_clique(id, host.rank(), host.size(), device, init_timeout)));
}

std::vector<std::shared_ptr<NcclCommunicator>> NcclCommunicator::create_local(
    const std::vector<int>& devices) {
  const int n = static_cast<int>(devices.size());
  DTRAIN_CHECK(n >= 1, "nccl: create_local needs at least one device");
  // All ranks are this process's threads, present by construction: no peer can fail to arrive,
  // so the blocking ncclCommInitAll is safe here.
  std::vector<ncclComm_t> comms(n);
  DTRAIN_NCCL_CHECK(ncclCommInitAll(comms.data(), n, devices.data()));
  std::vector<std::shared_ptr<NcclCommunicator>> out;
  for (int r = 0; r < n; ++r) {
    auto impl = std::make_shared<Impl>();
    impl->comm = comms[r];
    impl->device = devices[r];
    impl->rank = r;
    impl->size = n;
    cuda::DeviceGuard guard(devices[r]);
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
  // Everything that can throw is checked before ncclGroupStart.
  std::vector<ncclDataType_t> types;
  for (size_t i = 0; i < tensors.size(); ++i) {
    communicators[i]->impl_->check_live("group_all_reduce");
    check_device_tensor("group_all_reduce", tensors[i], communicators[i]->device());
    types.push_back(nccl_type(tensors[i].dtype(), "group_all_reduce"));
  }
  for (const auto& c : communicators) {
    cuda::DeviceGuard guard(c->impl_->device);
    wait_for_default_stream(*c->impl_);
  }
  {
    GroupGuard group;
    for (size_t i = 0; i < tensors.size(); ++i) {
      Impl& impl = *communicators[i]->impl_;
      settle(impl,
             ncclAllReduce(tensors[i].data_ptr(), tensors[i].data_ptr(), tensors[i].numel(),
                           types[i], nccl_op(opts.op), impl.comm, impl.stream),
             "ncclAllReduce (in a group)", opts.timeout);
    }
    const ncclResult_t ended = group.end();
    for (const auto& c : communicators) settle(*c->impl_, ended, "ncclGroupEnd", opts.timeout);
  }
  std::vector<WorkPtr> works;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const std::shared_ptr<Impl>& impl = communicators[i]->impl_;
    CollectiveInfo info{++impl->sequence,
                        "all_reduce(" + std::string(reduce_op_name(opts.op)) + ")",
                        tensors[i].dtype(), tensors[i].numel()};
    works.push_back(std::make_shared<NcclWork>(info, impl, std::vector<Tensor>{tensors[i]}));
  }
  return works;
}

WorkPtr NcclCommunicator::all_reduce(Tensor& t, const AllReduceOptions& opts) {
  impl_->check_live("all_reduce");
  check_device_tensor("all_reduce", t, impl_->device);
  const ncclDataType_t type = nccl_type(t.dtype(), "all_reduce");
  cuda::DeviceGuard guard(impl_->device);
  wait_for_default_stream(*impl_);
  CollectiveInfo info{++impl_->sequence, "all_reduce(" + std::string(reduce_op_name(opts.op)) + ")",
                      t.dtype(), t.numel()};
  settle(*impl_,
         ncclAllReduce(t.data_ptr(), t.data_ptr(), t.numel(), type, nccl_op(opts.op), impl_->comm,
                       impl_->stream),
         "ncclAllReduce", opts.timeout);
  return std::make_shared<NcclWork>(info, impl_, std::vector<Tensor>{t});
}

WorkPtr NcclCommunicator::all_reduce_coalesced(std::vector<Tensor>& ts,
                                               const AllReduceOptions& opts) {
  DTRAIN_CHECK(!ts.empty(), "all_reduce_coalesced: no tensors");
  impl_->check_live("all_reduce_coalesced");
  // Everything that can throw is checked before ncclGroupStart.
  std::vector<ncclDataType_t> types;
  int64_t total = 0;
  for (const Tensor& t : ts) {
    check_device_tensor("all_reduce_coalesced", t, impl_->device);
    types.push_back(nccl_type(t.dtype(), "all_reduce_coalesced"));
    total += t.numel();
  }
  cuda::DeviceGuard guard(impl_->device);
  wait_for_default_stream(*impl_);
  {
    GroupGuard group;
    for (size_t i = 0; i < ts.size(); ++i) {
      settle(*impl_,
             ncclAllReduce(ts[i].data_ptr(), ts[i].data_ptr(), ts[i].numel(), types[i],
                           nccl_op(opts.op), impl_->comm, impl_->stream),
             "ncclAllReduce (in a group)", opts.timeout);
    }
    settle(*impl_, group.end(), "ncclGroupEnd", opts.timeout);
  }
  CollectiveInfo info{++impl_->sequence,
                      "all_reduce_coalesced(" + std::string(reduce_op_name(opts.op)) + ", " +
                          std::to_string(ts.size()) + " tensors)",
                      ts[0].dtype(), total};
  return std::make_shared<NcclWork>(info, impl_, ts);
}

WorkPtr NcclCommunicator::broadcast(Tensor& t, const BroadcastOptions& opts) {
  impl_->check_live("broadcast");
  check_device_tensor("broadcast", t, impl_->device);
  const ncclDataType_t type = nccl_type(t.dtype(), "broadcast");
  cuda::DeviceGuard guard(impl_->device);
  wait_for_default_stream(*impl_);
  CollectiveInfo info{++impl_->sequence, "broadcast(root " + std::to_string(opts.root) + ")",
                      t.dtype(), t.numel()};
  settle(*impl_,
         ncclBroadcast(t.data_ptr(), t.data_ptr(), t.numel(), type, opts.root, impl_->comm,
                       impl_->stream),
         "ncclBroadcast", opts.timeout);
  return std::make_shared<NcclWork>(info, impl_, std::vector<Tensor>{t});
}

WorkPtr NcclCommunicator::reduce(Tensor& t, const ReduceOptions& opts) {
  impl_->check_live("reduce");
  check_device_tensor("reduce", t, impl_->device);
  const ncclDataType_t type = nccl_type(t.dtype(), "reduce");
  cuda::DeviceGuard guard(impl_->device);
  wait_for_default_stream(*impl_);
  CollectiveInfo info{++impl_->sequence,
                      "reduce(" + std::string(reduce_op_name(opts.op)) + ", root " +
                          std::to_string(opts.root) + ")",
                      t.dtype(), t.numel()};
  settle(*impl_,
         ncclReduce(t.data_ptr(), t.data_ptr(), t.numel(), type, nccl_op(opts.op), opts.root,
                    impl_->comm, impl_->stream),
         "ncclReduce", opts.timeout);
  return std::make_shared<NcclWork>(info, impl_, std::vector<Tensor>{t});
}

WorkPtr NcclCommunicator::all_gather(const Tensor& in, Tensor& out, const AllGatherOptions& opts) {
  impl_->check_live("all_gather");
  check_device_tensor("all_gather", in, impl_->device);
  check_device_tensor("all_gather", out, impl_->device);
  DTRAIN_CHECK(out.numel() == in.numel() * size() && out.dtype() == in.dtype(),
               "all_gather: output ", out.describe(), " must hold ", size(), " x ", in.describe());
  const ncclDataType_t type = nccl_type(in.dtype(), "all_gather");
  cuda::DeviceGuard guard(impl_->device);
  wait_for_default_stream(*impl_);
  CollectiveInfo info{++impl_->sequence, "all_gather", in.dtype(), in.numel()};
  settle(*impl_,
         ncclAllGather(in.data_ptr(), out.data_ptr(), in.numel(), type, impl_->comm, impl_->stream),
         "ncclAllGather", opts.timeout);
  return std::make_shared<NcclWork>(info, impl_, std::vector<Tensor>{in, out});
}

WorkPtr NcclCommunicator::reduce_scatter(const Tensor& in, Tensor& out,
                                         const ReduceScatterOptions& opts) {
  impl_->check_live("reduce_scatter");
  check_device_tensor("reduce_scatter", in, impl_->device);
  check_device_tensor("reduce_scatter", out, impl_->device);
  DTRAIN_CHECK(in.numel() == out.numel() * size() && out.dtype() == in.dtype(),
               "reduce_scatter: input ", in.describe(), " must hold ", size(), " x ",
               out.describe());
  const ncclDataType_t type = nccl_type(out.dtype(), "reduce_scatter");
  cuda::DeviceGuard guard(impl_->device);
  wait_for_default_stream(*impl_);
  CollectiveInfo info{++impl_->sequence,
                      "reduce_scatter(" + std::string(reduce_op_name(opts.op)) + ")", out.dtype(),
                      out.numel()};
  settle(*impl_,
         ncclReduceScatter(in.data_ptr(), out.data_ptr(), out.numel(), type, nccl_op(opts.op),
                           impl_->comm, impl_->stream),
         "ncclReduceScatter", opts.timeout);
  return std::make_shared<NcclWork>(info, impl_, std::vector<Tensor>{in, out});
}

WorkPtr NcclCommunicator::barrier(const BarrierOptions& opts) {
  // NCCL has no barrier: an all-reduce of one element orders every rank's stream the same way.
  // The Work it returns keeps `one` alive, and the allocator holds its block back until NCCL's
  // stream is past it.
  Tensor one = zeros({1}, DType::kFloat32, Device::cuda(impl_->device));
  AllReduceOptions ar;
  ar.timeout = opts.timeout;
  return all_reduce(one, ar);
}

WorkPtr NcclCommunicator::send(const Tensor& t, int peer, const SendRecvOptions& opts) {
  impl_->check_live("send");
  check_device_tensor("send", t, impl_->device);
  const ncclDataType_t type = nccl_type(t.dtype(), "send");
  cuda::DeviceGuard guard(impl_->device);
  wait_for_default_stream(*impl_);
  CollectiveInfo info{0, "send(to " + std::to_string(peer) + ")", t.dtype(), t.numel()};
  settle(*impl_, ncclSend(t.data_ptr(), t.numel(), type, peer, impl_->comm, impl_->stream),
         "ncclSend", opts.timeout);
  return std::make_shared<NcclWork>(info, impl_, std::vector<Tensor>{t});
}

WorkPtr NcclCommunicator::recv(Tensor& t, int peer, const SendRecvOptions& opts) {
  impl_->check_live("recv");
  check_device_tensor("recv", t, impl_->device);
  const ncclDataType_t type = nccl_type(t.dtype(), "recv");
  cuda::DeviceGuard guard(impl_->device);
  wait_for_default_stream(*impl_);
  CollectiveInfo info{0, "recv(from " + std::to_string(peer) + ")", t.dtype(), t.numel()};
  settle(*impl_, ncclRecv(t.data_ptr(), t.numel(), type, peer, impl_->comm, impl_->stream),
         "ncclRecv", opts.timeout);
  return std::make_shared<NcclWork>(info, impl_, std::vector<Tensor>{t});
}

}  // namespace dtrain::dist
