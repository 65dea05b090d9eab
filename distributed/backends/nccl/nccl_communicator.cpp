// The nccl backend. A collective is enqueued on the communicator's stream and returns at once; its
// Work records a CUDA event behind it. wait() does not block the host: it makes the device's
// legacy default stream, where every kernel runs, wait for that event, so the kernels and copies
// that use the result (DDP's copy-back, the optimiser step, a host read) are ordered after the
// collective while the host goes on queuing work. The timeout still holds: the waited collective
// is handed to the communicator's watch, a thread that polls its event and ncclCommGetAsyncError,
// and a collective past its deadline (or an NCCL error) aborts the communicator (ncclCommAbort),
// which releases the stream; the next use of the communicator on the issuing thread throws
// TimeoutError naming it, every later one DistError, never reaching the destroyed NCCL object.
#include "dtrain/distributed/backends/nccl/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <condition_variable>
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

/// A CUDA event shared by a Work and the watch, which may look at it after the Work is gone.
using SharedEvent = std::shared_ptr<CUevent_st>;

struct NcclCommunicator::Impl {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t inputs_ready = nullptr;  // recorded on the default stream before each collective
  int device = 0;
  int rank = 0, size = 1;
  bool nonblocking = false;  // joined through ncclCommInitRankConfig with blocking = 0
  uint64_t sequence = 0;
  /// Set once, by abort(). The issuing thread reads it before every NCCL call; the watch and
  /// wait() on other threads read it, and call into NCCL, under abort_mu.
  std::atomic<bool> aborted{false};
  mutable std::mutex abort_mu;
  std::string abort_reason;  // guarded by abort_mu
  /// The abort was a timeout that no call has reported yet: the next one throws TimeoutError.
  bool timeout_unreported = false;  // guarded by abort_mu

  /// A collective whose wait() handed it to the default stream, and when it must be done.
  struct Watched {
    SharedEvent done;
    Clock::time_point deadline;
    std::string what;  // "#12 all_reduce(sum) float32 x 1024 did not complete within 300000 ms"
  };
  std::mutex watch_mu;
  std::condition_variable watch_cv;
  std::vector<Watched> watched;  // guarded by watch_mu
  bool watch_stop = false;       // guarded by watch_mu
  std::thread watch_thread;      // started by the first watched collective

  ~Impl();
  /// "rank 1 of 4 on cuda:1", for messages.
  std::string where() const {
    return "rank " + std::to_string(rank) + " of " + std::to_string(size) +
           " on cuda:" + std::to_string(device);
  }
  /// Throws when the communicator was aborted: its NCCL object no longer exists. The first call
  /// after an abort for a timeout throws TimeoutError naming the late collective; the others
  /// DistError.
  void check_live(std::string_view op) {
    if (!aborted.load()) return;
    std::lock_guard lock(abort_mu);
    if (std::exchange(timeout_unreported, false)) {
      DTRAIN_THROW(TimeoutError, abort_reason, " on ", where(),
                   "; the NCCL communicator was aborted, so ", op, " cannot run");
    }
    DTRAIN_THROW(DistError, "nccl communicator aborted (", where(), ") after ", abort_reason, ": ",
                 op, " cannot run on it; a new communicator is needed (restart the job)");
  }
  /// check_live, after looking at the watched collectives itself, so that one already past its
  /// deadline is reported here whether or not the watch has seen it yet.
  void check_health(std::string_view op) {
    if (std::optional<std::string> late = sweep_watched()) abort(*late, /*timed_out=*/true);
    check_live(op);
  }
  /// ncclCommAbort, once; `reason` says what led to it. Holding abort_mu keeps wait() on another
  /// thread from querying the communicator while it is destroyed. `timed_out`: the next
  /// check_live reports `reason` as a TimeoutError.
  void abort(const std::string& reason, bool timed_out = false) {
    std::lock_guard lock(abort_mu);
    if (aborted.load()) return;
    abort_reason = reason;
    timeout_unreported = timed_out;
    aborted.store(true);
    if (comm != nullptr) ncclCommAbort(comm);
  }
  /// Hands a waited collective to the watch (starting it the first time).
  void watch(SharedEvent done, Clock::time_point deadline, std::string what) {
    {
      std::lock_guard lock(watch_mu);
      watched.push_back({std::move(done), deadline, std::move(what)});
      if (!watch_thread.joinable()) watch_thread = std::thread([this] { watch_loop(); });
    }
    watch_cv.notify_one();
  }
  /// Drops the watched collectives that completed; returns what the first one past its deadline
  /// was, if any.
  std::optional<std::string> sweep_watched() {
    std::lock_guard lock(watch_mu);
    const Clock::time_point now = Clock::now();
    std::optional<std::string> late;
    std::erase_if(watched, [&](const Watched& w) {
      // Any answer but "not ready" ends the watch of this event: a device fault surfaces at the
      // issuing thread's next CUDA call, with its own message.
      if (cudaEventQuery(w.done.get()) != cudaErrorNotReady) return true;
      if (now >= w.deadline && !late) late = w.what;
      return false;
    });
    return late;
  }
  void watch_loop();
};

namespace {

/// How long the destructor lets a nonblocking communicator finish before aborting it instead.
constexpr std::chrono::seconds kFinalizeTimeout{30};
/// How often the watch looks at the collectives handed to the default stream: often enough that
/// its list stays short, rarely enough to cost nothing next to a training step.
constexpr std::chrono::milliseconds kWatchPoll{2};

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

/// A deadline `timeout` from now; a timeout too long to add means none.
Clock::time_point deadline_after(Timeout timeout) {
  const Clock::time_point now = Clock::now();
  if (timeout >= std::chrono::duration_cast<Timeout>(Clock::time_point::max() - now)) {
    return Clock::time_point::max();
  }
  return now + timeout;
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
    cudaEvent_t event = nullptr;
    DTRAIN_CUDA_RT_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    event_ = SharedEvent(event, [](cudaEvent_t e) { cudaEventDestroy(e); });
    DTRAIN_CUDA_RT_CHECK(cudaEventRecord(event, impl_->stream));
    for (const Tensor& t : used) keep(t);
  }

  /// Orders the device's legacy default stream after the collective and returns without waiting
  /// on the host: every kernel and copy queued after this call sees the result, and a host read
  /// (to_vector, item) waits for it through that stream. The collective is watched until it
  /// completes; past `timeout` the communicator is aborted, and the next call on it throws
  /// TimeoutError. Throws at once when the communicator was aborted or NCCL reported an error.
  void wait(Timeout timeout) override {
    const std::string what = info_.describe() + ": wait()";
    impl_->check_health(what);
    {
      std::lock_guard lock(impl_->abort_mu);
      ncclResult_t async_error = ncclSuccess;
      if (!impl_->aborted.load()) {
        DTRAIN_NCCL_CHECK(ncclCommGetAsyncError(impl_->comm, &async_error));
      }
      if (async_error != ncclSuccess && async_error != ncclInProgress) {
        DTRAIN_THROW(DistError, info_.describe(), " on ", impl_->where(),
                     " failed in NCCL: ", ncclGetErrorString(async_error));
      }
    }
    impl_->check_live(what);  // aborted by the watch since check_health
    if (is_completed() || handed_to_stream_.exchange(true)) return;
    cuda::DeviceGuard guard(impl_->device);
    DTRAIN_CUDA_RT_CHECK(cudaStreamWaitEvent(cudaStreamLegacy, event_.get(), 0));
    impl_->watch(
        event_, deadline_after(timeout),
        info_.describe() + " did not complete within " + std::to_string(timeout.count()) + " ms");
  }
  bool is_completed() const override {
    const cudaError_t status = cudaEventQuery(event_.get());
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
  SharedEvent event_;
  std::atomic<bool> handed_to_stream_{false};  // wait() made the default stream wait already
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

void NcclCommunicator::Impl::watch_loop() {
  try {
    cuda::set_device(device);  // no context on GPU 0 for this thread (CUDA 12)
  } catch (const std::exception&) {
    // A faulted device: event queries then fail, which ends their watch.
  }
  std::unique_lock lock(watch_mu);
  while (!watch_stop) {
    if (watched.empty()) {
      watch_cv.wait(lock, [&] { return watch_stop || !watched.empty(); });
      continue;
    }
    lock.unlock();
    std::optional<std::string> failure;
    bool timed_out = false;
    if (std::optional<std::string> late = sweep_watched()) {
      failure = std::move(late);
      timed_out = true;
    } else {
      std::lock_guard abort_lock(abort_mu);
      ncclResult_t async_error = ncclSuccess;
      if (!aborted.load() && ncclCommGetAsyncError(comm, &async_error) == ncclSuccess &&
          async_error != ncclSuccess && async_error != ncclInProgress) {
        failure = std::string("NCCL reported ") + ncclGetErrorString(async_error) +
                  " while a collective was in flight";
      }
    }
    // Aborting makes NCCL's kernels return, so the default stream waiting behind them (and a host
    // blocked on it) goes on; the issuing thread's next call reports why.
    if (failure) abort(*failure, timed_out);
    lock.lock();
    if (aborted.load()) watched.clear();
    watch_cv.wait_for(lock, kWatchPoll, [&] { return watch_stop; });
  }
}

NcclCommunicator::Impl::~Impl() {
  {
    std::lock_guard lock(watch_mu);
    watch_stop = true;
  }
  watch_cv.notify_all();
  if (watch_thread.joinable()) watch_thread.join();
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

namespace {
/// Rank 0's new NCCL id on every rank of `host`.
ncclUniqueId id_through(Communicator& host) {
  ncclUniqueId id;
  static_assert(sizeof id % sizeof(int64_t) == 0, "the NCCL id travels as int64 words");
  Tensor words = zeros({static_cast<int64_t>(sizeof id / sizeof(int64_t))}, DType::kInt64);
  if (host.rank() == 0) {
    DTRAIN_NCCL_CHECK(ncclGetUniqueId(&id));
    std::memcpy(words.data_ptr(), &id, sizeof id);
  }
  host.broadcast(words, {0})->wait();
  std::memcpy(&id, words.data_ptr(), sizeof id);
  return id;
}
}  // namespace

std::shared_ptr<NcclCommunicator> NcclCommunicator::create(Communicator& host, int device,
                                                           Timeout init_timeout) {
  const ncclUniqueId id = id_through(host);
  return std::shared_ptr<NcclCommunicator>(new NcclCommunicator(
      host.rank(), host.size(), join_clique(id, host.rank(), host.size(), device, init_timeout)));
}

std::vector<std::shared_ptr<NcclCommunicator>> NcclCommunicator::create_across_processes(
    Communicator& host, const std::vector<int>& devices, Timeout init_timeout) {
  const int n = static_cast<int>(devices.size());
  DTRAIN_CHECK(n >= 1, "nccl: create_across_processes needs at least one device");
  // The ranks below assume the same count everywhere: the largest n and the largest -n agree
  // only then. Checked on the host before any process touches NCCL.
  Tensor counts({2}, DType::kInt64);
  counts.data<int64_t>()[0] = n;
  counts.data<int64_t>()[1] = -n;
  host.all_reduce(counts, {ReduceOp::kMax, init_timeout})->wait(init_timeout);
  const int64_t most = counts.data<int64_t>()[0], fewest = -counts.data<int64_t>()[1];
  DTRAIN_CHECK(most == fewest, "nccl: every process must drive the same number of GPUs; process ",
               host.rank(), " of ", host.size(), " drives ", n, " but some drive ", fewest,
               " and some ", most, " (strategy.devices must be the same in every process)");
  const ncclUniqueId id = id_through(host);
  const int size = host.size() * n;
  const int first_rank = host.rank() * n;
  std::vector<std::shared_ptr<Impl>> impls;
  for (int i = 0; i < n; ++i) {
    auto impl = std::make_shared<Impl>();
    impl->device = devices[i];
    impl->rank = first_rank + i;
    impl->size = size;
    impl->nonblocking = true;
    cuda::DeviceGuard guard(devices[i]);
    create_stream(*impl);
    impls.push_back(std::move(impl));
  }
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  try {
    // One process joins a clique once per device: in one group, or the first join would wait
    // for this process's other ranks, which it has not started yet.
    GroupGuard group;
    for (int i = 0; i < n; ++i) {
      cuda::DeviceGuard guard(devices[i]);
      const ncclResult_t started =
          ncclCommInitRankConfig(&impls[i]->comm, size, id, impls[i]->rank, &config);
      if (started != ncclInProgress) DTRAIN_NCCL_CHECK(started);
    }
    const ncclResult_t ended = group.end();
    for (const auto& impl : impls) {
      settle(*impl, ended, "ncclCommInitRankConfig (joining the clique, one rank per device)",
             init_timeout, std::chrono::milliseconds(1));
    }
  } catch (...) {
    for (const auto& impl : impls) impl->abort("joining the clique failed");
    throw;
  }
  std::vector<std::shared_ptr<NcclCommunicator>> out;
  for (int i = 0; i < n; ++i) {
    out.push_back(
        std::shared_ptr<NcclCommunicator>(new NcclCommunicator(first_rank + i, size, impls[i])));
  }
  return out;
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
    communicators[i]->impl_->check_health("group_all_reduce");
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
  impl_->check_health("all_reduce");
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
  impl_->check_health("all_reduce_coalesced");
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
  impl_->check_health("broadcast");
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
  impl_->check_health("reduce");
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
  impl_->check_health("all_gather");
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
  impl_->check_health("reduce_scatter");
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
  impl_->check_health("send");
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
  impl_->check_health("recv");
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
