// DevicePrefetcher (see device_prefetch.h).
#include "dtrain/train/device_prefetch.h"

#include <utility>

#include "dtrain/tensor/check.h"
#include "dtrain/tensor/cuda/pinned_copy.h"

namespace dtrain::train {

struct DevicePrefetcher::Staged {
  data::Batch batch;  // x and y already on the device (their copies may still run)
  cuda::PinnedUploader::Upload upload;
};

DevicePrefetcher::DevicePrefetcher(Device device, Source source, DevicePrefetchOptions options)
    : device_(device),
      source_(std::move(source)),
      look_ahead_(options.look_ahead.value_or(device.is_cuda())),
      limit_(options.limit) {
  DTRAIN_CHECK(source_ != nullptr, "DevicePrefetcher: needs a source of batches");
  if (device_.is_cuda()) uploader_ = std::make_unique<cuda::PinnedUploader>(device_.index);
}

// The staged batch's tensors go back to the allocator, which holds their blocks until the copy
// stream is past them; the uploader then waits for its copies before freeing its buffers.
DevicePrefetcher::~DevicePrefetcher() { ahead_.reset(); }

bool DevicePrefetcher::take(Staged& into) {
  if (ended_ || (limit_ >= 0 && taken_ >= limit_)) return false;
  data::Batch batch;
  if (!source_(batch)) {
    ended_ = true;
    return false;
  }
  ++taken_;
  if (uploader_) {
    into.upload = uploader_->start({batch.x, batch.y});
    batch.x = into.upload.tensors[0];
    batch.y = into.upload.tensors[1];
  }
  into.batch = std::move(batch);
  return true;
}

void DevicePrefetcher::hand_out(Staged& staged, data::Batch& out) {
  if (uploader_) uploader_->make_default_stream_wait(staged.upload);
  out = std::move(staged.batch);
}

bool DevicePrefetcher::next(data::Batch& out) {
  if (!look_ahead_) {
    Staged now;
    if (!take(now)) return false;
    hand_out(now, out);
    return true;
  }
  if (!ahead_) {
    auto first = std::make_unique<Staged>();
    if (!take(*first)) return false;
    ahead_ = std::move(first);
  }
  std::unique_ptr<Staged> staged = std::move(ahead_);
  hand_out(*staged, out);
  // Batch t+1's copy is queued now, before the caller queues its work on batch t.
  if (take(*staged)) ahead_ = std::move(staged);
  return true;
}

}  // namespace dtrain::train
