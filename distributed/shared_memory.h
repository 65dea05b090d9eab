// Symmetric memory for the ranks of a group on one host: a POSIX shared-memory segment with one
// slot per rank. An all-reduce over tensors in it reduces in place (each rank reduces one chunk of
// every slot, in rank order, and writes the result into all of them) between two flag barriers:
// no messages, no system calls, no copies in or out of the tensors. When the group spans hosts,
// each host's ranks share a segment and only its first rank talks to the other hosts.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dtrain/distributed/communicator.h"

namespace dtrain::dist {

/// A segment's name in /dev/shm: "/dtrain-<host>-<pid>-<start>-<nonce>". It says who created
/// it: `host` hashes the creator's host_identity(), which includes its PID namespace, so for
/// readers with the same `host` the pid names the same process; `start` is the creator's start
/// time (clock ticks after boot), so a later process that reuses the pid is not taken for it.
struct SegmentName {
  uint64_t host = 0;
  int64_t pid = 0;
  uint64_t start = 0;
  uint64_t nonce = 0;  // random, never 0
  /// A new name for a segment this process creates.
  static SegmentName fresh();
  /// The /dev/shm entry `entry` (without the leading '/') as a name; nullopt when it is not one.
  static std::optional<SegmentName> parse(std::string_view entry);
  /// "/dtrain-...", as shm_open takes it.
  std::string str() const;
};

/// Removes the names in /dev/shm that this user's processes created on this host (same `host`
/// tag) and whose creator process is gone (exited, a zombie, or its pid now taken by a younger
/// process); returns them. Safe for any other job: a name is only needed while its creator waits
/// for the peers to open it (SharedSegment), so once the creator is dead nobody can still use it,
/// and ranks that had mapped it keep their mappings. SharedSegment::create calls it.
std::vector<std::string> remove_abandoned_segments();

/// One mapped segment: a page of per-rank flags (and a doorbell to sleep on), then `ranks` slots
/// of `slot_bytes` each. Rank 0 creates it under a SegmentName, the others open that name, then
/// rank 0 unlinks it at once (the mapping lives on until the last SharedSegment is destroyed).
/// Leftovers: the name exists only between create() and that unlink. A creator that throws in
/// between unlinks it as it unwinds; one killed there (SIGKILL, the OOM killer) leaves it in
/// /dev/shm, and the next create() on the host, such as the set-up of the restarted job, removes
/// it (remove_abandoned_segments): at most one leftover per killed creator, for as long as no
/// segment is created on its host. all_reduce runs on one thread at a time per rank (the
/// communicator's worker, or a thread waiting for the result), in the same order on every rank; the
/// flags count how many collectives each rank has entered and left. After a timeout or a lost peer
/// the ranks' flags are out of step: like a timed-out MPI collective, the job should stop.
class SharedSegment {
 public:
  /// Rank 0: removes abandoned names (remove_abandoned_segments), then creates and reserves the
  /// segment (posix_fallocate, so a full /dev/shm is an error here, not a SIGBUS later). `name` is
  /// a SegmentName's str(). Returns nullptr and sets `why` when that is not possible.
  static std::shared_ptr<SharedSegment> create(const std::string& name, int ranks,
                                               size_t slot_bytes, int rank, std::string& why);
  /// The other ranks: maps the segment rank 0 created. nullptr and `why` on failure.
  static std::shared_ptr<SharedSegment> open(const std::string& name, int ranks, size_t slot_bytes,
                                             int rank, std::string& why);
  ~SharedSegment();
  struct Flags;  // one rank's progress and pid, in the segment's first page
  SharedSegment(const SharedSegment&) = delete;
  SharedSegment& operator=(const SharedSegment&) = delete;

  /// Removes the name (rank 0, once every rank has opened it). Idempotent.
  void unlink();
  char* slot(int rank) const { return slots_ + static_cast<size_t>(rank) * slot_bytes_; }
  size_t slot_bytes() const { return slot_bytes_; }
  /// True when [p, p + bytes) lies in `rank`'s slot.
  bool holds(int rank, const void* p, size_t bytes) const;
  /// The group's rank of each slot, for messages (default: slot r is rank r).
  void set_rank_names(std::vector<int> group_ranks) { names_ = std::move(group_ranks); }

  /// In place over every slot's [offset, offset + count elements): afterwards each slot holds
  /// op(slot 0, slot 1, ...) reduced in rank order (kAvg: the sum divided by the rank count), the
  /// same bits the local backend gives. Throws TimeoutError naming the ranks that did not arrive
  /// within `timeout`, and DistError when a peer process is gone. Waits for the other ranks spin
  /// for `spin` before sleeping: long when the caller has nothing else to do, short on a
  /// background thread whose spinning would slow the training threads.
  void all_reduce(size_t offset, int64_t count, DType dtype, ReduceOp op,
                  const CollectiveInfo& info, Timeout timeout, std::chrono::microseconds spin);
  /// The same when the group spans hosts and this segment holds one host's ranks: they reduce
  /// into slot 0 (kAvg as a sum), slot 0's rank runs `across_hosts` on it (an all-reduce among
  /// the hosts' first ranks, in place) and divides by `group_size` for kAvg, then every rank
  /// copies the result into its own slot. Four flag barriers.
  void all_reduce_across_hosts(size_t offset, int64_t count, DType dtype, ReduceOp op,
                               int group_size, const std::function<void()>& across_hosts,
                               const CollectiveInfo& info, Timeout timeout,
                               std::chrono::microseconds spin);

 private:
  SharedSegment(std::string name, int ranks, size_t slot_bytes, int rank, void* base,
                size_t mapped);
  /// Waits until every rank's flag has reached `target` (they entered/left this collective).
  void wait_for_all(uint64_t target, const char* stage, const CollectiveInfo& info, Timeout timeout,
                    std::chrono::microseconds spin);
  Flags* flags(int rank) const;
  int name_of(int slot) const { return names_.empty() ? slot : names_[slot]; }
  std::vector<int> names_of(const std::vector<int>& slots) const;
  /// Reduces this rank's chunk of [offset, offset + count elements) over every slot, in slot
  /// order, into every slot (`into_all`) or slot 0 only (kAvg: divided by the slot count unless
  /// `sum_only`).
  void reduce_my_chunk(size_t offset, int64_t count, DType dtype, ReduceOp op, bool sum_only,
                       bool into_all);
  /// Advances this rank's flag and rings the doorbell for ranks sleeping on it.
  void raise_flag();
  /// Step 1 of every collective: publishes this rank's call (count, dtype, op), raises the flag,
  /// waits for every rank's, and throws DistError listing the calls when they differ (the ranks
  /// issued different collectives: reducing would mix unrelated data).
  void enter(int64_t count, DType dtype, ReduceOp op, const CollectiveInfo& info, Timeout timeout,
             std::chrono::microseconds spin);

  std::string name_;
  const int ranks_;
  const size_t slot_bytes_;
  const int rank_;
  void* base_;
  size_t mapped_;
  char* slots_;
  uint64_t counter_ = 0;  // this rank's flag value: one step per barrier
  std::vector<int> names_;
  bool linked_;
};

/// Which processes count as on the same host, for every path that shares or reads another rank's
/// memory (shared-memory segments; the tcp backend's process_vm_readv): this process's host name,
/// kernel boot id, and IPC, mount and PID namespaces. Equal identities mean the same kernel, the
/// same /dev/shm, and pids that name the same processes. The boot id is what tells two machines
/// apart when their host names repeat (initial namespaces have the same ids on every machine).
/// '/' separates the parts (the tcp backend publishes it in a '|'-separated record); "?" stands
/// for a part that could not be read. The environment switches (DTRAIN_SHARED_MEMORY,
/// DTRAIN_TCP_CROSS_MEMORY) are not consulted here: each user applies its own.
std::string host_identity();
/// Whether DTRAIN_SHARED_MEMORY allows shared memory (unset or 1: yes; 0: no).
bool shared_memory_enabled_by_env();
/// The largest buffer (bytes per rank) given shared memory: DTRAIN_SHARED_MEMORY_MAX_MB when set,
/// else the backend's `backend_default`.
double shared_memory_max_bytes(double backend_default);

}  // namespace dtrain::dist
