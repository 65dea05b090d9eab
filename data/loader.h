// DataLoader: batches from a dataset in a sampler's order, filled by a background thread that
// stays at most `prefetch` batches ahead.
#pragma once

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "dtrain/data/dataset.h"
#include "dtrain/data/sampler.h"

namespace dtrain::data {

struct Batch {
  Tensor x;           // [B, example...] of the dataset's example_dtype (float32, int64 for tokens)
  Tensor y;           // [B, label...] int64: [B] class indices, [B, T] next tokens
  int64_t index = 0;  // position of this batch within the epoch
};

/// One epoch at a time: start_epoch(e, skip) then next() until it returns false. Not copyable;
/// the destructor stops the worker thread. An exception in the worker is re-thrown by next().
/// Batches are filled with Dataset::fill_batch_for_epoch(indices, e), so epoch-dependent datasets
/// (augmentation) give the same batches whatever the prefetch depth or resume point.
class DataLoader {
 public:
  DataLoader(DatasetPtr dataset, DistributedSampler sampler, int64_t batch_size, bool drop_last,
             int prefetch = 2);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  /// Batches per epoch for this replica.
  int64_t batches_per_epoch() const;
  /// Starts epoch `epoch`, skipping its first `skip_batches` batches (exact resume).
  void start_epoch(int64_t epoch, int64_t skip_batches = 0);
  /// The next batch of the current epoch; false at its end.
  bool next(Batch& batch);
  const DistributedSampler& sampler() const { return sampler_; }

 private:
  void stop_worker();
  /// Worker body: fills batches [first_batch, num_batches) of `order` (epoch `epoch`) into ready_.
  void produce(std::vector<int64_t> order, int64_t epoch, int64_t first_batch, int64_t num_batches);
  DatasetPtr dataset_;
  DistributedSampler sampler_;
  int64_t batch_size_;
  bool drop_last_;
  int prefetch_;
  bool started_ = false;  // start_epoch was called; only the consumer thread touches it
  // Worker state, guarded by mu_.
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Batch> ready_;
  std::exception_ptr error_;
  bool stop_ = false, done_ = false;
  std::thread worker_;
};

}  // namespace dtrain::data
