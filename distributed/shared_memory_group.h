// SharedMemoryGroup: the shared-memory side of a HostCommunicator. It decides which ranks of the
// group share a host, hands out allocate_symmetric's buffers in per-host segments, and reduces a
// tensor lying in one of them: in the segment, plus a ring among the hosts' first ranks when the
// group spans hosts.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dtrain/distributed/communicator.h"
#include "dtrain/distributed/shared_memory.h"

namespace dtrain::dist {

/// Owned by one communicator (its owner) and used through it only. allocate() runs on the
/// owner's issuing thread and negotiates through the owner's public collectives, so every rank's
/// negotiation takes the same sequence numbers as any other call (or, given a Negotiation, inside
/// one of the owner's collectives with its blocking primitives). all_reduce() runs inside one of
/// the owner's collectives, on the thread running it, and reaches other hosts through the owner's
/// blocking send and receive (which that thread may call while the collective runs).
class SharedMemoryGroup {
 public:
  /// The owner's blocking point-to-point primitives (HostCommunicator::run_send, run_recv).
  using Send = std::function<void(const Tensor& t, int peer, int tag, const CollectiveInfo& info,
                                  Timeout timeout)>;
  using Recv = std::function<void(Tensor& t, int peer, int tag, const CollectiveInfo& info,
                                  Timeout timeout)>;

  /// How allocate() reaches the other ranks: an all-gather, and an all-reduce to the minimum of
  /// an int32; both blocking. Default: the owner's public collectives, waited for.
  struct Negotiation {
    std::function<void(const Tensor& in, Tensor& out)> all_gather;
    std::function<void(Tensor& t)> all_reduce_min;
  };

  /// `owner` must outlive this; nothing is called on it before the first allocate().
  SharedMemoryGroup(Communicator& owner, Send send, Recv recv, Negotiation negotiation = {});

  /// allocate_symmetric's body (arguments already checked). The first call decides which ranks
  /// share memory (collective: an all_gather); each call then negotiates one segment per host (an
  /// all_gather and an all_reduce) or returns ordinary memory: when shared memory is off, the
  /// buffer is above the size limit (`default_max_bytes`: the backend's, unless
  /// DTRAIN_SHARED_MEMORY_MAX_MB says otherwise), or some rank could not map its segment.
  /// `verbose`: the decision is reported on stderr.
  Tensor allocate(int64_t numel, DType dtype, double default_max_bytes, bool verbose);
  /// Whether ranks share memory with the others of their host (false before the decision).
  bool enabled() const { return mode_ == Mode::kOneHost || mode_ == Mode::kPerHost; }
  /// The group's ranks on this rank's host, this one included, ascending (empty before the
  /// decision or without shared memory).
  const std::vector<int>& ranks() const { return host_ranks_; }
  /// Replaces this rank's host key (default: host_identity()) before the first allocate.
  void set_host_key(std::string key) { host_key_ = std::move(key); }

  /// The segment holding all of `t` in this rank's slot, or nullptr. Issuing thread only.
  std::shared_ptr<SharedSegment> segment_holding(const Tensor& t);
  /// In place over `t`, which lies in `segment` (segment_holding's answer): SharedSegment::
  /// all_reduce when every rank is on one host; otherwise each host reduces in its segment and
  /// the hosts' first ranks combine their sums in all_reduce_among_hosts. Blocking; `spin` as
  /// SharedSegment::all_reduce takes it.
  void all_reduce(SharedSegment& segment, Tensor& t, ReduceOp op, const CollectiveInfo& info,
                  Timeout timeout, std::chrono::microseconds spin);

 private:
  /// Decides mode_, host_ranks_, host_rank_ and host_leaders_ (collective: an all_gather).
  void decide(double default_max_bytes, bool verbose);
  /// In place among the hosts' first ranks (this rank is one): a ring reduce-scatter then
  /// all-gather over the owner's send and receive, so every host ends with the same bits.
  void all_reduce_among_hosts(Tensor& t, ReduceOp op, const CollectiveInfo& info, Timeout timeout);

  Communicator& owner_;
  Send send_;
  Recv recv_;
  Negotiation negotiation_;
  enum class Mode { kUndecided, kOff, kOneHost, kPerHost };
  Mode mode_ = Mode::kUndecided;
  std::string host_key_;           // "" : host_identity()
  std::vector<int> host_ranks_;    // the ranks on this rank's host, ascending
  int host_rank_ = 0;              // this rank's index in host_ranks_ (its slot)
  std::vector<int> host_leaders_;  // each host's first rank, ascending
  Tensor ring_scratch_;            // all_reduce_among_hosts' receive buffer
  std::vector<std::weak_ptr<SharedSegment>> segments_;  // issuing thread only
};

}  // namespace dtrain::dist
