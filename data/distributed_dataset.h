// DistributedDataset: the global batches one process would train on, each dealt out to the replicas
// of a step (TensorFlow's strategy.experimental_distribute_dataset), for MirroredStrategy::run.
#pragma once

#include <utility>
#include <vector>

#include "dtrain/data/loader.h"

namespace dtrain::data {

struct DistributeOptions {
  int64_t global_batch_size = 64;  // rows per step over all replicas; a multiple of the replicas
  bool shuffle = true;             // DistributedSampler's permutation, Philox(seed, stream = epoch)
  uint64_t seed = 0;
  bool drop_last = false;  // drop the epoch's last global batch when it is short
  int prefetch = 2;        // global batches filled ahead by the loader's thread
};

/// One step: a global batch dealt out to the replicas.
struct DistributedBatch {
  /// Replica r's rows, in replica order. Views of one global batch: read them, do not write.
  std::vector<Batch> per_replica;
  int64_t global_size = 0;  // rows in the global batch (the sum over replicas)
  int64_t index = 0;        // step within the epoch
  /// The factor for replica r's mean loss that makes the average of the replicas' gradients (what
  /// DistributedDataParallel computes) the gradient of the global batch's mean loss:
  /// rows_r * replicas / global_size. Exactly 1 for a full global batch; 0 for an empty share.
  double loss_scale(int r) const;
};

/// Step s of an epoch holds the global batch s of one process with batch global_batch_size: rows
/// [s * G, (s + 1) * G) of DistributedSampler(size, 1 replica, shuffle, seed).global_order(),
/// filled by a DataLoader (the Trainer's single-process order; the sampler's permutation does not
/// depend on the replica count). Replica r takes the contiguous rows of share(rows, R, r), so the
/// replicas' batches concatenated in replica order are the global batch.
///
/// The epoch's last global batch is short when G does not divide the data set. With drop_last it is
/// dropped; otherwise its n rows are split as evenly as possible (the first n % R replicas get one
/// row more) and nothing is repeated, so loss_scale differs from 1 in that step. When n < R the
/// last R - n replicas get an empty batch (x [0, example...], y [0], loss_scale 0). Such a replica
/// must still take part in the step's collectives: run the step on the empty batch when every layer
/// accepts 0 rows (Linear and elementwise layers do: the mean loss is 0 and the gradients zero), or
/// skip forward and backward with find_unused_parameters on (its zeroed gradients are reduced) and
/// broadcast_buffers off (forward would broadcast).
///
/// The Trainer's mirrored replicas see the same examples in each full step with the same seed, but
/// dealt out in PyTorch's strided layout (replica r: positions r, r + R, ...), and pad a short last
/// step with repeated examples to equal shares.
///
/// Not copyable; one consumer thread (the one that calls start_epoch and next).
class DistributedDataset {
 public:
  /// Throws ValueError naming both numbers when global_batch_size does not divide across
  /// num_replicas.
  DistributedDataset(DatasetPtr dataset, int num_replicas, DistributeOptions options);

  int num_replicas() const { return replicas_; }
  int64_t global_batch_size() const { return global_batch_; }
  /// Rows of each replica's share of a full global batch.
  int64_t per_replica_batch_size() const { return global_batch_ / replicas_; }
  int64_t steps_per_epoch() const { return loader_.batches_per_epoch(); }
  /// Starts epoch `epoch`, skipping its first `skip_steps` steps (exact resume).
  void start_epoch(int64_t epoch, int64_t skip_steps = 0);
  /// The next step of the current epoch; false at its end.
  bool next(DistributedBatch& step);
  /// Rows [first, last) of a global batch of `rows` rows that replica r of `replicas` takes.
  static std::pair<int64_t, int64_t> share(int64_t rows, int replicas, int r);

 private:
  int replicas_;
  int64_t global_batch_;
  DataLoader loader_;  // one process's loader with the global batch
};

}  // namespace dtrain::data
