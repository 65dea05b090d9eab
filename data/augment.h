// Random image augmentation (crop with zero padding, horizontal flip) and per-channel
// normalisation, as a dataset that wraps the training split.
#pragma once

#include <cstdint>
#include <vector>

#include "dtrain/data/dataset.h"

namespace dtrain::data {

struct AugmentOptions {
  /// Pad each side with this many zero pixels, then crop a random H x W window (0: no crop).
  int64_t crop_padding = 0;
  /// Mirror left-right with probability 1/2.
  bool horizontal_flip = false;
  /// Per channel, applied last: (x - mean[c]) / std[c]. Empty: no normalisation; one value: every
  /// channel; otherwise one per channel. In the base dataset's units (e.g. [0, 1] after kUnit).
  std::vector<float> mean{}, std{};
  /// Keys the random choices together with the epoch and the example index.
  uint64_t seed = 0;
};

/// Wraps an image dataset with examples [C, H, W] (float32). Example i of epoch e is base example
/// i cropped, then flipped, then normalised, with the choices drawn from Philox(key = seed,
/// stream = a tag ^ e, counter = i): a pure function of (seed, e, i), never of a shared generator's
/// state, so batches are the same whatever the loader's threads, prefetch depth, replica count or
/// resume point. The DataLoader passes the epoch through fill_batch_for_epoch; fill_batch (no
/// epoch) gives epoch 0. Wrap only the training split with random options; to normalise the test
/// split the same way, wrap it with mean and std alone (crop_padding 0, no flip: deterministic).
class AugmentedDataset final : public Dataset {
 public:
  /// Throws ValueError when base's examples are not float32 [C, H, W], crop_padding < 0, or
  /// mean/std have a size other than 0, 1 or C, or a std is not positive.
  AugmentedDataset(DatasetPtr base, AugmentOptions options);
  int64_t size() const override { return base_->size(); }
  Shape example_shape() const override { return base_->example_shape(); }
  Shape label_shape() const override { return base_->label_shape(); }
  int64_t num_classes() const override { return base_->num_classes(); }
  void fill_batch(const std::vector<int64_t>& indices, Tensor& x, Tensor& y) const override;
  void fill_batch_for_epoch(const std::vector<int64_t>& indices, int64_t epoch, Tensor& x,
                            Tensor& y) const override;
  std::string describe() const override;

  /// The random choices for example `index` in `epoch`: the crop's offsets into the padded image,
  /// each in [0, 2 * crop_padding], and whether it is flipped.
  struct Choice {
    int64_t dy = 0, dx = 0;
    bool flip = false;
  };
  Choice choice(int64_t index, int64_t epoch) const;

 private:
  DatasetPtr base_;
  AugmentOptions options_;
  int64_t channels_ = 0, height_ = 0, width_ = 0;
  std::vector<float> scale_, shift_;  // per channel: x * scale + shift
};

}  // namespace dtrain::data
