// Host-to-device copies that overlap compute: each upload is staged through a pinned (page-locked)
// host buffer, reused from one upload to the next, and copied on a stream of its own, so the DMA
// runs while the default stream computes. The default stream waits for an upload through an event,
// never the host. No CUDA type appears here; in a build without CUDA the constructor throws
// UnsupportedError.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "dtrain/tensor/tensor.h"

namespace dtrain::cuda {

class PinnedUploader {
 public:
  /// Uploads to cuda:`device` through `slots` staging buffers used in turn. An upload waits, on
  /// the host, for the one `slots` uploads before it to have left its buffer (long done when the
  /// default stream has used it since).
  explicit PinnedUploader(int device, int slots = 2);
  ~PinnedUploader();
  PinnedUploader(const PinnedUploader&) = delete;
  PinnedUploader& operator=(const PinnedUploader&) = delete;

  struct Upload {
    std::vector<Tensor> tensors;  // on cuda:device, in the order given to start()
    int64_t ticket = 0;
  };
  /// Starts copying `host` (CPU tensors) to new tensors on the device and returns them. Their
  /// values are copied into the staging buffer before this returns, so `host` may change at once.
  /// The copies run after all work queued on the default stream so far (the new tensors' blocks
  /// may have just been freed by it); default-stream work may read them only after
  /// make_default_stream_wait().
  Upload start(const std::vector<Tensor>& host);
  /// Orders the device's default stream after `upload`'s copies; the host does not wait. Throws
  /// ValueError when `upload` is older than the last `slots` uploads (its buffer was reused).
  void make_default_stream_wait(const Upload& upload);
  int device() const { return device_; }

 private:
  struct Impl;
  int device_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dtrain::cuda
