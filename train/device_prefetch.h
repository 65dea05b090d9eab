// DevicePrefetcher: hands out a source's batches on the training device, in order and each exactly
// once. On a GPU it looks one batch ahead: as it hands out batch t it already takes batch t+1 and
// starts copying it through a pinned host buffer on a copy stream of its own, so that copy runs
// while the caller computes on t; the default stream waits for a batch's copy through an event when
// the batch is handed out, never the host. On the CPU it passes batches through as they come.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>

#include "dtrain/data/loader.h"
#include "dtrain/tensor/tensor.h"

namespace dtrain::cuda {
class PinnedUploader;
}

namespace dtrain::train {

struct DevicePrefetchOptions {
  /// Take the next batch from the source as soon as one is handed out. Unset: on CUDA devices
  /// only (on the CPU there is no copy to overlap, and batches come exactly as without it).
  std::optional<bool> look_ahead;
  /// At most this many batches are taken from the source: the caller's own bound, so that the
  /// look-ahead never takes a batch the caller would not have used. Negative: no bound. A caller
  /// that stops before the bound leaves at most one batch taken and never handed out.
  int64_t limit = -1;
};

class DevicePrefetcher {
 public:
  /// Fills its argument with the next batch (host tensors) and returns true, or returns false at
  /// the end; it is not called again after returning false.
  using Source = std::function<bool(data::Batch&)>;

  DevicePrefetcher(Device device, Source source, DevicePrefetchOptions options = {});
  ~DevicePrefetcher();
  DevicePrefetcher(const DevicePrefetcher&) = delete;
  DevicePrefetcher& operator=(const DevicePrefetcher&) = delete;

  /// The next batch, its x and y on the device; false once the source has ended or the limit is
  /// reached (`out` is then left as it was).
  bool next(data::Batch& out);
  /// Batches taken from the source so far: those handed out, and the one staged ahead.
  int64_t taken() const { return taken_; }
  bool looks_ahead() const { return look_ahead_; }

 private:
  struct Staged;
  /// Takes the next batch from the source into `into`, starting its copy to the device.
  bool take(Staged& into);
  /// Makes `staged` usable by the caller (the default stream waits for its copy) and moves it out.
  void hand_out(Staged& staged, data::Batch& out);

  Device device_;
  Source source_;
  bool look_ahead_;
  int64_t limit_;
  int64_t taken_ = 0;
  bool ended_ = false;                              // the source returned false
  std::unique_ptr<cuda::PinnedUploader> uploader_;  // on a CUDA device
  std::unique_ptr<Staged> ahead_;                   // the batch taken ahead, if any
};

}  // namespace dtrain::train
