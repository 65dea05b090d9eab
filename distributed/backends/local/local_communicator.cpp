// The local backend.
#include "dtrain/distributed/backends/local/local_communicator.h"

#include <algorithm>
#include <cstring>
#include <sstream>

#include "dtrain/distributed/reduce.h"
#include "dtrain/tensor/check.h"

namespace dtrain::dist {

LocalGroup::LocalGroup(int size)
    : inputs(size), outputs(size), size_(size), present_(size, false), calls_(size) {
  DTRAIN_CHECK(size >= 1, "local group: size must be >= 1; got ", size);
}

void LocalGroup::rendezvous(int rank, const CollectiveInfo& info, Timeout timeout) {
  std::unique_lock lock(mu_);
  if (!failure_.empty()) DTRAIN_THROW(ValueError, failure_);
  const uint64_t my_generation = generation_;
  present_[rank] = true;
  calls_[rank] = info;
  if (++arrived_ == size_) {
    // 1. The last rank to arrive compares every rank's call; 2. it opens the next generation,
    //    which releases the others.
    bool same = true;
    for (int r = 1; r < size_; ++r) {
      same = same && calls_[r].sequence == calls_[0].sequence && calls_[r].kind == calls_[0].kind &&
             calls_[r].dtype == calls_[0].dtype && calls_[r].count == calls_[0].count;
    }
    if (!same) {
      std::ostringstream os;
      os << "ranks called different collectives:";
      for (int r = 0; r < size_; ++r) os << "\n  rank " << r << ": " << calls_[r].describe();
      failure_ = os.str();
    }
    arrived_ = 0;
    std::fill(present_.begin(), present_.end(), false);
    ++generation_;
    cv_.notify_all();
  } else {
    // Spin briefly outside the lock first: the other ranks are usually microseconds behind.
    lock.unlock();
    spin_until([&] { return generation_.load() != my_generation; });
    lock.lock();
    if (!cv_.wait_for(lock, timeout,
                      [&] { return generation_ != my_generation || !failure_.empty(); })) {
      std::ostringstream os;
      os << info.describe() << " timed out after " << timeout.count() << " ms on rank " << rank
         << "; ranks that have not reached it:";
      for (int r = 0; r < size_; ++r) {
        if (!present_[r]) os << " " << r;
      }
      failure_ = os.str();
      cv_.notify_all();
      DTRAIN_THROW(TimeoutError, failure_);
    }
  }
  if (!failure_.empty()) DTRAIN_THROW(ValueError, failure_);
}

void LocalGroup::abort(const std::string& reason) {
  {
    std::lock_guard lock(mu_);
    if (failure_.empty()) failure_ = reason;
  }
  cv_.notify_all();
}

void LocalGroup::send(int from, int to, int tag, const void* data, size_t nbytes,
                      const CollectiveInfo& info, Timeout timeout) {
  std::unique_lock lock(mu_);
  const auto key = std::make_tuple(from, to, tag);
  // One message in flight per (from, to, tag): wait for the previous one to be taken.
  if (!cv_.wait_for(lock, timeout, [&] { return !mail_.count(key) || !failure_.empty(); })) {
    DTRAIN_THROW(TimeoutError, info.describe(), " on rank ", from, ": rank ", to,
                 " did not receive the previous message within ", timeout.count(), " ms");
  }
  mail_[key] = Mail{data, nbytes, false};
  cv_.notify_all();
  if (!cv_.wait_for(lock, timeout, [&] { return mail_[key].taken || !failure_.empty(); })) {
    mail_.erase(key);
    DTRAIN_THROW(TimeoutError, info.describe(), " on rank ", from, ": rank ", to,
                 " did not receive within ", timeout.count(), " ms");
  }
  mail_.erase(key);
  cv_.notify_all();
  if (!failure_.empty()) DTRAIN_THROW(ValueError, failure_);
}

void LocalGroup::recv(int from, int to, int tag, void* data, size_t nbytes,
                      const CollectiveInfo& info, Timeout timeout) {
  std::unique_lock lock(mu_);
  const auto key = std::make_tuple(from, to, tag);
  if (!cv_.wait_for(lock, timeout, [&] {
        auto it = mail_.find(key);
        return (it != mail_.end() && !it->second.taken) || !failure_.empty();
      })) {
    DTRAIN_THROW(TimeoutError, info.describe(), " on rank ", to, ": rank ", from,
                 " sent nothing within ", timeout.count(), " ms");
  }
  if (!failure_.empty()) DTRAIN_THROW(ValueError, failure_);
  Mail& m = mail_[key];
  if (m.nbytes != nbytes) {
    m.taken = true;  // release the sender; both report the mismatch
    cv_.notify_all();
    DTRAIN_THROW(ValueError, info.describe(), " on rank ", to, ": rank ", from, " sent ", m.nbytes,
                 " bytes but the receive buffer holds ", nbytes);
  }
  std::memcpy(data, m.data, nbytes);
  m.taken = true;
  cv_.notify_all();
}

LocalCommunicator::LocalCommunicator(std::shared_ptr<LocalGroup> group, int rank)
    : HostCommunicator(rank, group->size()), group_(std::move(group)) {
  start_worker();
}

LocalCommunicator::~LocalCommunicator() { stop_worker(); }

void LocalCommunicator::reduce_my_chunk(const Tensor& t, ReduceOp op, int only_root) {
  const int64_t n = t.numel(), parts = size();
  const int64_t begin = n * rank() / parts, end = n * (rank() + 1) / parts;
  if (begin == end) return;
  const size_t es = dtype_size(t.dtype());
  const size_t bytes = (end - begin) * es;
  const auto input = [&](int r) {
    return static_cast<const char*>(group_->inputs[r]) + begin * es;
  };
  const auto output = [&](int r) { return static_cast<char*>(group_->outputs[r]) + begin * es; };
  if (only_root < 0 || only_root == 0) {
    // Only this rank touches chunk rank() of any buffer between the two rendezvous, so rank 0's
    // buffer can accumulate in place: inputs combine in rank order 0, 1, ... as everywhere else.
    for (int r = 1; r < size(); ++r) reduce_into(output(0), input(r), end - begin, t.dtype(), op);
    if (only_root < 0) {
      for (int r = 1; r < size(); ++r) std::memcpy(output(r), output(0), bytes);
    }
    return;
  }
  // Reducing onto another root: its buffer is also an input, so accumulate aside first.
  scratch_.resize(bytes);
  std::memcpy(scratch_.data(), input(0), bytes);
  for (int r = 1; r < size(); ++r)
    reduce_into(scratch_.data(), input(r), end - begin, t.dtype(), op);
  std::memcpy(output(only_root), scratch_.data(), bytes);
}

void LocalCommunicator::run_all_reduce(Tensor& t, ReduceOp op, const CollectiveInfo& info,
                                       Timeout timeout) {
  group_->inputs[rank()] = t.data_ptr();
  group_->outputs[rank()] = t.data_ptr();
  group_->rendezvous(rank(), info, timeout);  // every buffer is published
  reduce_my_chunk(t, op, -1);
  group_->rendezvous(rank(), info, timeout);  // every chunk is written everywhere
}

void LocalCommunicator::run_reduce(Tensor& t, ReduceOp op, int root, const CollectiveInfo& info,
                                   Timeout timeout) {
  group_->inputs[rank()] = t.data_ptr();
  group_->outputs[rank()] = t.data_ptr();
  group_->rendezvous(rank(), info, timeout);
  reduce_my_chunk(t, op, root);
  group_->rendezvous(rank(), info, timeout);
}

void LocalCommunicator::run_broadcast(Tensor& t, int root, const CollectiveInfo& info,
                                      Timeout timeout) {
  group_->inputs[rank()] = t.data_ptr();
  group_->rendezvous(rank(), info, timeout);  // root's buffer is published
  if (rank() != root) std::memcpy(t.data_ptr(), group_->inputs[root], t.nbytes());
  group_->rendezvous(rank(), info, timeout);  // root's buffer may change again only after this
}

void LocalCommunicator::run_all_gather(const Tensor& in, Tensor& out, const CollectiveInfo& info,
                                       Timeout timeout) {
  group_->inputs[rank()] = in.data_ptr();
  group_->rendezvous(rank(), info, timeout);
  for (int r = 0; r < size(); ++r) {
    std::memcpy(static_cast<char*>(out.data_ptr()) + r * in.nbytes(), group_->inputs[r],
                in.nbytes());
  }
  group_->rendezvous(rank(), info, timeout);
}

void LocalCommunicator::run_reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op,
                                           const CollectiveInfo& info, Timeout timeout) {
  group_->inputs[rank()] = in.data_ptr();
  group_->rendezvous(rank(), info, timeout);
  const size_t chunk = out.nbytes();
  std::memcpy(out.data_ptr(), static_cast<const char*>(group_->inputs[0]) + rank() * chunk, chunk);
  for (int r = 1; r < size(); ++r) {
    reduce_into(out.data_ptr(), static_cast<const char*>(group_->inputs[r]) + rank() * chunk,
                out.numel(), out.dtype(), op);
  }
  group_->rendezvous(rank(), info, timeout);
}

void LocalCommunicator::run_barrier(const CollectiveInfo& info, Timeout timeout) {
  group_->rendezvous(rank(), info, timeout);
}

void LocalCommunicator::run_send(const Tensor& t, int peer, int tag, const CollectiveInfo& info,
                                 Timeout timeout) {
  group_->send(rank(), peer, tag, t.data_ptr(), t.nbytes(), info, timeout);
}

void LocalCommunicator::run_recv(Tensor& t, int peer, int tag, const CollectiveInfo& info,
                                 Timeout timeout) {
  group_->recv(peer, rank(), tag, t.data_ptr(), t.nbytes(), info, timeout);
}

std::vector<std::shared_ptr<HostCommunicator>> make_local_group(int size) {
  auto group = std::make_shared<LocalGroup>(size);
  std::vector<std::shared_ptr<HostCommunicator>> comms;
  for (int r = 0; r < size; ++r) comms.push_back(std::make_shared<LocalCommunicator>(group, r));
  return comms;
}

}  // namespace dtrain::dist
