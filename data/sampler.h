// DistributedSampler: which examples each replica sees in each epoch, resumable mid-epoch.
#pragma once

#include <cstdint>
#include <vector>

namespace dtrain::data {

/// Splits [0, dataset_size) across num_replicas. With shuffle, the order is a permutation drawn
/// from Philox(seed, stream = epoch), identical on every replica. Without drop_last the list is
/// padded with its own first elements to a multiple of num_replicas (so every index appears at
/// least once per epoch); with drop_last the tail is dropped (every kept index exactly once).
/// Replica r takes positions r, r + R, r + 2R, ... of the list (PyTorch's layout).
class DistributedSampler {
 public:
  DistributedSampler(int64_t dataset_size, int num_replicas, int rank, bool shuffle, uint64_t seed,
                     bool drop_last);
  void set_epoch(int64_t epoch);
  int64_t epoch() const { return epoch_; }
  /// Indices per replica per epoch.
  int64_t num_samples() const;
  /// This replica's indices for the current epoch, in order.
  std::vector<int64_t> indices() const;
  /// The whole epoch's list before it is split across replicas (length num_samples * replicas).
  std::vector<int64_t> global_order() const;
  /// Size of the dataset the indices range over, [0, dataset_size).
  int64_t dataset_size() const { return size_; }
  int num_replicas() const { return replicas_; }
  int rank() const { return rank_; }

 private:
  int64_t size_;
  int replicas_, rank_;
  bool shuffle_;
  uint64_t seed_;
  bool drop_last_;
  int64_t epoch_ = 0;
};

}  // namespace dtrain::data
