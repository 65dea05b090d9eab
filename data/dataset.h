// Datasets: indexed collections of (example, label) pairs that fill batches. Images come from IDX
// (idx.h), CIFAR (cifar.h) or .npy files (npy.h), text from token streams (token_stream.h),
// benchmarks use a seeded synthetic set (synthetic.h); augment.h wraps image sets.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dtrain/tensor/tensor.h"

namespace dtrain::data {

/// Pixel normalisation applied when images are loaded.
enum class Normalize {
  kNone,      // raw byte values 0..255 as float
  kUnit,      // x / 255, in [0, 1]
  kStandard,  // (x / 255 - mean) / std with the training split's statistics
};
/// Parses "none", "unit", "standard"; throws ValueError listing the valid names otherwise.
Normalize parse_normalize(const std::string& name);
/// "none", "unit" or "standard", for describe().
const char* normalize_name(Normalize normalize);

/// Read-only after construction, so batches may be filled from several threads.
///
/// Epochs: the DataLoader calls fill_batch_for_epoch with the epoch it is producing. Datasets whose
/// examples change from epoch to epoch (random augmentation, augment.h) override it and must make
/// the result a function of (indices, epoch) alone, with no state carried between calls, so a
/// batch does not depend on the thread, replica or resume point that fills it. Wrappers forward the
/// epoch to the dataset they wrap. Everyone else implements only fill_batch.
class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  /// Shape of one example, e.g. [1, 28, 28] for images, [784] for flat vectors, [T] for tokens.
  virtual Shape example_shape() const = 0;
  /// Element type of x: float32 for images and features, int64 for token ids.
  virtual DType example_dtype() const { return DType::kFloat32; }
  /// Shape of one label: [] for a class index, [T] for a token window's next tokens.
  virtual Shape label_shape() const { return {}; }
  /// Labels lie in [0, num_classes()); for token streams this is the vocabulary size.
  virtual int64_t num_classes() const = 0;
  /// Fills x [B, example_shape...] (example_dtype) and y [B, label_shape...] (int64) with the
  /// examples `indices`. x and y are allocated by the caller with B = indices.size().
  virtual void fill_batch(const std::vector<int64_t>& indices, Tensor& x, Tensor& y) const = 0;
  /// fill_batch as seen in epoch `epoch` (see the class comment); the default ignores the epoch.
  virtual void fill_batch_for_epoch(const std::vector<int64_t>& indices, int64_t epoch, Tensor& x,
                                    Tensor& y) const {
    (void)epoch;
    fill_batch(indices, x, y);
  }
  virtual std::string describe() const = 0;
};

using DatasetPtr = std::shared_ptr<const Dataset>;

/// A data set's train and test splits.
struct Splits {
  DatasetPtr train, test;
};

namespace detail {
/// Checks a fill_batch call (naming `dataset`): x holds indices.size() examples of
/// example_dtype() (any shape with that many elements), y is int64 [B, label_shape...], both on
/// the CPU, and every index lies in [0, size()).
void check_batch(const Dataset& dataset, const std::vector<int64_t>& indices, const Tensor& x,
                 const Tensor& y);
/// fill_batch for data sets held as one float row of `example_numel` values per example plus a
/// label each: checks x, y and the indices (naming `dataset`), then copies the rows.
void fill_batch_from_rows(const Dataset& dataset, const std::vector<float>& rows,
                          const std::vector<int64_t>& labels, const std::vector<int64_t>& indices,
                          Tensor& x, Tensor& y);
/// `bytes` as a decimal with a binary unit for messages: "1.5 GiB (1610612736 bytes)".
std::string bytes_str(uint64_t bytes);
}  // namespace detail

}  // namespace dtrain::data
