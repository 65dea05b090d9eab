// HostCommunicator: the shared part of every host-memory backend. It validates each call,
// numbers it, and runs it on one background thread in issue order, so compute continues while
// communication runs; backends implement the blocking run_* primitives.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "dtrain/distributed/communicator.h"

namespace dtrain::dist {

class SharedMemoryGroup;

/// Spins (yielding) until pred() holds or `limit` passes; true if it held. Waits between
/// collectives are usually a few microseconds, far shorter than waking a blocked thread on an
/// idle core, so waiters spin this long before they block.
template <class Pred>
bool spin_until(Pred&& pred, std::chrono::microseconds limit = std::chrono::microseconds(50)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

/// This process's latest collective over every HostCommunicator, for heartbeats and failure
/// reports: "in collective #57 all_reduce(sum) float32 x 101770 (tcp rank 1)", or
/// "last finished collective #57 ..." between collectives. Thread-safe.
std::string collective_progress();

/// In a group of one rank a collective runs inside the call (nothing to wait for, nothing to
/// overlap), unless one issued earlier is still queued; otherwise calls return at once.
/// all_reduce_now runs inside the call in any group, under the same condition.
class HostCommunicator : public Communicator {
 public:
  ~HostCommunicator() override;

  WorkPtr all_reduce(Tensor& t, const AllReduceOptions& opts = {}) override;
  /// On the calling thread when nothing issued earlier is queued or running (no hand-off to the
  /// worker and back: most of the time of a small all-reduce); otherwise queued and waited for.
  void all_reduce_now(Tensor& t, const AllReduceOptions& opts = {}) override;
  WorkPtr all_reduce_coalesced(std::vector<Tensor>& ts, const AllReduceOptions& opts = {}) override;
  WorkPtr broadcast(Tensor& t, const BroadcastOptions& opts = {}) override;
  WorkPtr reduce(Tensor& t, const ReduceOptions& opts = {}) override;
  WorkPtr all_gather(const Tensor& in, Tensor& out, const AllGatherOptions& opts = {}) override;
  WorkPtr reduce_scatter(const Tensor& in, Tensor& out,
                         const ReduceScatterOptions& opts = {}) override;
  WorkPtr barrier(const BarrierOptions& opts = {}) override;
  WorkPtr send(const Tensor& t, int peer, const SendRecvOptions& opts = {}) override;
  WorkPtr recv(Tensor& t, int peer, const SendRecvOptions& opts = {}) override;
  /// Shared memory between the ranks of each host (same host_identity(): host name, kernel boot,
  /// IPC, mount and PID namespaces), unless DTRAIN_SHARED_MEMORY is 0 or the size limits differ on
  /// some rank; decided at the first call. all_reduce on these tensors then runs
  /// SharedSegment::all_reduce when every rank is on one host; when the group spans hosts (and some
  /// host has two ranks or more), each host reduces in its segment and only the host's first rank
  /// exchanges with the other hosts (a ring over the backend's send and recv), then shares the
  /// result. SharedMemoryGroup (shared_memory_group.h) does all of this.
  Tensor allocate_symmetric(int64_t numel, DType dtype) override;
  /// Whether ranks share memory with the others of their host (decided at allocate_symmetric's
  /// first call; false before). Buffers above the size limit are ordinary memory even then.
  bool uses_shared_memory() const;
  /// The group's ranks that share memory with this one, this rank included (empty before the
  /// decision or without shared memory).
  const std::vector<int>& ranks_sharing_memory() const;
  /// Replaces this rank's host key before the first allocate_symmetric: ranks with different
  /// keys never share memory. Lets a test run the ranks of several hosts as threads.
  void set_shared_memory_host_key(std::string key);
  /// Whether all_reduce on `t` goes through shared memory (t lies in a segment of this group).
  bool in_shared_memory(const Tensor& t);
  /// Whether all-reduces of other tensors of up to kStagedAllReduceBytes are copied through a
  /// shared-memory slot of this communicator (backends that opt in, when ranks share memory;
  /// decided inside the first such all-reduce). Read it after a wait().
  bool stages_small_all_reduces() const { return staging_.defined(); }
  static constexpr size_t kStagedAllReduceBytes = 64 << 10;

  /// The sequence number the next collective will get (1 for the first).
  uint64_t next_sequence() const { return sequence_ + 1; }
  bool observes_collectives() const override { return true; }
  uint64_t calls_digest() const override { return calls_digest_; }
  /// Before each collective, ranks exchange what they are about to call (sequence, kind, dtype,
  /// count) and a difference raises an error listing every rank's call, instead of a hang or
  /// garbage. One small all_gather per collective; on by default when DTRAIN_DISTRIBUTED_DEBUG=1.
  void set_debug_checks(bool on) { debug_checks_ = on; }
  bool debug_checks() const { return debug_checks_; }

 protected:
  HostCommunicator(int rank, int size);
  /// Backends call this last in their constructor (the worker calls their virtual functions).
  void start_worker();
  /// Backends call this first in their destructor: drains the queue and joins the worker.
  void stop_worker();

  /// Buffers larger than this (bytes per rank) are not given shared memory unless
  /// DTRAIN_SHARED_MEMORY_MAX_MB says otherwise: a backend whose own large all-reduce serves
  /// training better says so here.
  virtual double shared_memory_default_max_bytes() const { return 1e18; }
  /// Backends whose own small all-reduce costs far more than a round through shared memory (a
  /// socket round trip, say) opt in here: all-reduces of up to kStagedAllReduceBytes then copy
  /// the tensor into a shared slot, reduce it there and copy it back.
  virtual bool small_all_reduces_through_shared_memory() const { return false; }
  /// A staged all-reduce runs outside the backend's primitives: a backend that refuses every call
  /// after a failure checks here before one, and hears here of one that failed.
  virtual void check_usable_for(const CollectiveInfo&) const {}
  virtual void note_staged_failure(const CollectiveInfo&, const std::string& /*what*/) {}
  /// Backends whose run_all_reduce and run_reduce_scatter take ReduceOp::kAvg, dividing each chunk
  /// they reduce while it is in cache (the same division of the same sum, so the same bits), say
  /// so here; the others get kSum and the base divides the whole result afterwards, one more
  /// pass over memory.
  virtual bool divides_while_reducing() const { return false; }

  // Blocking primitives, run one at a time in issue order on the worker thread or on a thread
  // waiting for their Work. kAvg reaches only run_all_reduce and run_reduce_scatter, and only
  // when divides_while_reducing() (otherwise the base runs kSum and divides). `timeout` bounds
  // how long to wait for the other ranks.
  virtual void run_all_reduce(Tensor& t, ReduceOp op, const CollectiveInfo& info,
                              Timeout timeout) = 0;
  virtual void run_broadcast(Tensor& t, int root, const CollectiveInfo& info, Timeout timeout) = 0;
  virtual void run_reduce(Tensor& t, ReduceOp op, int root, const CollectiveInfo& info,
                          Timeout timeout) = 0;
  virtual void run_all_gather(const Tensor& in, Tensor& out, const CollectiveInfo& info,
                              Timeout timeout) = 0;
  virtual void run_reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op,
                                  const CollectiveInfo& info, Timeout timeout) = 0;
  virtual void run_barrier(const CollectiveInfo& info, Timeout timeout) = 0;
  virtual void run_send(const Tensor& t, int peer, int tag, const CollectiveInfo& info,
                        Timeout timeout) = 0;
  virtual void run_recv(Tensor& t, int peer, int tag, const CollectiveInfo& info,
                        Timeout timeout) = 0;

 private:
  /// The op a backend's reduction runs for `op`, and whether the base divides its result after.
  ReduceOp backend_op(ReduceOp op) const;
  bool divides_after(ReduceOp op) const;

  /// Queues body for the worker, or runs it on the calling thread when may_run_inline(info,
  /// caller_waits) and nothing issued earlier is queued or running; either way the returned Work
  /// reports it.
  WorkPtr enqueue(CollectiveInfo info, Timeout timeout, std::function<void()> body,
                  bool caller_waits = false);
  /// Collectives of a group of one rank (nothing to wait for) or whose caller waits at once,
  /// issued by a thread that is not running one of this communicator's collectives.
  bool may_run_inline(const CollectiveInfo& info, bool caller_waits) const;
  /// all_reduce and all_reduce_now: the checks, the sequence number and the task.
  WorkPtr issue_all_reduce(Tensor& t, const AllReduceOptions& opts, bool caller_waits);
  /// The shared slot small all-reduces are staged through (undefined without one), run inside the
  /// all-reduce `info`: the first call negotiates it with the blocking primitives, so its errors
  /// and timeout are that all-reduce's.
  Tensor staging_slot(const CollectiveInfo& info, Timeout timeout);
  /// The debug check: every rank's call, compared; throws listing them when they differ.
  void verify_same_call(const CollectiveInfo& info, Timeout timeout);
  CollectiveInfo make_info(std::string kind, const Tensor& t);
  void worker_loop();
  /// Runs the oldest queued collective on this thread; the caller holds run_mu_. False if none.
  bool run_front();
  /// run_front() when no other thread is running a collective (a thread waiting for its Work
  /// helps instead of sleeping). False when it ran nothing.
  bool try_run_queued();

  uint64_t sequence_ = 0;
  uint64_t calls_digest_ = 0;  // see calls_digest(); updated where sequence_ is
  bool debug_checks_ = false;
  // Who shares memory, the segments, and their all-reduce (its ring runs over run_send/run_recv).
  std::unique_ptr<SharedMemoryGroup> shared_memory_;
  // The staging slot's own group, used only by the thread running collectives (run_mu_).
  std::unique_ptr<SharedMemoryGroup> staging_group_;
  Tensor staging_;
  bool staging_negotiated_ = false;
  const CollectiveInfo* staging_info_ = nullptr;  // the all-reduce negotiating the slot
  Timeout staging_timeout_{};
  std::mutex mu_;
  std::mutex run_mu_;  // held while a collective runs: one at a time, in issue order
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  bool helped_ = false;  // a waiting thread is running queued collectives (guarded by mu_)
  std::thread worker_;
};

}  // namespace dtrain::dist
