// IDX reader (gzip or plain, through zlib) with header validation, and the Fashion-MNIST loader
// that finds the four split files in a directory.
#include "data/idx.h"

#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "tensor/check.h"

namespace dtrain::data {
namespace {

// Per-pixel mean and standard deviation of the Fashion-MNIST training split after scaling to
// [0, 1] (the values torchvision users normalise with); used for both splits so that test data
// sees the same transform as training data.
constexpr float kFashionMnistMean = 0.2860f;
constexpr float kFashionMnistStd = 0.3530f;

constexpr uint8_t kUnsignedByteType = 0x08;

/// The whole file, decompressed when it is gzip (zlib passes plain files through unchanged).
std::vector<uint8_t> read_all(const std::string& path) {
  std::error_code ec;
  DTRAIN_CHECK(std::filesystem::is_regular_file(path, ec), "IDX file '", path,
               "': not found (or not a regular file)");
  gzFile file = gzopen(path.c_str(), "rb");
  DTRAIN_CHECK(file != nullptr, "IDX file '", path, "': cannot open: ", std::strerror(errno));
  std::vector<uint8_t> bytes;
  constexpr size_t kChunk = 1 << 20;
  for (;;) {
    const size_t used = bytes.size();
    bytes.resize(used + kChunk);
    const int got = gzread(file, bytes.data() + used, static_cast<unsigned>(kChunk));
    if (got < 0) {
      int code = 0;
      const std::string msg = gzerror(file, &code);
      gzclose(file);
      DTRAIN_THROW(ValueError, "IDX file '", path, "': read failed: ", msg);
    }
    bytes.resize(used + static_cast<size_t>(got));
    if (got == 0) break;
  }
  // A gzip stream cut short still yields its prefix; zlib reports it as Z_BUF_ERROR.
  int code = Z_OK;
  const std::string msg = gzerror(file, &code);
  gzclose(file);
  DTRAIN_CHECK(code == Z_OK, "IDX file '", path, "': gzip stream is truncated or corrupt (", msg,
               ")");
  return bytes;
}

uint32_t read_be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

struct IdxContents {
  std::vector<int64_t> dims;
  std::vector<uint8_t> bytes;  // the file, header included
  size_t data_offset = 0;
  const uint8_t* data() const { return bytes.data() + data_offset; }
};

/// Reads and validates an unsigned-byte IDX file of the given rank; `what` names the expected
/// content in messages ("images [N, H, W]").
IdxContents read_idx(const std::string& path, int expected_rank, const char* what) {
  IdxContents idx;
  idx.bytes = read_all(path);
  const auto& b = idx.bytes;
  DTRAIN_CHECK(b.size() >= 4, "IDX file '", path, "': ", b.size(),
               " bytes, too short for the 4-byte magic number");
  const uint32_t magic = read_be32(b.data());
  std::ostringstream magic_hex;
  magic_hex << "0x" << std::hex;
  magic_hex.width(8);
  magic_hex.fill('0');
  magic_hex << magic;
  const std::string expected_magic = expected_rank == 3 ? "0x00000803" : "0x00000801";
  DTRAIN_CHECK(b[0] == 0 && b[1] == 0, "IDX file '", path, "': bad magic ", magic_hex.str(),
               "; expected ", expected_magic, " for ", what, ". Not an IDX file?");
  DTRAIN_CHECK(b[2] == kUnsignedByteType, "IDX file '", path, "': data type 0x", std::hex,
               int{b[2]}, std::dec, " in magic ", magic_hex.str(),
               " is not supported; expected 0x08 (unsigned byte)");
  DTRAIN_CHECK(b[3] == expected_rank, "IDX file '", path, "': wrong rank ", int{b[3]}, " in magic ",
               magic_hex.str(), "; expected ", expected_rank, " for ", what, " (magic ",
               expected_magic, ")");
  idx.data_offset = 4 + 4 * static_cast<size_t>(expected_rank);
  DTRAIN_CHECK(b.size() >= idx.data_offset, "IDX file '", path, "': truncated header: ", b.size(),
               " bytes, expected at least ", idx.data_offset);

  std::ostringstream dims_text;
  unsigned __int128 expected_bytes = 1;
  for (int d = 0; d < expected_rank; ++d) {
    const uint32_t dim = read_be32(b.data() + 4 + 4 * d);
    DTRAIN_CHECK(dim > 0, "IDX file '", path, "': dimension ", d, " is 0; every dimension of ",
                 what, " must be positive");
    idx.dims.push_back(dim);
    dims_text << (d ? " x " : "") << dim;
    expected_bytes *= dim;
  }
  const size_t actual = b.size() - idx.data_offset;
  const bool fits = expected_bytes <= static_cast<unsigned __int128>(SIZE_MAX);
  const std::string expected_text =
      fits ? std::to_string(static_cast<uint64_t>(expected_bytes)) : std::string("> 2^64");
  if (expected_rank > 1) dims_text << " = " << expected_text;
  DTRAIN_CHECK(fits && actual >= static_cast<size_t>(expected_bytes), "IDX file '", path,
               "': truncated: header says ", dims_text.str(), " bytes, file has ", actual,
               " after the ", idx.data_offset, "-byte header");
  DTRAIN_CHECK(actual == static_cast<size_t>(expected_bytes), "IDX file '", path,
               "': trailing bytes: header says ", dims_text.str(), " bytes, file has ", actual,
               " after the ", idx.data_offset, "-byte header (",
               actual - static_cast<size_t>(expected_bytes), " extra)");
  return idx;
}

const char* normalize_name(Normalize normalize) {
  switch (normalize) {
    case Normalize::kNone:
      return "none";
    case Normalize::kUnit:
      return "unit";
    case Normalize::kStandard:
      return "standard";
  }
  return "?";
}

/// `dir`/`name`.gz if present, else `dir`/`name`; empty when neither exists.
std::string find_split_file(const std::filesystem::path& dir, const std::string& name) {
  std::error_code ec;
  for (const std::string& candidate : {name + ".gz", name}) {
    const auto path = dir / candidate;
    if (std::filesystem::is_regular_file(path, ec)) return path.string();
  }
  return {};
}

}  // namespace

IdxDataset::IdxDataset(const std::string& images_path, const std::string& labels_path,
                       Normalize normalize, int64_t num_classes)
    : images_path_(images_path), classes_(num_classes), normalize_(normalize) {
  DTRAIN_CHECK(num_classes >= 1, "IdxDataset('", images_path, "'): num_classes is ", num_classes,
               "; expected >= 1");
  const IdxContents images = read_idx(images_path, 3, "images [N, H, W]");
  const IdxContents labels = read_idx(labels_path, 1, "labels [N]");
  n_ = images.dims[0];
  h_ = images.dims[1];
  w_ = images.dims[2];
  DTRAIN_CHECK(labels.dims[0] == n_, "IDX label file '", labels_path, "' has ", labels.dims[0],
               " labels but image file '", images_path, "' has ", n_,
               " images; expected one label per image. Mixed-up splits?");

  labels_.resize(n_);
  const uint8_t* raw_labels = labels.data();
  for (int64_t i = 0; i < n_; ++i) {
    DTRAIN_CHECK(raw_labels[i] < classes_, "IDX label file '", labels_path, "': label ",
                 int{raw_labels[i]}, " at index ", i, " is out of range; expected 0..",
                 classes_ - 1, " (num_classes = ", classes_, ")");
    labels_[i] = raw_labels[i];
  }

  float scale = 1.0f, shift = 0.0f;  // pixel -> pixel * scale + shift
  if (normalize == Normalize::kUnit) {
    scale = 1.0f / 255.0f;
  } else if (normalize == Normalize::kStandard) {
    scale = 1.0f / (255.0f * kFashionMnistStd);
    shift = -kFashionMnistMean / kFashionMnistStd;
  }
  const size_t count = static_cast<size_t>(n_ * h_ * w_);
  pixels_.resize(count);
  const uint8_t* raw_pixels = images.data();
  for (size_t i = 0; i < count; ++i) pixels_[i] = raw_pixels[i] * scale + shift;
}

int64_t IdxDataset::size() const { return n_; }
Shape IdxDataset::example_shape() const { return {1, h_, w_}; }
int64_t IdxDataset::num_classes() const { return classes_; }

void IdxDataset::fill_batch(const std::vector<int64_t>& indices, Tensor& x, Tensor& y) const {
  detail::fill_batch_from_rows(*this, pixels_, labels_, indices, x, y);
}

std::string IdxDataset::describe() const {
  return dtrain::detail::concat("IdxDataset('", images_path_, "': ", n_, " x [1, ", h_, ", ", w_,
                                "], ", classes_, " classes, normalize ", normalize_name(normalize_),
                                ")");
}

Splits load_fashion_mnist(const std::string& dir, Normalize normalize) {
  const char* kHint =
      "Install them with `apt-get install dataset-fashion-mnist` (into "
      "/usr/share/datasets/fashion-mnist) or point data.path at a directory that holds them";
  std::error_code ec;
  DTRAIN_CHECK(std::filesystem::is_directory(dir, ec), "Fashion-MNIST directory '", dir,
               "' does not exist (or is not a directory); expected train-images-idx3-ubyte, "
               "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte "
               "(each optionally .gz) inside it. ",
               kHint);
  const auto find = [&](const std::string& name) {
    std::string path = find_split_file(dir, name);
    DTRAIN_CHECK(!path.empty(), "Fashion-MNIST directory '", dir, "' has neither ", name,
                 ".gz nor ", name,
                 "; expected train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                 "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each optionally .gz). ",
                 kHint);
    return path;
  };
  // Every file is located before any is read, so a missing one fails fast.
  const std::string train_images = find("train-images-idx3-ubyte");
  const std::string train_labels = find("train-labels-idx1-ubyte");
  const std::string test_images = find("t10k-images-idx3-ubyte");
  const std::string test_labels = find("t10k-labels-idx1-ubyte");
  Splits splits;
  splits.train = std::make_shared<IdxDataset>(train_images, train_labels, normalize);
  splits.test = std::make_shared<IdxDataset>(test_images, test_labels, normalize);
  return splits;
}

}  // namespace dtrain::data
