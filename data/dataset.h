// Datasets: indexed collections of (example, label) pairs that fill batches. Fashion-MNIST comes
// from IDX files (idx.h), benchmarks use a seeded synthetic set (synthetic.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace dtrain::data {

/// Pixel normalisation applied when images are loaded.
enum class Normalize {
  kNone,      // raw byte values 0..255 as float
  kUnit,      // x / 255, in [0, 1]
  kStandard,  // (x / 255 - mean) / std with the training split's statistics
};
/// Parses "none", "unit", "standard"; throws ValueError listing the valid names otherwise.
Normalize parse_normalize(const std::string& name);

/// Read-only after construction, so batches may be filled from several threads.
class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  /// Shape of one example, e.g. [1, 28, 28] for images or [784] for flat vectors.
  virtual Shape example_shape() const = 0;
  virtual int64_t num_classes() const = 0;
  /// Fills x [B, example_shape...] (float32) and y [B] (int64) with the examples `indices`.
  /// x and y are allocated by the caller with B = indices.size().
  virtual void fill_batch(const std::vector<int64_t>& indices, Tensor& x, Tensor& y) const = 0;
  virtual std::string describe() const = 0;
};

using DatasetPtr = std::shared_ptr<const Dataset>;

namespace detail {
/// fill_batch for data sets held as one float row of `example_numel` values per example plus a
/// label each: checks x, y and the indices (naming `dataset`), then copies the rows.
void fill_batch_from_rows(const Dataset& dataset, const std::vector<float>& rows,
                          const std::vector<int64_t>& labels, const std::vector<int64_t>& indices,
                          Tensor& x, Tensor& y);
}  // namespace detail

}  // namespace dtrain::data
