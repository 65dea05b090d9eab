// DataLoader: one producer thread per epoch fills batches into a bounded queue that next() drains
// in order.
#include "dtrain/data/loader.h"

#include <algorithm>

#include "dtrain/tensor/check.h"

namespace dtrain::data {

DataLoader::DataLoader(DatasetPtr dataset, DistributedSampler sampler, int64_t batch_size,
                       bool drop_last, int prefetch)
    : dataset_(std::move(dataset)),
      sampler_(std::move(sampler)),
      batch_size_(batch_size),
      drop_last_(drop_last),
      prefetch_(prefetch) {
  DTRAIN_CHECK(dataset_ != nullptr, "DataLoader: dataset is null");
  DTRAIN_CHECK(batch_size >= 1, "DataLoader(", dataset_->describe(), "): batch_size is ",
               batch_size, "; expected >= 1");
  DTRAIN_CHECK(prefetch >= 1, "DataLoader(", dataset_->describe(), "): prefetch is ", prefetch,
               "; expected >= 1");
  DTRAIN_CHECK(sampler_.dataset_size() == dataset_->size(), "DataLoader(", dataset_->describe(),
               "): the sampler covers ", sampler_.dataset_size(), " examples but the dataset has ",
               dataset_->size(), "; build the sampler with dataset->size()");
}

DataLoader::~DataLoader() { stop_worker(); }

int64_t DataLoader::batches_per_epoch() const {
  const int64_t samples = sampler_.num_samples();
  return drop_last_ ? samples / batch_size_ : (samples + batch_size_ - 1) / batch_size_;
}

void DataLoader::start_epoch(int64_t epoch, int64_t skip_batches) {
  stop_worker();
  started_ = false;  // stays false if the checks below throw, so next() cannot wait forever
  const int64_t num_batches = batches_per_epoch();
  DTRAIN_CHECK(skip_batches >= 0 && skip_batches <= num_batches, "DataLoader::start_epoch(", epoch,
               ", skip_batches = ", skip_batches, "): expected 0..", num_batches,
               " (batches per epoch)");
  sampler_.set_epoch(epoch);
  worker_ =
      std::thread(&DataLoader::produce, this, sampler_.indices(), epoch, skip_batches, num_batches);
  started_ = true;
}

void DataLoader::produce(std::vector<int64_t> order, int64_t epoch, int64_t first_batch,
                         int64_t num_batches) {
  Shape x_shape{0}, y_shape{0};
  const Shape example = dataset_->example_shape(), label = dataset_->label_shape();
  x_shape.insert(x_shape.end(), example.begin(), example.end());
  y_shape.insert(y_shape.end(), label.begin(), label.end());
  const DType x_dtype = dataset_->example_dtype();
  try {
    for (int64_t b = first_batch; b < num_batches; ++b) {
      {
        // Wait for room: the queue holds at most prefetch_ batches, which bounds memory.
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return stop_ || static_cast<int>(ready_.size()) < prefetch_; });
        if (stop_) return;
      }
      const int64_t begin = b * batch_size_;
      const int64_t end = std::min<int64_t>(begin + batch_size_, order.size());
      const std::vector<int64_t> indices(order.begin() + begin, order.begin() + end);
      x_shape[0] = y_shape[0] = end - begin;
      Batch batch{Tensor(x_shape, x_dtype), Tensor(y_shape, DType::kInt64), b};
      dataset_->fill_batch_for_epoch(indices, epoch, batch.x, batch.y);
      {
        std::lock_guard lock(mu_);
        ready_.push_back(std::move(batch));
      }
      cv_.notify_all();  // the consumer may be waiting for this batch
    }
  } catch (...) {
    std::lock_guard lock(mu_);
    error_ = std::current_exception();
  }
  {
    std::lock_guard lock(mu_);
    done_ = true;
  }
  cv_.notify_all();  // wakes a consumer waiting at the end of the epoch
}

bool DataLoader::next(Batch& batch) {
  DTRAIN_CHECK(started_, "DataLoader::next: call start_epoch(epoch) first");
  std::unique_lock lock(mu_);
  // Wait until the worker has produced the next batch or finished (normally or with an error).
  cv_.wait(lock, [&] { return !ready_.empty() || done_; });
  if (!ready_.empty()) {
    batch = std::move(ready_.front());
    ready_.pop_front();
    lock.unlock();
    cv_.notify_all();  // the worker may be waiting for room in the queue
    return true;
  }
  // Batches before a failure are delivered first; the error surfaces where its batch would be.
  if (error_) std::rethrow_exception(error_);
  return false;
}

void DataLoader::stop_worker() {
  if (worker_.joinable()) {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();  // a worker blocked on a full queue must see stop_ to exit
    worker_.join();
  }
  std::lock_guard lock(mu_);
  ready_.clear();
  error_ = nullptr;
  stop_ = false;
  done_ = false;
}

}  // namespace dtrain::data
