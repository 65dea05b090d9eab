// The local backend: N ranks as threads of one process, exchanging data through shared memory.
// Each rank reduces its own chunk across all ranks' buffers in rank order and writes the result to
// every buffer, so results are bit-identical on every rank and every run.
#pragma once

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "dtrain/distributed/host_communicator.h"

namespace dtrain::dist {

/// State shared by the ranks of one local group. Thread-safe.
class LocalGroup {
 public:
  explicit LocalGroup(int size);
  int size() const { return size_; }

  /// Blocks until every rank has arrived for the same collective. The arrivals are compared: a
  /// rank that called a different collective (kind, dtype or count) makes every rank throw an
  /// error listing each rank's call. A rank that has not arrived within `timeout` makes the
  /// waiting ranks throw TimeoutError naming the missing ranks; the group is then failed and
  /// every later call throws that error.
  void rendezvous(int rank, const CollectiveInfo& info, Timeout timeout);

  /// Buffers the ranks publish before a rendezvous (one slot per rank).
  std::vector<const void*> inputs;
  std::vector<void*> outputs;

  /// Fails the group: every rank waiting now or later throws an error carrying `reason` (a replica
  /// thread that failed, so the others stop instead of waiting for it until their timeout).
  void abort(const std::string& reason);

  /// Point-to-point: blocks until the receiver has copied the bytes.
  void send(int from, int to, int tag, const void* data, size_t nbytes, const CollectiveInfo& info,
            Timeout timeout);
  void recv(int from, int to, int tag, void* data, size_t nbytes, const CollectiveInfo& info,
            Timeout timeout);

 private:
  struct Mail {
    const void* data = nullptr;
    size_t nbytes = 0;
    bool taken = false;
  };
  const int size_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};  // written under mu_, read without it while spinning
  int arrived_ = 0;
  std::vector<bool> present_;
  std::vector<CollectiveInfo> calls_;
  std::string failure_;  // non-empty once the group has failed
  std::map<std::tuple<int, int, int>, Mail> mail_;
};

class LocalCommunicator final : public HostCommunicator {
 public:
  LocalCommunicator(std::shared_ptr<LocalGroup> group, int rank);
  ~LocalCommunicator() override;
  std::string_view backend_name() const override { return "local"; }
  LocalGroup& group() { return *group_; }
  std::shared_ptr<LocalGroup> group_ptr() const { return group_; }

 protected:
  void run_all_reduce(Tensor& t, ReduceOp op, const CollectiveInfo& info, Timeout timeout) override;
  void run_broadcast(Tensor& t, int root, const CollectiveInfo& info, Timeout timeout) override;
  void run_reduce(Tensor& t, ReduceOp op, int root, const CollectiveInfo& info,
                  Timeout timeout) override;
  void run_all_gather(const Tensor& in, Tensor& out, const CollectiveInfo& info,
                      Timeout timeout) override;
  void run_reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op, const CollectiveInfo& info,
                          Timeout timeout) override;
  void run_barrier(const CollectiveInfo& info, Timeout timeout) override;
  void run_send(const Tensor& t, int peer, int tag, const CollectiveInfo& info,
                Timeout timeout) override;
  void run_recv(Tensor& t, int peer, int tag, const CollectiveInfo& info, Timeout timeout) override;

 private:
  /// Reduces chunk `rank()` of every published buffer in rank order; writes it to every buffer
  /// (all_reduce) or to root's only (reduce).
  void reduce_my_chunk(const Tensor& t, ReduceOp op, int only_root);
  std::shared_ptr<LocalGroup> group_;
  std::vector<char> scratch_;
};

/// One communicator per rank of a new local group of `size` ranks.
std::vector<std::shared_ptr<HostCommunicator>> make_local_group(int size);

}  // namespace dtrain::dist
