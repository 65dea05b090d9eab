// PinnedUploader: pinned staging buffers and a copy stream (see pinned_copy.h). Built in every
// configuration; without CUDA it only refuses.
#include "dtrain/tensor/cuda/pinned_copy.h"

#include <cstring>

#include "dtrain/tensor/check.h"
#include "dtrain/tensor/cuda/cuda_backend.h"

#if defined(DTRAIN_HAS_CUDA)
#include <cuda_runtime.h>

#define DTRAIN_PINNED_CHECK(expr)                                                 \
  do {                                                                            \
    const cudaError_t err_ = (expr);                                              \
    if (err_ != cudaSuccess) {                                                    \
      DTRAIN_THROW(::dtrain::Error, "CUDA error ", static_cast<int>(err_), " (",  \
                   cudaGetErrorString(err_), ") in ", #expr, " (pinned upload)"); \
    }                                                                             \
  } while (0)

namespace dtrain::cuda {
namespace {
/// Each tensor starts on this boundary in the staging buffer (DMA-friendly alignment).
constexpr size_t kStagingAlign = 256;
size_t aligned(size_t n) { return (n + kStagingAlign - 1) / kStagingAlign * kStagingAlign; }
}  // namespace

struct PinnedUploader::Impl {
  struct Slot {
    void* pinned = nullptr;
    size_t capacity = 0;
    cudaEvent_t copied = nullptr;  // recorded on the copy stream after the slot's copies
  };
  cudaStream_t stream = nullptr;
  cudaEvent_t default_stream_mark = nullptr;
  std::vector<Slot> slots;
  int64_t next_ticket = 0;
};

PinnedUploader::PinnedUploader(int device, int slots)
    : device_(device), impl_(std::make_unique<Impl>()) {
  DTRAIN_CHECK(slots >= 1, "PinnedUploader: needs at least one staging slot; got ", slots);
  DeviceGuard guard(device);
  DTRAIN_PINNED_CHECK(cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking));
  DTRAIN_PINNED_CHECK(
      cudaEventCreateWithFlags(&impl_->default_stream_mark, cudaEventDisableTiming));
  impl_->slots.resize(slots);
  for (Impl::Slot& s : impl_->slots) {
    DTRAIN_PINNED_CHECK(cudaEventCreateWithFlags(&s.copied, cudaEventDisableTiming));
  }
}

PinnedUploader::~PinnedUploader() {
  if (!impl_) return;
  try {
    DeviceGuard guard(device_);
  } catch (const std::exception&) {
    // A faulted device: release what can still be released.
  }
  // The buffers may still be read by copies in flight.
  if (impl_->stream) cudaStreamSynchronize(impl_->stream);
  for (Impl::Slot& s : impl_->slots) {
    if (s.pinned) cudaFreeHost(s.pinned);
    if (s.copied) cudaEventDestroy(s.copied);
  }
  if (impl_->default_stream_mark) cudaEventDestroy(impl_->default_stream_mark);
  if (impl_->stream) cudaStreamDestroy(impl_->stream);
}

PinnedUploader::Upload PinnedUploader::start(const std::vector<Tensor>& host) {
  size_t total = 0;
  for (const Tensor& h : host) {
    DTRAIN_CHECK(h.defined() && h.device().is_cpu(), "PinnedUploader: uploads host tensors; got ",
                 h.defined() ? h.describe() : "an undefined tensor");
    total += aligned(h.nbytes());
  }
  DeviceGuard guard(device_);
  Upload up;
  up.ticket = impl_->next_ticket++;
  Impl::Slot& slot = impl_->slots[up.ticket % static_cast<int64_t>(impl_->slots.size())];
  // The upload that used this buffer before must have left it.
  DTRAIN_PINNED_CHECK(cudaEventSynchronize(slot.copied));
  if (total > slot.capacity) {
    if (slot.pinned) DTRAIN_PINNED_CHECK(cudaFreeHost(slot.pinned));
    slot.pinned = nullptr;
    slot.capacity = 0;
    DTRAIN_PINNED_CHECK(cudaHostAlloc(&slot.pinned, total, cudaHostAllocDefault));
    slot.capacity = total;
  }
  // The allocator hands out a block freed by default-stream work at once (that stream orders
  // its own users); this stream is not ordered after it, so it waits for what is queued there.
  DTRAIN_PINNED_CHECK(cudaEventRecord(impl_->default_stream_mark, cudaStreamLegacy));
  DTRAIN_PINNED_CHECK(cudaStreamWaitEvent(impl_->stream, impl_->default_stream_mark, 0));
  char* staging = static_cast<char*>(slot.pinned);
  for (const Tensor& h : host) {
    Tensor d(h.shape(), h.dtype(), Device::cuda(device_));
    const size_t n = h.nbytes();
    if (n > 0) {
      std::memcpy(staging, h.data_ptr(), n);
      DTRAIN_PINNED_CHECK(
          cudaMemcpyAsync(d.data_ptr(), staging, n, cudaMemcpyHostToDevice, impl_->stream));
      // Dropped before the default stream used it, its block waits for this stream.
      record_stream(*d.storage(), impl_->stream);
    }
    staging += aligned(n);
    up.tensors.push_back(std::move(d));
  }
  DTRAIN_PINNED_CHECK(cudaEventRecord(slot.copied, impl_->stream));
  return up;
}

void PinnedUploader::make_default_stream_wait(const Upload& upload) {
  const auto slots = static_cast<int64_t>(impl_->slots.size());
  DTRAIN_CHECK(upload.ticket >= 0 && upload.ticket < impl_->next_ticket &&
                   upload.ticket + slots >= impl_->next_ticket,
               "PinnedUploader: upload #", upload.ticket, " is not one of the last ", slots,
               " (next is #", impl_->next_ticket, "); its staging buffer was reused");
  DeviceGuard guard(device_);
  DTRAIN_PINNED_CHECK(
      cudaStreamWaitEvent(cudaStreamLegacy, impl_->slots[upload.ticket % slots].copied, 0));
}

}  // namespace dtrain::cuda

#else  // no CUDA

namespace dtrain::cuda {

struct PinnedUploader::Impl {};

PinnedUploader::PinnedUploader(int device, int) : device_(device) {
  DTRAIN_THROW(UnsupportedError,
               "PinnedUploader: this dtrain was built without CUDA (configure with "
               "-DDTRAIN_CUDA=ON and nvcc)");
}
PinnedUploader::~PinnedUploader() = default;
PinnedUploader::Upload PinnedUploader::start(const std::vector<Tensor>&) { return {}; }
void PinnedUploader::make_default_stream_wait(const Upload&) {}

}  // namespace dtrain::cuda

#endif
