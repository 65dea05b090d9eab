// DistributedSampler: a seeded per-epoch permutation, padded or cut to a multiple of the replica
// count, then dealt out round-robin.
#include "dtrain/data/sampler.h"

#include <numeric>

#include "dtrain/tensor/check.h"
#include "dtrain/tensor/kernels.h"

namespace dtrain::data {

DistributedSampler::DistributedSampler(int64_t dataset_size, int num_replicas, int rank,
                                       bool shuffle, uint64_t seed, bool drop_last)
    : size_(dataset_size),
      replicas_(num_replicas),
      rank_(rank),
      shuffle_(shuffle),
      seed_(seed),
      drop_last_(drop_last) {
  DTRAIN_CHECK(dataset_size >= 0, "DistributedSampler: dataset_size is ", dataset_size,
               "; expected >= 0");
  DTRAIN_CHECK(num_replicas >= 1, "DistributedSampler: num_replicas is ", num_replicas,
               "; expected >= 1");
  DTRAIN_CHECK(rank >= 0 && rank < num_replicas, "DistributedSampler: rank ", rank,
               " is out of range for num_replicas ", num_replicas, "; expected 0..",
               num_replicas - 1);
}

void DistributedSampler::set_epoch(int64_t epoch) {
  DTRAIN_CHECK(epoch >= 0, "DistributedSampler::set_epoch(", epoch, "): expected epoch >= 0");
  epoch_ = epoch;
}

int64_t DistributedSampler::num_samples() const {
  return drop_last_ ? size_ / replicas_ : (size_ + replicas_ - 1) / replicas_;
}

std::vector<int64_t> DistributedSampler::global_order() const {
  std::vector<int64_t> order(static_cast<size_t>(size_));
  std::iota(order.begin(), order.end(), int64_t{0});
  if (shuffle_) {
    // Fisher-Yates; step i draws 64 bits from Philox block i of stream `epoch`, mapped onto
    // [0, i] by a 128-bit multiply (bias at most (i + 1) / 2^64, far below sampling noise).
    const uint64_t stream = static_cast<uint64_t>(epoch_);
    for (int64_t i = size_ - 1; i > 0; --i) {
      const kernels::Philox4 r = kernels::philox(seed_, stream, static_cast<uint64_t>(i));
      const uint64_t bits = (static_cast<uint64_t>(r.v[0]) << 32) | r.v[1];
      const auto j = static_cast<int64_t>(
          (static_cast<unsigned __int128>(bits) * static_cast<uint64_t>(i + 1)) >> 64);
      std::swap(order[i], order[j]);
    }
  }
  const size_t total = static_cast<size_t>(num_samples() * replicas_);
  if (total <= order.size()) {
    order.resize(total);
  } else {
    // Pad with the list's own first elements, cycling when it is shorter than the padding.
    const size_t original = order.size();
    order.reserve(total);
    for (size_t k = 0; order.size() < total; ++k) order.push_back(order[k % original]);
  }
  return order;
}

std::vector<int64_t> DistributedSampler::indices() const {
  const std::vector<int64_t> order = global_order();
  std::vector<int64_t> mine;
  mine.reserve(static_cast<size_t>(num_samples()));
  for (size_t p = static_cast<size_t>(rank_); p < order.size(); p += replicas_) {
    mine.push_back(order[p]);
  }
  return mine;
}

}  // namespace dtrain::data
