// SharedMemoryGroup: the host decision, the negotiation of each segment, and the all-reduce of a
// tensor in one (within the host, then the ring among hosts).
#include "dtrain/distributed/shared_memory_group.h"

#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>

#include "dtrain/distributed/reduce.h"
#include "dtrain/tensor/hash.h"

namespace dtrain::dist {

SharedMemoryGroup::SharedMemoryGroup(Communicator& owner, Send send, Recv recv,
                                     Negotiation negotiation)
    : owner_(owner),
      send_(std::move(send)),
      recv_(std::move(recv)),
      negotiation_(std::move(negotiation)) {
  if (!negotiation_.all_gather) {
    negotiation_.all_gather = [this](const Tensor& in, Tensor& out) {
      owner_.all_gather(in, out)->wait();
    };
  }
  if (!negotiation_.all_reduce_min) {
    negotiation_.all_reduce_min = [this](Tensor& t) {
      owner_.all_reduce(t, {ReduceOp::kMin})->wait();
    };
  }
}

std::shared_ptr<SharedSegment> SharedMemoryGroup::segment_holding(const Tensor& t) {
  for (const auto& weak : segments_) {
    auto segment = weak.lock();
    if (segment && segment->holds(host_rank_, t.data_ptr(), t.nbytes())) return segment;
  }
  return nullptr;
}

void SharedMemoryGroup::decide(double default_max_bytes, bool verbose) {
  const int rank = owner_.rank(), size = owner_.size();
  // Every rank's host key and settings (DTRAIN_SHARED_MEMORY, the size limit), gathered.
  const std::string settings = (shared_memory_enabled_by_env() ? "on|" : "off|") +
                               std::to_string(shared_memory_max_bytes(default_max_bytes));
  Tensor mine = zeros({2}, DType::kInt64);
  mine.data<int64_t>()[0] =
      static_cast<int64_t>(fnv1a(host_key_.empty() ? host_identity() : host_key_));
  mine.data<int64_t>()[1] = static_cast<int64_t>(fnv1a(settings));
  Tensor all({2 * size}, DType::kInt64);
  negotiation_.all_gather(mine, all);
  const int64_t* row = all.data<int64_t>();
  bool same_settings = true;
  for (int r = 0; r < size; ++r) {
    same_settings = same_settings && row[2 * r + 1] == row[1];
    const int first = [&] {
      for (int q = 0;; ++q) {
        if (row[2 * q] == row[2 * r]) return q;
      }
    }();
    if (first == r) host_leaders_.push_back(r);
    if (row[2 * r] == row[2 * rank]) host_ranks_.push_back(r);
  }
  host_rank_ = static_cast<int>(std::find(host_ranks_.begin(), host_ranks_.end(), rank) -
                                host_ranks_.begin());
  const bool shared_host = host_leaders_.size() < static_cast<size_t>(size);
  if (size == 1 || !same_settings || !shared_memory_enabled_by_env() || !shared_host) {
    mode_ = Mode::kOff;
    host_ranks_.clear();
    host_rank_ = 0;
    return;
  }
  mode_ = host_leaders_.size() == 1 ? Mode::kOneHost : Mode::kPerHost;
  if (verbose) {
    std::fprintf(stderr, "[rank %d] shared memory with rank(s) %s of this host (%zu host(s))\n",
                 rank, rank_list(host_ranks_).c_str(), host_leaders_.size());
  }
}

Tensor SharedMemoryGroup::allocate(int64_t numel, DType dtype, double default_max_bytes,
                                   bool verbose) {
  if (mode_ == Mode::kUndecided) decide(default_max_bytes, verbose);
  if (mode_ == Mode::kOff ||
      static_cast<double>(numel) * dtype_size(dtype) > shared_memory_max_bytes(default_max_bytes)) {
    return zeros({numel}, dtype);
  }

  // 1. Each host's first rank creates a segment for its host under a fresh SegmentName (having
  // removed names that killed creators left); the names are gathered (nonce 0: it could not);
  // 2. the host's other ranks map theirs; 3. everyone reports, and only if all mapped it is it
  // used; 4. the creators remove the names: from here on only the mappings hold the memory. A
  // creator killed before 4 leaves its name, which the next creation on its host removes.
  const int rank = owner_.rank();
  const size_t slot_bytes =
      std::max<size_t>(4096, (static_cast<size_t>(numel) * dtype_size(dtype) + 4095) / 4096 * 4096);
  const int host_size = static_cast<int>(host_ranks_.size());
  const int leader = host_ranks_[0];
  // A SegmentName as 4 int64s: host tag, pid, start time, nonce.
  constexpr int kWords = 4;
  Tensor id = zeros({kWords}, DType::kInt64);
  std::shared_ptr<SharedSegment> segment;
  std::string why;
  if (rank == leader) {
    const SegmentName name = SegmentName::fresh();
    segment = SharedSegment::create(name.str(), host_size, slot_bytes, 0, why);
    int64_t* words = id.data<int64_t>();
    words[0] = static_cast<int64_t>(name.host);
    words[1] = name.pid;
    words[2] = static_cast<int64_t>(name.start);
    words[3] = segment ? static_cast<int64_t>(name.nonce) : 0;
  }
  Tensor ids({kWords * owner_.size()}, DType::kInt64);
  negotiation_.all_gather(id, ids);
  if (rank != leader) {
    const int64_t* theirs = ids.data<int64_t>() + kWords * leader;
    if (theirs[3] != 0) {
      SegmentName name;
      name.host = static_cast<uint64_t>(theirs[0]);
      name.pid = theirs[1];
      name.start = static_cast<uint64_t>(theirs[2]);
      name.nonce = static_cast<uint64_t>(theirs[3]);
      segment = SharedSegment::open(name.str(), host_size, slot_bytes, host_rank_, why);
    } else {
      why = "rank " + std::to_string(leader) + " could not create the segment";
    }
  }
  Tensor mapped = full({1}, segment ? 1.0 : 0.0, DType::kInt32);
  negotiation_.all_reduce_min(mapped);
  if (segment) segment->unlink();
  if (mapped.data<int32_t>()[0] == 0) {
    if (!why.empty()) {
      std::fprintf(stderr,
                   "[rank %d] shared memory: %s; all-reduces of this %lld-element buffer go "
                   "through the %s backend instead (a larger /dev/shm, e.g. docker --shm-size, "
                   "fixes it; DTRAIN_SHARED_MEMORY=0 turns shared memory off)\n",
                   rank, why.c_str(), static_cast<long long>(numel),
                   std::string(owner_.backend_name()).c_str());
    }
    return zeros({numel}, dtype);
  }
  segment->set_rank_names(host_ranks_);
  segments_.erase(std::remove_if(segments_.begin(), segments_.end(),
                                 [](const auto& weak) { return weak.expired(); }),
                  segments_.end());
  segments_.push_back(segment);
  char* data = segment->slot(host_rank_);
  return Tensor(std::make_shared<Storage>(data, slot_bytes, Device::cpu(), segment), 0, {numel},
                dtype);
}

void SharedMemoryGroup::all_reduce(SharedSegment& segment, Tensor& t, ReduceOp op,
                                   const CollectiveInfo& info, Timeout timeout,
                                   std::chrono::microseconds spin) {
  const size_t offset =
      static_cast<size_t>(static_cast<char*>(t.data_ptr()) - segment.slot(host_rank_));
  if (mode_ == Mode::kOneHost) {
    segment.all_reduce(offset, t.numel(), t.dtype(), op, info, timeout, spin);
    return;
  }
  const ReduceOp sum_or_op = op == ReduceOp::kAvg ? ReduceOp::kSum : op;
  segment.all_reduce_across_hosts(
      offset, t.numel(), t.dtype(), op, owner_.size(),
      [&] { all_reduce_among_hosts(t, sum_or_op, info, timeout); }, info, timeout, spin);
}

void SharedMemoryGroup::all_reduce_among_hosts(Tensor& t, ReduceOp op, const CollectiveInfo& info,
                                               Timeout timeout) {
  // A reserved tag, so the ring's messages never match a user's send or recv.
  constexpr int kRingTag = kReservedTags;
  const int hosts = static_cast<int>(host_leaders_.size());
  const int me = static_cast<int>(
      std::find(host_leaders_.begin(), host_leaders_.end(), owner_.rank()) - host_leaders_.begin());
  const int next = host_leaders_[(me + 1) % hosts];
  const int prev = host_leaders_[(me + hosts - 1) % hosts];
  const int64_t n = t.numel();
  const size_t element = dtype_size(t.dtype());
  const auto chunk = [&](int c) {
    c = (c % hosts + hosts) % hosts;
    const int64_t begin = n * c / hosts, end = n * (c + 1) / hosts;
    return Tensor(t.storage(), t.storage_offset_bytes() + static_cast<size_t>(begin) * element,
                  {end - begin}, t.dtype());
  };
  if (!ring_scratch_.defined() || ring_scratch_.dtype() != t.dtype() ||
      ring_scratch_.numel() < (n + hosts - 1) / hosts) {
    ring_scratch_ = Tensor({(n + hosts - 1) / hosts}, t.dtype());
  }
  // Blocking send and receive in an order no ring can deadlock on: even hosts send first.
  // Empty chunks (fewer elements than hosts) are skipped on both sides of their transfer.
  const auto exchange = [&](const Tensor& out, Tensor& in) {
    const bool send = out.numel() > 0;
    if (send && me % 2 == 0) send_(out, next, kRingTag, info, timeout);
    if (in.numel() > 0) recv_(in, prev, kRingTag, info, timeout);
    if (send && me % 2 != 0) send_(out, next, kRingTag, info, timeout);
  };
  // Reduce-scatter: after step s, chunk me - s - 1 holds hosts me - s - 1 .. me; in the end host
  // me holds chunk me + 1 reduced over every host.
  for (int s = 0; s + 1 < hosts; ++s) {
    Tensor into = chunk(me - s - 1);
    Tensor scratch(ring_scratch_.storage(), 0, {into.numel()}, t.dtype());
    exchange(chunk(me - s), scratch);
    if (into.numel() > 0) {
      reduce_into(into.data_ptr(), scratch.data_ptr(), into.numel(), t.dtype(), op);
    }
  }
  // All-gather: pass the finished chunks around.
  for (int s = 0; s + 1 < hosts; ++s) {
    Tensor into = chunk(me - s);
    exchange(chunk(me + 1 - s), into);
  }
}

}  // namespace dtrain::dist
