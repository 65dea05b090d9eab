// IdxDataset and load_fashion_mnist: small gzip and plain IDX files written to a temporary
// directory, every header error with its message, and the real Fashion-MNIST when installed.
#include "dtrain/data/idx.h"

#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>

#include "dtrain/tensor/check.h"

namespace dtrain::data {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

/// An unsigned-byte IDX file: magic 0x0000 08 <rank>, big-endian dims, then `data`.
Bytes idx_bytes(const std::vector<uint32_t>& dims, const Bytes& data, uint8_t rank_byte = 0,
                uint8_t type_byte = 0x08) {
  Bytes out{0, 0, type_byte, rank_byte ? rank_byte : static_cast<uint8_t>(dims.size())};
  for (uint32_t d : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(d >> shift));
  }
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

// 3 images of 2 x 4 pixels with distinct values, and their labels.
constexpr uint32_t kN = 3, kH = 2, kW = 4;
Bytes test_pixels() {
  Bytes pixels(kN * kH * kW);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>((i * 37 + 5) % 256);
  pixels[3] = 255;
  pixels[4] = 0;
  return pixels;
}
const Bytes kLabels{0, 9, 4};

class IdxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("dtrain_idx_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write_plain(const std::string& name, const Bytes& bytes) {
    const std::string path = (dir_ / name).string();
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    EXPECT_TRUE(out.good()) << path;
    return path;
  }
  std::string write_gzip(const std::string& name, const Bytes& bytes) {
    const std::string path = (dir_ / name).string();
    gzFile file = gzopen(path.c_str(), "wb");
    EXPECT_NE(file, nullptr) << path;
    EXPECT_EQ(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())),
              static_cast<int>(bytes.size()));
    EXPECT_EQ(gzclose(file), Z_OK);
    return path;
  }
  std::string good_images() {
    return write_plain("images-idx3-ubyte", idx_bytes({kN, kH, kW}, test_pixels()));
  }
  std::string good_labels() { return write_plain("labels-idx1-ubyte", idx_bytes({kN}, kLabels)); }

  /// Constructing the dataset throws ValueError whose message holds every fragment.
  void expect_load_error(const std::string& images, const std::string& labels,
                         const std::vector<std::string>& fragments) {
    try {
      IdxDataset dataset(images, labels, Normalize::kNone);
      ADD_FAILURE() << "expected a ValueError";
    } catch (const ValueError& e) {
      for (const auto& fragment : fragments) {
        EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos)
            << "missing '" << fragment << "' in: " << e.what();
      }
    }
  }

  fs::path dir_;
};

std::vector<float> batch_pixels(const IdxDataset& dataset, const std::vector<int64_t>& indices,
                                std::vector<int64_t>* labels = nullptr) {
  const int64_t batch = static_cast<int64_t>(indices.size());
  Tensor x({batch, 1, kH, kW});
  Tensor y({batch}, DType::kInt64);
  dataset.fill_batch(indices, x, y);
  if (labels) *labels = y.to_vector<int64_t>();
  return x.to_vector<float>();
}

TEST_F(IdxTest, GzipAndPlainFilesLoadTheSameValues) {
  const Bytes pixels = test_pixels();
  const IdxDataset plain(good_images(), good_labels(), Normalize::kNone);
  const IdxDataset gzipped(write_gzip("images.gz", idx_bytes({kN, kH, kW}, pixels)),
                           write_gzip("labels.gz", idx_bytes({kN}, kLabels)), Normalize::kNone);
  for (const IdxDataset* dataset : {&plain, &gzipped}) {
    SCOPED_TRACE(dataset->describe());
    EXPECT_EQ(dataset->size(), kN);
    EXPECT_EQ(dataset->example_shape(), (Shape{1, kH, kW}));
    EXPECT_EQ(dataset->num_classes(), 10);
    std::vector<int64_t> labels;
    const std::vector<float> x = batch_pixels(*dataset, {2, 0, 2}, &labels);
    EXPECT_EQ(labels, (std::vector<int64_t>{4, 0, 4}));
    const int64_t example = kH * kW;
    for (int64_t p = 0; p < example; ++p) {
      EXPECT_EQ(x[p], pixels[2 * example + p]);
      EXPECT_EQ(x[example + p], pixels[p]);
      EXPECT_EQ(x[2 * example + p], pixels[2 * example + p]);
    }
  }
}

TEST_F(IdxTest, NormalisesPixels) {
  const Bytes pixels = test_pixels();
  const IdxDataset unit(good_images(), good_labels(), Normalize::kUnit);
  const IdxDataset standard(good_images(), good_labels(), Normalize::kStandard);
  const std::vector<float> unit_x = batch_pixels(unit, {0, 1, 2});
  const std::vector<float> standard_x = batch_pixels(standard, {0, 1, 2});
  for (size_t i = 0; i < pixels.size(); ++i) {
    EXPECT_NEAR(unit_x[i], pixels[i] / 255.0, 1e-6) << i;
    EXPECT_NEAR(standard_x[i], (pixels[i] / 255.0 - 0.2860) / 0.3530, 1e-5) << i;
  }
  EXPECT_EQ(unit_x[3], 1.0f);
  EXPECT_EQ(unit_x[4], 0.0f);
  EXPECT_NE(standard.describe().find("standard"), std::string::npos) << standard.describe();
}

TEST_F(IdxTest, FillBatchAcceptsFlatInputsAndChecksShapes) {
  const IdxDataset dataset(good_images(), good_labels(), Normalize::kNone);
  Tensor flat({2, kH * kW});
  Tensor y({2}, DType::kInt64);
  dataset.fill_batch({1, 0}, flat, y);
  EXPECT_EQ(flat.to_vector<float>(), batch_pixels(dataset, {1, 0}));

  Tensor too_small({2, 3});
  EXPECT_THROW(dataset.fill_batch({1, 0}, too_small, y), ValueError);
  Tensor float_labels({2});
  EXPECT_THROW(dataset.fill_batch({1, 0}, flat, float_labels), ValueError);
  try {
    dataset.fill_batch({1, 3}, flat, y);
    ADD_FAILURE() << "index 3 of 3 accepted";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("index 3"), std::string::npos) << e.what();
  }
}

TEST_F(IdxTest, RejectsBadMagic) {
  Bytes bytes = idx_bytes({kN, kH, kW}, test_pixels());
  bytes[0] = 0x1f;
  const std::string images = write_plain("bad", bytes);
  expect_load_error(images, good_labels(), {images, "bad magic 0x1f000803", "0x00000803"});
}

TEST_F(IdxTest, RejectsUnsupportedDataType) {
  const std::string images = write_plain("float", idx_bytes({kN, kH, kW}, test_pixels(), 0, 0x0d));
  expect_load_error(images, good_labels(), {images, "data type 0xd", "unsigned byte"});
}

TEST_F(IdxTest, RejectsWrongRank) {
  // A label file given as images: rank 1 where 3 is expected.
  const std::string labels = good_labels();
  expect_load_error(labels, labels, {labels, "wrong rank 1", "expected 3"});
  const std::string images = good_images();
  expect_load_error(images, images, {images, "wrong rank 3", "expected 1"});
}

TEST_F(IdxTest, RejectsZeroDimension) {
  const std::string images = write_plain("empty", idx_bytes({0, kH, kW}, {}));
  expect_load_error(images, good_labels(), {images, "dimension 0 is 0"});
}

TEST_F(IdxTest, RejectsTruncatedData) {
  Bytes bytes = idx_bytes({kN, kH, kW}, test_pixels());
  bytes.resize(bytes.size() - 5);
  const std::string images = write_plain("cut", bytes);
  expect_load_error(images, good_labels(),
                    {images, "truncated: header says 3 x 2 x 4 = 24 bytes, file has 19"});
  const std::string header_only = write_plain("header", Bytes(bytes.begin(), bytes.begin() + 10));
  expect_load_error(header_only, good_labels(), {header_only, "truncated header"});
}

TEST_F(IdxTest, RejectsCutGzipStream) {
  // A gzip file cut short: its trailer (CRC and length) is missing.
  const std::string whole = write_gzip("whole.gz", idx_bytes({kN, kH, kW}, test_pixels()));
  std::ifstream in(whole, std::ios::binary);
  Bytes compressed((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  compressed.resize(compressed.size() - 6);
  const std::string images = write_plain("cut.gz", compressed);
  expect_load_error(images, good_labels(), {images, "truncated"});
}

TEST_F(IdxTest, RefusesAGzipHeaderClaimingMoreThanTheFileCanHold) {
  // A few dozen compressed bytes whose header claims Fashion-MNIST's 47 MB: deflate inflates at
  // most 1032-fold, so this is refused from the header alone, before anything is inflated.
  const std::string images = write_gzip("claims.gz", idx_bytes({60000, 28, 28}, Bytes(10, 1)));
  const uint64_t size = fs::file_size(images);
  expect_load_error(images, good_labels(),
                    {images, "corrupt header", "60000 x 28 x 28 = 47040000 bytes",
                     "gzip file of " + std::to_string(size) + " bytes",
                     "at most " + std::to_string(size * 1032)});
  // A size beyond 2^64 as well.
  const std::string huge =
      write_gzip("huge.gz", idx_bytes({4000000000u, 4000000000u, 4000000000u}, Bytes(10, 1)));
  expect_load_error(huge, good_labels(), {huge, "corrupt header", "> 2^64"});
}

TEST_F(IdxTest, StopsInflatingAGzipBombAtTheHeaderSize) {
  // 32 MiB of zeros behind a header of 3 x 2 x 4: inflating stops one byte past the 24 bytes.
  Bytes data = test_pixels();
  data.resize(data.size() + (size_t{32} << 20), 0);
  const std::string images = write_gzip("bomb.gz", idx_bytes({kN, kH, kW}, data));
  expect_load_error(
      images, good_labels(),
      {images, "trailing bytes: header says 3 x 2 x 4 = 24 bytes", "stopped reading at 25"});
}

TEST_F(IdxTest, RejectsShortGzipData) {
  const std::string images = write_gzip("short.gz", idx_bytes({kN, kH, kW}, Bytes(10, 1)));
  expect_load_error(images, good_labels(),
                    {images, "truncated: header says 3 x 2 x 4 = 24 bytes, file has 10"});
  const std::string header = write_gzip("header.gz", Bytes{0, 0, 8, 3, 0, 0});
  expect_load_error(header, good_labels(), {header, "truncated header: 6 bytes"});
}

TEST_F(IdxTest, RejectsTrailingBytes) {
  Bytes data = kLabels;
  data.push_back(1);
  data.push_back(2);
  const std::string labels = write_plain("long", idx_bytes({kN}, data));
  expect_load_error(good_images(), labels,
                    {labels, "trailing bytes: header says 3 bytes, file has 5", "2 extra"});
}

TEST_F(IdxTest, RejectsLabelCountMismatch) {
  const std::string labels = write_plain("two", idx_bytes({2}, {0, 1}));
  const std::string images = good_images();
  expect_load_error(images, labels, {labels, images, "has 2 labels", "has 3 images"});
}

TEST_F(IdxTest, RejectsLabelOutOfRange) {
  const std::string labels = write_plain("big", idx_bytes({kN}, {1, 12, 10}));
  expect_load_error(good_images(), labels, {labels, "label 12 at index 1", "0..9"});
}

TEST_F(IdxTest, RejectsMissingFile) {
  const std::string missing = (dir_ / "nope").string();
  expect_load_error(missing, good_labels(), {missing, "not found"});
}

TEST_F(IdxTest, LoadsFashionMnistLayoutPreferringGzip) {
  const Bytes pixels = test_pixels();
  write_gzip("train-images-idx3-ubyte.gz", idx_bytes({kN, kH, kW}, pixels));
  // A corrupt plain copy beside the .gz must be ignored.
  write_plain("train-images-idx3-ubyte", Bytes{1, 2, 3});
  write_plain("train-labels-idx1-ubyte", idx_bytes({kN}, kLabels));
  write_plain("t10k-images-idx3-ubyte", idx_bytes({1, kH, kW}, Bytes(kH * kW, 7)));
  write_gzip("t10k-labels-idx1-ubyte.gz", idx_bytes({1}, {3}));
  const Splits splits = load_fashion_mnist(dir_.string(), Normalize::kNone);
  ASSERT_NE(splits.train, nullptr);
  ASSERT_NE(splits.test, nullptr);
  EXPECT_EQ(splits.train->size(), kN);
  EXPECT_EQ(splits.test->size(), 1);
  Tensor x({1, 1, kH, kW});
  Tensor y({1}, DType::kInt64);
  splits.test->fill_batch({0}, x, y);
  EXPECT_EQ(x.to_vector<float>(), std::vector<float>(kH * kW, 7.0f));
  EXPECT_EQ(y.to_vector<int64_t>(), std::vector<int64_t>{3});
}

void expect_fashion_error(const std::string& dir, const std::vector<std::string>& fragments) {
  try {
    load_fashion_mnist(dir, Normalize::kUnit);
    ADD_FAILURE() << "expected a ValueError";
  } catch (const ValueError& e) {
    for (const auto& fragment : fragments) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos)
          << "missing '" << fragment << "' in: " << e.what();
    }
  }
}

TEST_F(IdxTest, FashionMnistNamesMissingFile) {
  write_plain("train-images-idx3-ubyte", idx_bytes({kN, kH, kW}, test_pixels()));
  write_plain("train-labels-idx1-ubyte", idx_bytes({kN}, kLabels));
  expect_fashion_error(dir_.string(), {dir_.string(), "t10k-images-idx3-ubyte.gz",
                                       "apt-get install dataset-fashion-mnist", "data.path"});
}

TEST_F(IdxTest, FashionMnistNamesMissingDirectory) {
  const std::string missing = (dir_ / "absent").string();
  expect_fashion_error(missing, {missing, "does not exist", "train-images-idx3-ubyte",
                                 "apt-get install dataset-fashion-mnist", "data.path"});
}

TEST(FashionMnist, RealDatasetHasTheDocumentedShape) {
  if (!fs::is_directory(kFashionMnistDir)) {
    GTEST_SKIP() << kFashionMnistDir << " not found (apt-get install dataset-fashion-mnist)";
  }
  const Splits splits = load_fashion_mnist(kFashionMnistDir, Normalize::kUnit);
  EXPECT_EQ(splits.train->size(), 60000);
  EXPECT_EQ(splits.test->size(), 10000);
  EXPECT_EQ(splits.train->example_shape(), (Shape{1, 28, 28}));
  EXPECT_EQ(splits.test->example_shape(), (Shape{1, 28, 28}));
  EXPECT_EQ(splits.train->num_classes(), 10);

  std::vector<int64_t> all(60000);
  for (int64_t i = 0; i < 60000; ++i) all[i] = i;
  Tensor x({60000, 1, 28, 28});
  Tensor y({60000}, DType::kInt64);
  splits.train->fill_batch(all, x, y);
  std::vector<int64_t> per_class(10, 0);
  for (int64_t label : y.to_vector<int64_t>()) {
    ASSERT_GE(label, 0);
    ASSERT_LT(label, 10);
    ++per_class[label];
  }
  EXPECT_EQ(per_class, std::vector<int64_t>(10, 6000));
  // The unit-scaled pixel mean is the documented normalisation mean.
  const float* pixels = x.data<float>();
  double sum = 0;
  for (int64_t i = 0; i < x.numel(); ++i) sum += pixels[i];
  EXPECT_NEAR(sum / x.numel(), 0.2860, 5e-4);
}

}  // namespace
}  // namespace dtrain::data
