// DevicePrefetcher: every batch of the source is handed out once, in order, with or without the
// look-ahead, also at the end of an epoch, under the caller's limit, and when an epoch resumes
// part-way; on the CPU without look-ahead it takes nothing ahead. On a GPU (skipped without one):
// batches arrive intact through the pinned copy stream, and a held default stream shows that a
// handed-out batch is ordered after its copy.
#include "dtrain/train/device_prefetch.h"

#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "dtrain/data/loader.h"
#include "dtrain/data/synthetic.h"
#include "dtrain/tensor/cuda/cuda_backend.h"
#include "dtrain/tensor/cuda/pinned_copy.h"
#include "dtrain/tensor/tensor.h"

namespace dtrain::train {
namespace {

/// A source of `n` batches whose x holds its own number, counting how often it is called.
struct CountingSource {
  int64_t n = 0;
  int64_t calls = 0;
  int64_t produced = 0;
  bool called_after_end = false;
  bool ended = false;
  bool operator()(data::Batch& b) {
    ++calls;
    if (ended) called_after_end = true;
    if (produced == n) {
      ended = true;
      return false;
    }
    b.x = full({2, 3}, static_cast<double>(produced), DType::kFloat32);
    b.y = full({2}, static_cast<double>(produced), DType::kInt64);
    b.index = produced++;
    return true;
  }
};

/// Drains `prefetcher`, returning the indices handed out; checks each batch's contents match it.
std::vector<int64_t> drain(DevicePrefetcher& prefetcher) {
  std::vector<int64_t> seen;
  data::Batch b;
  while (seen.size() < 1000 && prefetcher.next(b)) {
    seen.push_back(b.index);
    EXPECT_EQ(b.x.to_vector<float>(), std::vector<float>(6, static_cast<float>(b.index)));
  }
  return seen;
}

std::vector<int64_t> iota(int64_t from, int64_t to) {
  std::vector<int64_t> v;
  for (int64_t i = from; i < to; ++i) v.push_back(i);
  return v;
}

TEST(DevicePrefetch, OnTheCpuBatchesPassThroughWithNothingTakenAhead) {
  auto source = std::make_shared<CountingSource>();
  source->n = 5;
  DevicePrefetcher prefetcher(Device::cpu(), [source](data::Batch& b) { return (*source)(b); });
  EXPECT_FALSE(prefetcher.looks_ahead());
  data::Batch b;
  for (int64_t i = 0; i < 5; ++i) {
    ASSERT_TRUE(prefetcher.next(b));
    EXPECT_EQ(b.index, i);
    EXPECT_EQ(source->calls, i + 1) << "a batch was taken before it was asked for";
  }
  EXPECT_FALSE(prefetcher.next(b));
  EXPECT_EQ(b.index, 4) << "the end changed the last batch";
  EXPECT_FALSE(source->called_after_end);
}

TEST(DevicePrefetch, LookingAheadHandsOutEveryBatchOnceInOrderThroughTheEpochsEnd) {
  for (int64_t n : {0, 1, 2, 7}) {
    auto source = std::make_shared<CountingSource>();
    source->n = n;
    DevicePrefetchOptions options;
    options.look_ahead = true;
    DevicePrefetcher prefetcher(
        Device::cpu(), [source](data::Batch& b) { return (*source)(b); }, options);
    data::Batch b;
    if (n > 0) {
      ASSERT_TRUE(prefetcher.next(b));
      EXPECT_EQ(b.index, 0);
      EXPECT_EQ(prefetcher.taken(), std::min<int64_t>(n, 2)) << "the next batch is taken ahead";
      std::vector<int64_t> rest = drain(prefetcher);
      rest.insert(rest.begin(), 0);
      EXPECT_EQ(rest, iota(0, n)) << n << " batches";
    } else {
      EXPECT_FALSE(prefetcher.next(b));
    }
    EXPECT_FALSE(prefetcher.next(b)) << "asked again after the end";
    EXPECT_EQ(prefetcher.taken(), n);
    EXPECT_EQ(source->calls, n + 1) << "the end is asked for once";
    EXPECT_FALSE(source->called_after_end);
  }
}

TEST(DevicePrefetch, TheLimitKeepsTheLookAheadWithinTheCallersBound) {
  for (int64_t limit : {0, 1, 4, 10, 12}) {
    auto source = std::make_shared<CountingSource>();
    source->n = 10;
    DevicePrefetchOptions options;
    options.look_ahead = true;
    options.limit = limit;
    DevicePrefetcher prefetcher(
        Device::cpu(), [source](data::Batch& b) { return (*source)(b); }, options);
    EXPECT_EQ(drain(prefetcher), iota(0, std::min<int64_t>(limit, 10))) << "limit " << limit;
    EXPECT_EQ(source->produced, std::min<int64_t>(limit, 10))
        << "limit " << limit << ": a batch beyond the caller's bound was taken";
  }
}

/// The x of every batch a loader gives for epoch `epoch` from batch `skip` on, directly or
/// through a prefetcher.
std::vector<std::vector<float>> epoch_batches(bool through_prefetcher, int64_t epoch,
                                              int64_t skip) {
  auto dataset = std::make_shared<data::SyntheticDataset>(29, Shape{3}, 4, /*seed=*/11);
  data::DataLoader loader(dataset,
                          data::DistributedSampler(29, /*num_replicas=*/2, /*rank=*/1,
                                                   /*shuffle=*/true, /*seed=*/3,
                                                   /*drop_last=*/false),
                          /*batch_size=*/4, /*drop_last=*/false);
  loader.start_epoch(epoch, skip);
  std::vector<std::vector<float>> out;
  data::Batch b;
  if (!through_prefetcher) {
    while (loader.next(b)) out.push_back(b.x.to_vector<float>());
    return out;
  }
  DevicePrefetchOptions options;
  options.look_ahead = true;
  DevicePrefetcher prefetcher(
      Device::cpu(), [&loader](data::Batch& into) { return loader.next(into); }, options);
  while (prefetcher.next(b)) out.push_back(b.x.to_vector<float>());
  return out;
}

TEST(DevicePrefetch, AResumedEpochContinuesWithTheSameBatchesAsTheLoader) {
  for (int64_t skip : {0, 1, 3}) {
    const auto direct = epoch_batches(false, /*epoch=*/2, skip);
    ASSERT_EQ(direct.size(), static_cast<size_t>(4 - skip));  // 15 examples in batches of 4
    EXPECT_EQ(epoch_batches(true, 2, skip), direct) << "resumed at batch " << skip;
  }
}

TEST(DevicePrefetch, CudaBatchesArriveIntactThroughThePinnedCopyStream) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  auto source = std::make_shared<CountingSource>();
  source->n = 9;  // more batches than staging buffers: each buffer is reused
  DevicePrefetcher prefetcher(Device::cuda(0), [source](data::Batch& b) { return (*source)(b); });
  EXPECT_TRUE(prefetcher.looks_ahead());
  data::Batch b;
  int64_t expected = 0;
  while (prefetcher.next(b)) {
    ASSERT_EQ(b.x.device(), Device::cuda(0));
    ASSERT_EQ(b.y.device(), Device::cuda(0));
    EXPECT_EQ(b.index, expected);
    EXPECT_EQ(b.x.to_vector<float>(), std::vector<float>(6, static_cast<float>(expected)));
    EXPECT_EQ(b.y.to_vector<int64_t>(), std::vector<int64_t>(2, expected));
    ++expected;
  }
  EXPECT_EQ(expected, 9);
}

TEST(DevicePrefetch, CudaUploadIsOrderedBeforeDefaultStreamWorkWithoutAHostWait) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  cuda::PinnedUploader uploader(0);
  Tensor host = full({1 << 16}, 3.0, DType::kFloat32);
  Tensor seen = zeros({1 << 16}, DType::kFloat32, Device::cuda(0));
  // Staging buffers and device blocks exist before the default stream is held.
  for (int i = 0; i < 2; ++i) uploader.make_default_stream_wait(uploader.start({host}));
  cuda::synchronize(0);
  cuda::PinnedUploader::Upload up;
  {
    // The copy waits for the default stream's work queued before it, so it is pending here.
    cuda::DefaultStreamHold hold(0);
    up = uploader.start({host});
    host.fill_(-1.0);  // the values were staged when start() returned
    uploader.make_default_stream_wait(up);
    seen.copy_(up.tensors[0]);  // device to device on the default stream, after the upload
  }
  EXPECT_EQ(seen.to_vector<float>(), std::vector<float>(1 << 16, 3.0f));
  EXPECT_EQ(up.tensors[0].to_vector<float>(), std::vector<float>(1 << 16, 3.0f));
  cuda::PinnedUploader::Upload second = uploader.start({host});
  cuda::PinnedUploader::Upload third = uploader.start({host});
  EXPECT_THROW(uploader.make_default_stream_wait(up), ValueError) << "its buffer was reused";
  uploader.make_default_stream_wait(third);
  EXPECT_EQ(third.tensors[0].to_vector<float>(), std::vector<float>(1 << 16, -1.0f));
}

}  // namespace
}  // namespace dtrain::train
