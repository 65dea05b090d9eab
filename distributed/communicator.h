// Communicator: backend-neutral collectives over a fixed group of ranks, asynchronous through
// Work handles. Every rank issues the same collectives in the same order; each gets a sequence
// number that errors and the watchdog use.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "dtrain/tensor/tensor.h"

namespace dtrain::dist {

enum class ReduceOp { kSum, kAvg, kMin, kMax, kProduct };
std::string_view reduce_op_name(ReduceOp op);

using Timeout = std::chrono::milliseconds;
inline constexpr Timeout kDefaultTimeout{300'000};
/// A collective running this long is reported once (the watchdog) and keeps waiting.
inline constexpr Timeout kDefaultStallWarning{60'000};

struct AllReduceOptions {
  ReduceOp op = ReduceOp::kSum;
  Timeout timeout = kDefaultTimeout;
};
struct BroadcastOptions {
  int root = 0;
  Timeout timeout = kDefaultTimeout;
};
struct ReduceOptions {
  ReduceOp op = ReduceOp::kSum;
  int root = 0;
  Timeout timeout = kDefaultTimeout;
};
struct AllGatherOptions {
  Timeout timeout = kDefaultTimeout;
};
struct ReduceScatterOptions {
  ReduceOp op = ReduceOp::kSum;
  Timeout timeout = kDefaultTimeout;
};
struct BarrierOptions {
  Timeout timeout = kDefaultTimeout;
};
/// Tags from kReservedTags on belong to dtrain's own algorithms (the host ring of shared memory).
inline constexpr int kReservedTags = 32000;
struct SendRecvOptions {
  int tag = 0;  // 0 .. kReservedTags - 1
  Timeout timeout = kDefaultTimeout;
};

/// What a collective is, for error messages and the watchdog: "#12 all_reduce(sum) float32 x 1024".
struct CollectiveInfo {
  uint64_t sequence = 0;
  std::string kind;  // "all_reduce(sum)", "broadcast(root 0)", ...
  DType dtype = DType::kFloat32;
  int64_t count = 0;
  std::string describe() const;
};

/// The completion of one asynchronous collective. Thread-safe.
class Work {
 public:
  virtual ~Work() = default;
  /// Blocks until the collective finished and re-throws its failure; throws TimeoutError naming
  /// the collective when it has not finished within `timeout`.
  virtual void wait(Timeout timeout = kDefaultTimeout) = 0;
  virtual bool is_completed() const = 0;
  virtual const CollectiveInfo& info() const = 0;
};
using WorkPtr = std::shared_ptr<Work>;

/// Notified when a collective starts and finishes (the watchdog and DDP's timing listen here).
/// Called on the thread that runs the collective (the worker, or a thread waiting for its Work);
/// must be quick and not throw.
class CollectiveObserver {
 public:
  virtual ~CollectiveObserver() = default;
  virtual void on_start(int rank, const CollectiveInfo& info) = 0;
  virtual void on_finish(int rank, const CollectiveInfo& info) = 0;
};

/// Calls return at once; results are valid after the returned Work's wait(). Tensors must stay
/// alive and untouched until then. One issuing thread per communicator.
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual std::string_view backend_name() const = 0;
  int rank() const { return rank_; }
  int size() const { return size_; }

  /// In place: afterwards every rank holds op(t_0, ..., t_{size-1}) (kAvg: the sum / size).
  virtual WorkPtr all_reduce(Tensor& t, const AllReduceOptions& opts = {}) = 0;
  /// all_reduce(t, opts)->wait(opts.timeout), for callers that wait at once: the same result,
  /// order, observers and errors, but a backend may run it on the calling thread instead of
  /// handing it to a background one (host backends do when nothing issued earlier is pending).
  virtual void all_reduce_now(Tensor& t, const AllReduceOptions& opts = {}) {
    all_reduce(t, opts)->wait(opts.timeout);
  }
  /// In place over several tensors as if they were one buffer (one collective).
  virtual WorkPtr all_reduce_coalesced(std::vector<Tensor>& ts,
                                       const AllReduceOptions& opts = {}) = 0;
  /// In place: afterwards every rank holds root's t.
  virtual WorkPtr broadcast(Tensor& t, const BroadcastOptions& opts = {}) = 0;
  /// In place on root only; other ranks' t is unspecified afterwards.
  virtual WorkPtr reduce(Tensor& t, const ReduceOptions& opts = {}) = 0;
  /// out: [size * in.numel()], rank r's input at offset r * in.numel().
  virtual WorkPtr all_gather(const Tensor& in, Tensor& out, const AllGatherOptions& opts = {}) = 0;
  /// in: [size * out.numel()]; rank r receives the reduction of every rank's chunk r.
  virtual WorkPtr reduce_scatter(const Tensor& in, Tensor& out,
                                 const ReduceScatterOptions& opts = {}) = 0;
  virtual WorkPtr barrier(const BarrierOptions& opts = {}) = 0;
  virtual WorkPtr send(const Tensor& t, int peer, const SendRecvOptions& opts = {}) = 0;
  virtual WorkPtr recv(Tensor& t, int peer, const SendRecvOptions& opts = {}) = 0;

  /// A zeroed 1-D host tensor of `numel` elements that an all_reduce may reduce in place without
  /// copies, when the backend can: processes on one host get symmetric shared memory (every
  /// rank's tensor mapped by every rank; the mpi and tcp backends). Otherwise an ordinary tensor.
  /// Collective: every rank calls it at the same point with the same arguments, and all_reduces
  /// on such tensors must name the same tensor (or the same view of it) on every rank.
  virtual Tensor allocate_symmetric(int64_t numel, DType dtype) { return zeros({numel}, dtype); }

  /// Observers (the watchdog, DDP's timing) are told when each collective starts and finishes,
  /// on the thread that runs it. Thread-safe; once remove_observer returns, `observer` is not
  /// being called and will not be again. Only backends that run their collectives on the host
  /// report them (observes_collectives()); NCCL's run on the GPU and report nothing.
  void add_observer(CollectiveObserver* observer) {
    std::lock_guard lock(observers_mu_);
    observers_.push_back(observer);
  }
  void remove_observer(CollectiveObserver* observer) {
    std::lock_guard lock(observers_mu_);  // waits for a notification in progress
    std::erase(observers_, observer);
  }
  virtual bool observes_collectives() const { return false; }
  /// A running hash of the kind (with its reduce op), dtype and count of every collective issued
  /// through this communicator so far: ranks that issued the same calls have the same digest,
  /// which a cheap per-step comparison checks (0: the backend does not track it).
  virtual uint64_t calls_digest() const { return 0; }

 protected:
  Communicator(int rank, int size) : rank_(rank), size_(size) {}
  /// Backends that observe their collectives call this as each starts and finishes.
  void notify_observers(const CollectiveInfo& info, bool started) {
    std::lock_guard lock(observers_mu_);
    for (CollectiveObserver* o : observers_) {
      if (started) {
        o->on_start(rank_, info);
      } else {
        o->on_finish(rank_, info);
      }
    }
  }

 private:
  const int rank_, size_;
  std::mutex observers_mu_;
  std::vector<CollectiveObserver*> observers_;
};

using CommunicatorPtr = std::shared_ptr<Communicator>;

/// "0, 2, 5": ranks for error messages.
inline std::string rank_list(const std::vector<int>& ranks) {
  std::string s;
  for (int r : ranks) {
    if (!s.empty()) s += ", ";
    s += std::to_string(r);
  }
  return s;
}

}  // namespace dtrain::dist
