// The queue, the Work objects and the argument checks shared by host-memory backends.
#include "dtrain/distributed/host_communicator.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "dtrain/distributed/reduce.h"
#include "dtrain/distributed/shared_memory_group.h"
#include "dtrain/tensor/check.h"
#include "dtrain/tensor/hash.h"

namespace dtrain::dist {
namespace {

/// The latest collective of this process, for heartbeats and failure reports.
struct ProgressRecord {
  std::mutex mu;
  std::string text = "no collective yet";
  bool running = false;
};

ProgressRecord& progress_record() {
  static ProgressRecord* r = new ProgressRecord();  // leaked: worker threads may outlive statics
  return *r;
}

void note_progress(std::string_view backend, int rank, const CollectiveInfo& info, bool running) {
  if (info.sequence == 0) return;  // point-to-point
  ProgressRecord& r = progress_record();
  std::lock_guard lock(r.mu);
  r.running = running;
  if (running) {
    r.text = info.describe();
    r.text += " (";
    r.text += backend;
    r.text += " rank " + std::to_string(rank) + ")";
  }
}

/// The communicator whose collective this thread is running, if any: a collective that waits on
/// another one of its communicator must not try to run it itself.
thread_local const void* running_on_this_thread = nullptr;
/// Set on communicators' worker threads, which run collectives nobody waits for yet.
thread_local bool is_worker_thread = false;

/// How long a collective's thread spins for its peers in shared memory before sleeping: a thread
/// waiting for the result may spin; the worker, running it while the caller computes (overlap),
/// should give the core back soon.
std::chrono::microseconds waiting_spin() {
  return is_worker_thread ? std::chrono::microseconds(50) : std::chrono::microseconds(1000);
}

/// How long a timed-out wait() waits on for the backend's own report (longer than the watchdog's
/// poll, so the watchdog's report comes first too).
constexpr Timeout kBackendReportGrace{1000};

class QueuedWork final : public Work {
 public:
  /// `help` runs the communicator's oldest queued collective on the calling thread when no
  /// other thread is running one (false when it could not).
  QueuedWork(CollectiveInfo info, std::function<bool()> help)
      : info_(std::move(info)), help_(std::move(help)) {}

  void wait(Timeout timeout) override {
    // A waiter that runs the queued collectives itself (in order, one thread at a time) saves
    // waking the worker thread and being woken by it: two thread switches per step.
    while (!finished_.load(std::memory_order_acquire) && help_()) {
    }
    spin_until([&] { return finished_.load(std::memory_order_acquire); });
    std::unique_lock lock(mu_);
    // The backend bounds each step of a running collective by the same timeout and then names the
    // ranks it still waits for; a step that began after this wait ends a little later. Give that
    // report (or the watchdog's) a moment before this one, which can name nobody.
    const Timeout grace = std::min(timeout, kBackendReportGrace);
    if (!cv_.wait_for(lock, timeout, [&] { return done_; }) &&
        !cv_.wait_for(lock, grace, [&] { return done_; })) {
      DTRAIN_THROW(TimeoutError, info_.describe(), " did not complete within ", timeout.count(),
                   " ms");
    }
    if (error_) std::rethrow_exception(error_);
  }
  bool is_completed() const override {
    std::lock_guard lock(mu_);
    return done_;
  }
  const CollectiveInfo& info() const override { return info_; }

  void finish(std::exception_ptr error) {
    {
      std::lock_guard lock(mu_);
      done_ = true;
      error_ = std::move(error);
    }
    finished_.store(true, std::memory_order_release);
    cv_.notify_all();
  }

 private:
  CollectiveInfo info_;
  std::function<bool()> help_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::atomic<bool> finished_{false};  // done_, readable without the lock while spinning
  std::exception_ptr error_;
};

void check_host_tensor(const char* op, const Tensor& t, const char* what) {
  DTRAIN_CHECK(t.defined(), op, ": ", what, " is an undefined tensor");
  DTRAIN_CHECK(t.device().is_cpu(), op, ": ", what, " ", t.describe(),
               " must be in host memory for this backend (use the nccl backend for GPU tensors)");
  DTRAIN_CHECK(is_collective_dtype(t.dtype()), op, ": ", what, " has dtype ", dtype_name(t.dtype()),
               "; collectives support float32, float64, float16, bfloat16, int32 and int64");
}

}  // namespace

std::string CollectiveInfo::describe() const {
  std::ostringstream os;
  os << "collective #" << sequence << " " << kind << " " << dtype_name(dtype) << " x " << count;
  return os.str();
}

HostCommunicator::HostCommunicator(int rank, int size) : Communicator(rank, size) {
  DTRAIN_CHECK(size >= 1 && rank >= 0 && rank < size, "communicator: rank ", rank,
               " is outside a group of size ", size);
  const char* debug = std::getenv("DTRAIN_DISTRIBUTED_DEBUG");
  debug_checks_ = debug != nullptr && std::string(debug) != "0" && std::string(debug) != "";
  // The ring among hosts runs inside an all_reduce, on the thread running it: it calls the
  // blocking primitives directly (a queued send would wait behind that very all_reduce).
  const SharedMemoryGroup::Send send = [this](const Tensor& t, int peer, int tag,
                                              const CollectiveInfo& info, Timeout timeout) {
    run_send(t, peer, tag, info, timeout);
  };
  const SharedMemoryGroup::Recv recv = [this](Tensor& t, int peer, int tag,
                                              const CollectiveInfo& info, Timeout timeout) {
    run_recv(t, peer, tag, info, timeout);
  };
  shared_memory_ = std::make_unique<SharedMemoryGroup>(*this, send, recv);
  // The staging slot is negotiated inside an all-reduce, by the thread running it.
  staging_group_ = std::make_unique<SharedMemoryGroup>(
      *this, send, recv,
      SharedMemoryGroup::Negotiation{[this](const Tensor& in, Tensor& out) {
                                       run_all_gather(in, out, *staging_info_, staging_timeout_);
                                     },
                                     [this](Tensor& t) {
                                       run_all_reduce(t, ReduceOp::kMin, *staging_info_,
                                                      staging_timeout_);
                                     }});
}

namespace {
// A call's fingerprint for the debug check: sequence, dtype, count and the kind's text.
constexpr int kFingerprintWords = 16;
constexpr size_t kKindBytes = (kFingerprintWords - 3) * sizeof(int64_t);

Tensor fingerprint(const CollectiveInfo& info) {
  Tensor t = zeros({kFingerprintWords}, DType::kInt64);
  int64_t* p = t.data<int64_t>();
  p[0] = static_cast<int64_t>(info.sequence);
  p[1] = static_cast<int64_t>(info.dtype);
  p[2] = info.count;
  std::memcpy(p + 3, info.kind.data(), std::min(info.kind.size(), kKindBytes));
  return t;
}

CollectiveInfo from_fingerprint(const int64_t* p) {
  CollectiveInfo info;
  info.sequence = static_cast<uint64_t>(p[0]);
  info.dtype = static_cast<DType>(p[1]);
  info.count = p[2];
  const char* text = reinterpret_cast<const char*>(p + 3);
  info.kind.assign(text, strnlen(text, kKindBytes));
  return info;
}
}  // namespace

void HostCommunicator::verify_same_call(const CollectiveInfo& info, Timeout timeout) {
  Tensor mine = fingerprint(info);
  Tensor all = zeros({kFingerprintWords * size()}, DType::kInt64);
  CollectiveInfo check;
  check.kind = "debug check before " + info.kind;
  check.dtype = DType::kInt64;
  check.count = kFingerprintWords;
  run_all_gather(mine, all, check, timeout);
  const int64_t* rows = all.data<int64_t>();
  bool same = true;
  for (int r = 0; r < size(); ++r) {
    same = same && std::memcmp(rows + r * kFingerprintWords, mine.data<int64_t>(),
                               kFingerprintWords * sizeof(int64_t)) == 0;
  }
  if (same) return;
  std::ostringstream os;
  os << "ranks called different collectives (DTRAIN_DISTRIBUTED_DEBUG):";
  for (int r = 0; r < size(); ++r) {
    os << "\n  rank " << r << ": " << from_fingerprint(rows + r * kFingerprintWords).describe();
  }
  DTRAIN_THROW(ValueError, os.str());
}

HostCommunicator::~HostCommunicator() { stop_worker(); }

void HostCommunicator::start_worker() {
  worker_ = std::thread([this] { worker_loop(); });
}

void HostCommunicator::stop_worker() {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

void HostCommunicator::worker_loop() {
  // No spinning here: a thread waiting for its Work runs what is queued itself, so the worker
  // only needs to start collectives nobody waits for yet (overlap), and a spinning worker would
  // take a core from training threads.
  is_worker_thread = true;
  for (;;) {
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || (!queue_.empty() && !helped_); });
      if (queue_.empty()) return;  // stopping, and everything issued has run
    }
    std::unique_lock running(run_mu_);
    run_front();  // nothing when a waiting thread took it meanwhile
  }
}

bool HostCommunicator::run_front() {
  std::function<void()> task;
  {
    std::lock_guard lock(mu_);
    if (queue_.empty()) return false;
    task = std::move(queue_.front());
    queue_.pop_front();
  }
  running_on_this_thread = this;
  task();
  running_on_this_thread = nullptr;
  return true;
}

bool HostCommunicator::try_run_queued() {
  if (running_on_this_thread == this) return false;
  std::unique_lock running(run_mu_, std::try_to_lock);
  if (!running.owns_lock()) return false;
  {
    // While a waiter runs the queue the worker stays asleep instead of queueing on run_mu_.
    std::lock_guard lock(mu_);
    helped_ = true;
  }
  const bool ran = run_front();
  bool more;
  {
    std::lock_guard lock(mu_);
    helped_ = false;
    more = !queue_.empty();
  }
  running.unlock();
  if (more) cv_.notify_all();  // what the waiter leaves behind is the worker's again
  return ran;
}

std::string collective_progress() {
  ProgressRecord& r = progress_record();
  std::lock_guard lock(r.mu);
  return (r.running ? "in " : "last finished ") + r.text;
}

CollectiveInfo HostCommunicator::make_info(std::string kind, const Tensor& t) {
  CollectiveInfo info;
  info.sequence = ++sequence_;
  info.kind = std::move(kind);
  info.dtype = t.defined() ? t.dtype() : DType::kFloat32;
  info.count = t.defined() ? t.numel() : 0;
  const int64_t shape[2] = {static_cast<int64_t>(info.dtype), info.count};
  calls_digest_ = fnv1a(shape, sizeof shape, fnv1a(info.kind, calls_digest_ ^ kFnv1aOffset));
  return info;
}

WorkPtr HostCommunicator::enqueue(CollectiveInfo info, Timeout timeout, std::function<void()> body,
                                  bool caller_waits) {
  auto work = std::make_shared<QueuedWork>(info, [this] { return try_run_queued(); });
  auto task = [this, work, info, timeout, body = std::move(body)] {
    note_progress(backend_name(), rank(), info, true);
    notify_observers(info, /*started=*/true);
    std::exception_ptr error;
    try {
      // Point-to-point calls (sequence 0) are not collective: only their pair takes part.
      if (debug_checks_ && info.sequence != 0) verify_same_call(info, timeout);
      body();
    } catch (...) {
      error = std::current_exception();
    }
    note_progress(backend_name(), rank(), info, false);
    notify_observers(info, /*started=*/false);
    work->finish(error);
  };
  if (may_run_inline(info, caller_waits)) {
    // Nothing issued earlier is queued or running, so running it here keeps the issue order and
    // saves waking the worker and being woken by it (two thread switches, most of the time of a
    // collective with no peers). Observers, progress and errors go through the same task.
    std::unique_lock running(run_mu_, std::try_to_lock);
    if (running.owns_lock()) {
      bool idle;
      {
        std::lock_guard lock(mu_);
        DTRAIN_CHECK(!stopping_, info.describe(), ": the communicator is shutting down");
        idle = queue_.empty();
      }
      if (idle) {
        running_on_this_thread = this;
        task();
        running_on_this_thread = nullptr;
        return work;
      }
    }
  }
  {
    std::lock_guard lock(mu_);
    DTRAIN_CHECK(!stopping_, info.describe(), ": the communicator is shutting down");
    queue_.push_back(std::move(task));
  }
  cv_.notify_all();
  return work;
}

bool HostCommunicator::may_run_inline(const CollectiveInfo& info, bool caller_waits) const {
  // Without peers, or when the caller waits at once anyway: otherwise a call that ran inline
  // would wait for its peers before returning, and callers overlap their own work with
  // collectives (or drive several ranks from one thread). A thread running one of this
  // communicator's collectives (an observer, say) must not start another inside it;
  // point-to-point calls (sequence 0) have no peer in a group of one.
  return (size() == 1 || caller_waits) && info.sequence != 0 && running_on_this_thread != this &&
         !is_worker_thread;
}

Tensor HostCommunicator::allocate_symmetric(int64_t numel, DType dtype) {
  DTRAIN_CHECK(numel >= 0, "allocate_symmetric: numel must be >= 0, got ", numel);
  DTRAIN_CHECK(is_collective_dtype(dtype), "allocate_symmetric: dtype ", dtype_name(dtype),
               " is not one collectives support");
  return shared_memory_->allocate(numel, dtype, shared_memory_default_max_bytes(), debug_checks_);
}

bool HostCommunicator::uses_shared_memory() const { return shared_memory_->enabled(); }

const std::vector<int>& HostCommunicator::ranks_sharing_memory() const {
  return shared_memory_->ranks();
}

void HostCommunicator::set_shared_memory_host_key(std::string key) {
  staging_group_->set_host_key(key);
  shared_memory_->set_host_key(std::move(key));
}

bool HostCommunicator::in_shared_memory(const Tensor& t) {
  return shared_memory_->segment_holding(t) != nullptr;
}

WorkPtr HostCommunicator::all_reduce(Tensor& t, const AllReduceOptions& opts) {
  return issue_all_reduce(t, opts, /*caller_waits=*/false);
}

void HostCommunicator::all_reduce_now(Tensor& t, const AllReduceOptions& opts) {
  // Run here, the Work is finished on return and wait() only re-throws the collective's error.
  issue_all_reduce(t, opts, /*caller_waits=*/true)->wait(opts.timeout);
}

WorkPtr HostCommunicator::issue_all_reduce(Tensor& t, const AllReduceOptions& opts,
                                           bool caller_waits) {
  check_host_tensor("all_reduce", t, "tensor");
  CollectiveInfo info = make_info("all_reduce(" + std::string(reduce_op_name(opts.op)) + ")", t);
  if (auto segment = shared_memory_->segment_holding(t)) {
    // In place in the segment: no copy in or out, and no message within a host.
    return enqueue(
        info, opts.timeout,
        [this, segment, t, opts, info]() mutable {
          shared_memory_->all_reduce(*segment, t, opts.op, info, opts.timeout, waiting_spin());
        },
        caller_waits);
  }
  // Every rank decides alike: the sizes of one collective agree.
  const bool may_stage = small_all_reduces_through_shared_memory() && size() > 1 && t.numel() > 0 &&
                         t.nbytes() <= kStagedAllReduceBytes;
  return enqueue(
      info, opts.timeout,
      [this, t, opts, info, may_stage]() mutable {
        if (may_stage) {
          check_usable_for(info);
          if (Tensor staging = staging_slot(info, opts.timeout); staging.defined()) {
            // Two copies of at most 64 KiB and a reduction in shared memory instead of the
            // backend's messages; calls run one at a time, so they share the slot.
            Tensor slot(staging.storage(), 0, {t.numel()}, t.dtype());
            std::memcpy(slot.data_ptr(), t.data_ptr(), t.nbytes());
            try {
              staging_group_->all_reduce(*staging_group_->segment_holding(staging), slot, opts.op,
                                         info, opts.timeout, waiting_spin());
            } catch (const Error& e) {
              note_staged_failure(info, e.message());
              throw;
            }
            std::memcpy(t.data_ptr(), slot.data_ptr(), t.nbytes());
            return;
          }
        }
        run_all_reduce(t, backend_op(opts.op), info, opts.timeout);
        if (divides_after(opts.op)) divide_in_place(t.data_ptr(), t.numel(), t.dtype(), size());
      },
      caller_waits);
}

ReduceOp HostCommunicator::backend_op(ReduceOp op) const {
  return divides_after(op) ? ReduceOp::kSum : op;
}

bool HostCommunicator::divides_after(ReduceOp op) const {
  return op == ReduceOp::kAvg && !divides_while_reducing();
}

Tensor HostCommunicator::staging_slot(const CollectiveInfo& info, Timeout timeout) {
  if (!staging_negotiated_) {
    staging_negotiated_ = true;  // once, even if it fails: the ranks then agree on messages
    staging_info_ = &info;
    staging_timeout_ = timeout;
    // The slot is the backend's default size limit or larger: a backend that keeps its buffers
    // out of shared memory by default (mpi) still stages; DTRAIN_SHARED_MEMORY=0 or
    // DTRAIN_SHARED_MEMORY_MAX_MB below 64 KiB turn it off.
    const double limit =
        std::max(shared_memory_default_max_bytes(), static_cast<double>(kStagedAllReduceBytes));
    Tensor slot = staging_group_->allocate(kStagedAllReduceBytes / 4, DType::kFloat32, limit,
                                           /*verbose=*/false);
    staging_info_ = nullptr;
    if (staging_group_->segment_holding(slot)) staging_ = slot;
  }
  return staging_;
}

WorkPtr HostCommunicator::all_reduce_coalesced(std::vector<Tensor>& ts,
                                               const AllReduceOptions& opts) {
  DTRAIN_CHECK(!ts.empty(), "all_reduce_coalesced: no tensors");
  int64_t total = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    check_host_tensor("all_reduce_coalesced", ts[i], "tensor");
    DTRAIN_CHECK(ts[i].dtype() == ts[0].dtype(), "all_reduce_coalesced: tensor ", i, " is ",
                 ts[i].describe(), " but tensor 0 is ", ts[0].describe(), "; one dtype per call");
    total += ts[i].numel();
  }
  Tensor flat({total}, ts[0].dtype());
  CollectiveInfo info = make_info("all_reduce_coalesced(" + std::string(reduce_op_name(opts.op)) +
                                      ", " + std::to_string(ts.size()) + " tensors)",
                                  flat);
  return enqueue(info, opts.timeout, [this, ts, flat, opts, info]() mutable {
    // Pack, reduce once, unpack: one collective however many tensors.
    const size_t es = dtype_size(flat.dtype());
    int64_t at = 0;
    for (const Tensor& t : ts) {
      std::memcpy(static_cast<char*>(flat.data_ptr()) + at * es, t.data_ptr(), t.nbytes());
      at += t.numel();
    }
    run_all_reduce(flat, backend_op(opts.op), info, opts.timeout);
    if (divides_after(opts.op))
      divide_in_place(flat.data_ptr(), flat.numel(), flat.dtype(), size());
    at = 0;
    for (Tensor& t : ts) {
      std::memcpy(t.data_ptr(), static_cast<char*>(flat.data_ptr()) + at * es, t.nbytes());
      at += t.numel();
    }
  });
}

WorkPtr HostCommunicator::broadcast(Tensor& t, const BroadcastOptions& opts) {
  check_host_tensor("broadcast", t, "tensor");
  DTRAIN_CHECK(opts.root >= 0 && opts.root < size(), "broadcast: root ", opts.root,
               " is outside the group of ", size(), " ranks");
  CollectiveInfo info = make_info("broadcast(root " + std::to_string(opts.root) + ")", t);
  return enqueue(info, opts.timeout, [this, t, opts, info]() mutable {
    run_broadcast(t, opts.root, info, opts.timeout);
  });
}

WorkPtr HostCommunicator::reduce(Tensor& t, const ReduceOptions& opts) {
  check_host_tensor("reduce", t, "tensor");
  DTRAIN_CHECK(opts.root >= 0 && opts.root < size(), "reduce: root ", opts.root,
               " is outside the group of ", size(), " ranks");
  CollectiveInfo info = make_info("reduce(" + std::string(reduce_op_name(opts.op)) + ", root " +
                                      std::to_string(opts.root) + ")",
                                  t);
  return enqueue(info, opts.timeout, [this, t, opts, info]() mutable {
    run_reduce(t, opts.op == ReduceOp::kAvg ? ReduceOp::kSum : opts.op, opts.root, info,
               opts.timeout);
    if (opts.op == ReduceOp::kAvg && rank() == opts.root) {
      divide_in_place(t.data_ptr(), t.numel(), t.dtype(), size());
    }
  });
}

WorkPtr HostCommunicator::all_gather(const Tensor& in, Tensor& out, const AllGatherOptions& opts) {
  check_host_tensor("all_gather", in, "input");
  check_host_tensor("all_gather", out, "output");
  DTRAIN_CHECK(in.dtype() == out.dtype() && out.numel() == in.numel() * size(),
               "all_gather: output ", out.describe(), " must be ", dtype_name(in.dtype()), " with ",
               in.numel() * size(), " elements (size ", size(), " x input ", in.describe(), ")");
  CollectiveInfo info = make_info("all_gather", in);
  return enqueue(info, opts.timeout, [this, in, out, opts, info]() mutable {
    run_all_gather(in, out, info, opts.timeout);
  });
}

WorkPtr HostCommunicator::reduce_scatter(const Tensor& in, Tensor& out,
                                         const ReduceScatterOptions& opts) {
  check_host_tensor("reduce_scatter", in, "input");
  check_host_tensor("reduce_scatter", out, "output");
  DTRAIN_CHECK(in.dtype() == out.dtype() && in.numel() == out.numel() * size(),
               "reduce_scatter: input ", in.describe(), " must be ", dtype_name(out.dtype()),
               " with ", out.numel() * size(), " elements (size ", size(), " x output ",
               out.describe(), ")");
  CollectiveInfo info =
      make_info("reduce_scatter(" + std::string(reduce_op_name(opts.op)) + ")", out);
  return enqueue(info, opts.timeout, [this, in, out, opts, info]() mutable {
    run_reduce_scatter(in, out, backend_op(opts.op), info, opts.timeout);
    if (divides_after(opts.op)) divide_in_place(out.data_ptr(), out.numel(), out.dtype(), size());
  });
}

WorkPtr HostCommunicator::barrier(const BarrierOptions& opts) {
  CollectiveInfo info = make_info("barrier", Tensor());
  return enqueue(info, opts.timeout, [this, opts, info] { run_barrier(info, opts.timeout); });
}

WorkPtr HostCommunicator::send(const Tensor& t, int peer, const SendRecvOptions& opts) {
  check_host_tensor("send", t, "tensor");
  DTRAIN_CHECK(peer >= 0 && peer < size() && peer != rank(), "send: peer ", peer,
               " must be another rank of the group of ", size());
  DTRAIN_CHECK(opts.tag >= 0 && opts.tag < kReservedTags, "send: tag ", opts.tag,
               " must be in [0, ", kReservedTags, "); larger tags are dtrain's own");
  // Point-to-point calls are not collective: they do not take a group sequence number.
  CollectiveInfo info;
  info.kind = "send(to " + std::to_string(peer) + ", tag " + std::to_string(opts.tag) + ")";
  info.dtype = t.dtype();
  info.count = t.numel();
  return enqueue(info, opts.timeout,
                 [this, t, peer, opts, info] { run_send(t, peer, opts.tag, info, opts.timeout); });
}

WorkPtr HostCommunicator::recv(Tensor& t, int peer, const SendRecvOptions& opts) {
  check_host_tensor("recv", t, "tensor");
  DTRAIN_CHECK(peer >= 0 && peer < size() && peer != rank(), "recv: peer ", peer,
               " must be another rank of the group of ", size());
  DTRAIN_CHECK(opts.tag >= 0 && opts.tag < kReservedTags, "recv: tag ", opts.tag,
               " must be in [0, ", kReservedTags, "); larger tags are dtrain's own");
  CollectiveInfo info;
  info.kind = "recv(from " + std::to_string(peer) + ", tag " + std::to_string(opts.tag) + ")";
  info.dtype = t.dtype();
  info.count = t.numel();
  return enqueue(info, opts.timeout, [this, t, peer, opts, info]() mutable {
    run_recv(t, peer, opts.tag, info, opts.timeout);
  });
}

}  // namespace dtrain::dist
