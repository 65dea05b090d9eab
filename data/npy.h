// NumPy .npy arrays (format versions 1.0, 2.0 and 3.0), memory-mapped, and NpyDataset: images or
// features in one .npy file, their labels in another.
#pragma once

#include <memory>
#include <string>

#include "dtrain/data/dataset.h"
#include "dtrain/data/mapped_file.h"

namespace dtrain::data {

/// The element types read_npy accepts, with numpy's type strings.
enum class NpyDType {
  kFloat32,  // '<f4'
  kFloat64,  // '<f8'
  kUInt8,    // '|u1'
  kInt32,    // '<i4'
  kInt64,    // '<i8'
  kUInt16,   // '<u2'
  kUInt32,   // '<u4'
};

/// A C-order array whose values stay in the mapped file. Copies share the mapping; read-only, so
/// any number of threads may read it.
struct NpyArray {
  std::string path;
  std::string descr;  // numpy's type string, e.g. "<f4"
  NpyDType dtype = NpyDType::kFloat32;
  size_t item_bytes = 0;
  Shape shape;  // [] for a scalar
  std::shared_ptr<const MappedFile> file;
  size_t data_offset = 0;  // where the values start in the file

  int64_t numel() const { return shape_numel(shape); }
  /// The raw little-endian values (not necessarily aligned to item_bytes).
  const uint8_t* data() const { return file->data() + data_offset; }
  bool is_integer() const { return dtype != NpyDType::kFloat32 && dtype != NpyDType::kFloat64; }
  /// Elements [first, first + count) converted to float and multiplied by `scale`.
  void read_float(int64_t first, int64_t count, float scale, float* out) const;
  /// Elements [first, first + count) converted to int64 (floating arrays are rejected).
  void read_int64(int64_t first, int64_t count, int64_t* out) const;
};

/// Maps `path` and parses its header: magic "\x93NUMPY", version 1.0/2.0/3.0, a dict with 'descr'
/// (one of NpyDType's), 'fortran_order' (False; Fortran order is refused) and 'shape'. The size the
/// header implies must equal the bytes after it. Every error names the file and what is wrong.
NpyArray read_npy(const std::string& path);

/// Examples from x_path ([N, ...], any NpyDType, converted to float32 times `scale`) with labels
/// from y_path ([N] or [N, 1], an integer type). Both files stay mapped: x is converted at
/// fill_batch time, so a big array is never read whole into memory. Labels are read and checked at
/// construction: each must lie in [0, num_classes), else the error names the file, the index and
/// the value.
class NpyDataset final : public Dataset {
 public:
  /// num_classes 0: the largest label + 1. scale: e.g. 1/255 for uint8 images.
  NpyDataset(std::string x_path, std::string y_path, int64_t num_classes = 0, float scale = 1.0f);
  int64_t size() const override { return n_; }
  Shape example_shape() const override { return example_shape_; }  // x's shape without dim 0
  int64_t num_classes() const override { return classes_; }
  void fill_batch(const std::vector<int64_t>& indices, Tensor& x, Tensor& y) const override;
  std::string describe() const override;

 private:
  NpyArray x_;
  std::string y_path_;
  int64_t n_ = 0, classes_ = 0, example_numel_ = 0;
  float scale_;
  Shape example_shape_;
  std::vector<int64_t> labels_;
};

}  // namespace dtrain::data
