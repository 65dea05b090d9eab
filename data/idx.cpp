// IDX reader (gzip or plain, through zlib) that validates the header before reading the data, and
// the Fashion-MNIST loader that finds the four split files in a directory.
#include "dtrain/data/idx.h"

#include <algorithm>
#include <filesystem>
#include <sstream>

#include "dtrain/data/gzip_reader.h"
#include "dtrain/tensor/check.h"

namespace dtrain::data {
namespace {

// Per-pixel mean and standard deviation of the Fashion-MNIST training split after scaling to
// [0, 1] (the values torchvision users normalise with); used for both splits so that test data
// sees the same transform as training data.
constexpr float kFashionMnistMean = 0.2860f;
constexpr float kFashionMnistStd = 0.3530f;

constexpr uint8_t kUnsignedByteType = 0x08;

// Deflate spends at least 2 bits on a 258-byte match, so a gzip file inflates to at most about
// 1032 times its size (each extra gzip member adds a header, so concatenations stay below it).
constexpr uint64_t kMaxDeflateRatio = 1032;

uint32_t read_be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

}  // namespace

// The header comes first and bounds the rest: a plain file's size must match it before the data is
// read, and a gzip stream is inflated no further than the header's size plus one byte, so a corrupt
// header or a gzip bomb cannot make memory grow.
IdxContents read_idx(const std::string& path, int expected_rank, const char* what) {
  detail::GzipReader file(path, "IDX file");
  const uint64_t file_size = file.file_size();
  const bool gzip = file.is_gzip();

  uint8_t header[4 + 4 * 3];
  const size_t magic_bytes = file.read(header, 4);
  DTRAIN_CHECK(magic_bytes == 4, "IDX file '", path, "': ", magic_bytes,
               " bytes, too short for the 4-byte magic number");
  const uint32_t magic = read_be32(header);
  std::ostringstream magic_hex;
  magic_hex << "0x" << std::hex;
  magic_hex.width(8);
  magic_hex.fill('0');
  magic_hex << magic;
  const std::string expected_magic = expected_rank == 3 ? "0x00000803" : "0x00000801";
  DTRAIN_CHECK(header[0] == 0 && header[1] == 0, "IDX file '", path, "': bad magic ",
               magic_hex.str(), "; expected ", expected_magic, " for ", what, ". Not an IDX file?");
  DTRAIN_CHECK(header[2] == kUnsignedByteType, "IDX file '", path, "': data type 0x", std::hex,
               int{header[2]}, std::dec, " in magic ", magic_hex.str(),
               " is not supported; expected 0x08 (unsigned byte)");
  DTRAIN_CHECK(header[3] == expected_rank, "IDX file '", path, "': wrong rank ", int{header[3]},
               " in magic ", magic_hex.str(), "; expected ", expected_rank, " for ", what,
               " (magic ", expected_magic, ")");
  const size_t data_offset = 4 + 4 * static_cast<size_t>(expected_rank);
  const size_t dim_bytes = file.read(header + 4, data_offset - 4);
  DTRAIN_CHECK(dim_bytes == data_offset - 4, "IDX file '", path,
               "': truncated header: ", 4 + dim_bytes, " bytes, expected at least ", data_offset);

  IdxContents idx;
  std::ostringstream dims_text;
  unsigned __int128 expected_bytes = 1;
  for (int d = 0; d < expected_rank; ++d) {
    const uint32_t dim = read_be32(header + 4 + 4 * d);
    DTRAIN_CHECK(dim > 0, "IDX file '", path, "': dimension ", d, " is 0; every dimension of ",
                 what, " must be positive");
    idx.dims.push_back(dim);
    dims_text << (d ? " x " : "") << dim;
    expected_bytes *= dim;
  }
  // Three uint32 dims multiply to less than 2^96, and anything above 2^64 cannot be in the file.
  const bool fits = expected_bytes <= static_cast<unsigned __int128>(UINT64_MAX);
  const uint64_t expected = fits ? static_cast<uint64_t>(expected_bytes) : UINT64_MAX;
  const std::string expected_text = fits ? std::to_string(expected) : std::string("> 2^64");
  if (expected_rank > 1) dims_text << " = " << expected_text;

  if (!gzip) {
    const uint64_t actual = file_size - data_offset;
    DTRAIN_CHECK(fits && actual >= expected, "IDX file '", path, "': truncated: header says ",
                 dims_text.str(), " bytes, file has ", actual, " after the ", data_offset,
                 "-byte header");
    DTRAIN_CHECK(actual == expected, "IDX file '", path, "': trailing bytes: header says ",
                 dims_text.str(), " bytes, file has ", actual, " after the ", data_offset,
                 "-byte header (", actual - expected, " extra)");
    idx.bytes.resize(expected);
    const size_t got = file.read(idx.bytes.data(), expected);
    DTRAIN_CHECK(got == expected, "IDX file '", path, "': truncated while reading: header says ",
                 dims_text.str(), " bytes, read ", got, " after the ", data_offset, "-byte header");
    return idx;
  }

  const unsigned __int128 most = static_cast<unsigned __int128>(file_size) * kMaxDeflateRatio;
  DTRAIN_CHECK(expected_bytes <= most, "IDX file '", path, "': corrupt header: it says ",
               dims_text.str(), " bytes, but a gzip file of ", file_size,
               " bytes inflates to at most ", static_cast<uint64_t>(most), " (", kMaxDeflateRatio,
               " x its size). Truncated download or not an IDX file?");
  // Grow as bytes arrive, so memory follows what the stream really holds, never just the header.
  constexpr size_t kChunk = size_t{1} << 20;
  size_t used = 0;
  while (used < expected) {
    const size_t want = std::min<uint64_t>(kChunk, expected - used);
    idx.bytes.resize(used + want);
    const size_t got = file.read(idx.bytes.data() + used, want);
    used += got;
    if (got < want) break;
  }
  idx.bytes.resize(used);
  DTRAIN_CHECK(used == expected, "IDX file '", path, "': truncated: header says ", dims_text.str(),
               " bytes, file has ", used, " after the ", data_offset, "-byte header (inflated)");
  uint8_t extra = 0;
  DTRAIN_CHECK(file.read(&extra, 1) == 0, "IDX file '", path, "': trailing bytes: header says ",
               dims_text.str(), " bytes, the inflated file has more after the ", data_offset,
               "-byte header (stopped reading at ", expected + 1, ")");
  return idx;
}

void normalize_pixels(const uint8_t* pixels, size_t count, Normalize normalize, float* out) {
  float scale = 1.0f, shift = 0.0f;  // pixel -> pixel * scale + shift
  if (normalize == Normalize::kUnit) {
    scale = 1.0f / 255.0f;
  } else if (normalize == Normalize::kStandard) {
    scale = 1.0f / (255.0f * kFashionMnistStd);
    shift = -kFashionMnistMean / kFashionMnistStd;
  }
  for (size_t i = 0; i < count; ++i) out[i] = pixels[i] * scale + shift;
}

namespace {

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

  const size_t count = static_cast<size_t>(n_ * h_ * w_);
  pixels_.resize(count);
  normalize_pixels(images.data(), count, normalize, pixels_.data());
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

FashionMnistFiles locate_fashion_mnist(const std::string& dir) {
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
  return {find("train-images-idx3-ubyte"), find("train-labels-idx1-ubyte"),
          find("t10k-images-idx3-ubyte"), find("t10k-labels-idx1-ubyte")};
}

Splits load_fashion_mnist(const std::string& dir, Normalize normalize) {
  // Every file is located before any is read, so a missing one fails fast.
  const FashionMnistFiles files = locate_fashion_mnist(dir);
  Splits splits;
  splits.train = std::make_shared<IdxDataset>(files.train_images, files.train_labels, normalize);
  splits.test = std::make_shared<IdxDataset>(files.test_images, files.test_labels, normalize);
  return splits;
}

}  // namespace dtrain::data
