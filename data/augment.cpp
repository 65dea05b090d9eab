// AugmentedDataset: the base fills the batch, then each example is cropped, flipped and normalised
// in place with choices drawn from Philox keyed by (seed, epoch, index).
#include "dtrain/data/augment.h"

#include <cmath>
#include <sstream>

#include "dtrain/tensor/check.h"
#include "dtrain/tensor/kernels.h"

namespace dtrain::data {
namespace {

// Tags the Philox stream so augmentation draws never coincide with the sampler's permutation,
// which uses stream = epoch, when both get the same seed.
constexpr uint64_t kAugmentStreamTag = uint64_t{0xA6} << 56;

/// A uniform integer in [0, n) from 32 random bits (multiply-shift; bias below n / 2^32).
int64_t uniform_below(uint32_t bits, int64_t n) {
  return static_cast<int64_t>((static_cast<uint64_t>(bits) * static_cast<uint64_t>(n)) >> 32);
}

std::string floats_str(const std::vector<float>& v) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  os << ']';
  return os.str();
}

}  // namespace

AugmentedDataset::AugmentedDataset(DatasetPtr base, AugmentOptions options)
    : base_(std::move(base)), options_(std::move(options)) {
  DTRAIN_CHECK(base_ != nullptr, "AugmentedDataset: needs a dataset");
  const Shape shape = base_->example_shape();
  DTRAIN_CHECK(shape.size() == 3 && base_->example_dtype() == DType::kFloat32, "AugmentedDataset(",
               base_->describe(), "): examples are ", dtype_name(base_->example_dtype()),
               shape_str(shape), "; expected float32 images [C, H, W]");
  channels_ = shape[0];
  height_ = shape[1];
  width_ = shape[2];
  DTRAIN_CHECK(options_.crop_padding >= 0, "AugmentedDataset(", base_->describe(),
               "): crop_padding is ", options_.crop_padding, "; expected >= 0 pixels");
  const auto per_channel = [&](const std::vector<float>& v, const char* name) {
    DTRAIN_CHECK(v.empty() || v.size() == 1 || static_cast<int64_t>(v.size()) == channels_,
                 "AugmentedDataset(", base_->describe(), "): ", name, " has ", v.size(), " values ",
                 floats_str(v), "; expected none, one, or one per channel (", channels_, ")");
  };
  per_channel(options_.mean, "mean");
  per_channel(options_.std, "std");
  for (float s : options_.std) {
    DTRAIN_CHECK(s > 0 && std::isfinite(s), "AugmentedDataset(", base_->describe(), "): std ",
                 floats_str(options_.std), " has a value that is not positive and finite");
  }
  scale_.assign(channels_, 1.0f);
  shift_.assign(channels_, 0.0f);
  for (int64_t c = 0; c < channels_; ++c) {
    const auto at = [c](const std::vector<float>& v, float fallback) {
      return v.empty() ? fallback : v[v.size() == 1 ? 0 : c];
    };
    scale_[c] = 1.0f / at(options_.std, 1.0f);
    shift_[c] = -at(options_.mean, 0.0f) * scale_[c];
  }
}

AugmentedDataset::Choice AugmentedDataset::choice(int64_t index, int64_t epoch) const {
  const kernels::Philox4 r =
      kernels::philox(options_.seed, kAugmentStreamTag ^ static_cast<uint64_t>(epoch),
                      static_cast<uint64_t>(index));
  Choice c;
  const int64_t positions = 2 * options_.crop_padding + 1;
  c.dy = uniform_below(r.v[0], positions);
  c.dx = uniform_below(r.v[1], positions);
  c.flip = options_.horizontal_flip && (r.v[2] >> 31) != 0;
  return c;
}

void AugmentedDataset::fill_batch(const std::vector<int64_t>& indices, Tensor& x, Tensor& y) const {
  fill_batch_for_epoch(indices, 0, x, y);
}

void AugmentedDataset::fill_batch_for_epoch(const std::vector<int64_t>& indices, int64_t epoch,
                                            Tensor& x, Tensor& y) const {
  base_->fill_batch_for_epoch(indices, epoch, x, y);
  const int64_t plane = height_ * width_, example = channels_ * plane;
  const int64_t pad = options_.crop_padding;
  float* xs = x.data<float>();
  std::vector<float> source(static_cast<size_t>(example));
  for (size_t b = 0; b < indices.size(); ++b) {
    float* dst = xs + b * example;
    const Choice ch = choice(indices[b], epoch);
    std::copy(dst, dst + example, source.begin());
    for (int64_t c = 0; c < channels_; ++c) {
      const float* src_plane = source.data() + c * plane;
      float* dst_plane = dst + c * plane;
      for (int64_t row = 0; row < height_; ++row) {
        // Output (row, col) shows padded pixel (row + dy, col' + dx), i.e. source pixel
        // (row + dy - pad, col' + dx - pad), where col' is col mirrored when flipping.
        const int64_t sy = row + ch.dy - pad;
        for (int64_t col = 0; col < width_; ++col) {
          const int64_t sx = (ch.flip ? width_ - 1 - col : col) + ch.dx - pad;
          const bool inside = sy >= 0 && sy < height_ && sx >= 0 && sx < width_;
          const float v = inside ? src_plane[sy * width_ + sx] : 0.0f;  // zero padding
          dst_plane[row * width_ + col] = v * scale_[c] + shift_[c];
        }
      }
    }
  }
}

std::string AugmentedDataset::describe() const {
  std::ostringstream os;
  os << "AugmentedDataset(crop padding " << options_.crop_padding << ", flip "
     << (options_.horizontal_flip ? "on" : "off");
  if (!options_.mean.empty()) os << ", mean " << floats_str(options_.mean);
  if (!options_.std.empty()) os << ", std " << floats_str(options_.std);
  os << ", seed " << options_.seed << " of " << base_->describe() << ")";
  return os.str();
}

}  // namespace dtrain::data
