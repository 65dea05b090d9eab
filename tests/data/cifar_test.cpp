// load_cifar and CifarDataset: small CIFAR-10 and CIFAR-100 binary files written to a temporary
// directory, pixel layout and normalisation, and the errors for missing, mis-sized and bad files.
#include "dtrain/data/cifar.h"

#include <gtest/gtest.h>

#include "data/file_util.h"

namespace dtrain::data {
namespace {

using testing::Bytes;
using testing::expect_error;

constexpr int64_t kPixels = 3072;

/// Pixel p of record r: distinct per record, channel and position (mod 256).
uint8_t pixel(int64_t r, int64_t p) {
  return static_cast<uint8_t>((r * 31 + p * 7 + p / 1024) % 256);
}

/// Records r in [first, first + labels.size()) with the given label bytes (one or two each).
Bytes records(int64_t first, const std::vector<Bytes>& labels) {
  Bytes out;
  for (size_t k = 0; k < labels.size(); ++k) {
    out.insert(out.end(), labels[k].begin(), labels[k].end());
    for (int64_t p = 0; p < kPixels; ++p) out.push_back(pixel(first + static_cast<int64_t>(k), p));
  }
  return out;
}

class CifarTest : public testing::TempDirTest {
 protected:
  /// CIFAR-10: 5 training files of 2 records (labels 0..9 in order), a test file of 1 (label 3).
  void write_cifar10(const std::string& sub = "") {
    for (int f = 0; f < 5; ++f) {
      write_plain(
          sub + "data_batch_" + std::to_string(f + 1) + ".bin",
          records(2 * f, {{static_cast<uint8_t>(2 * f)}, {static_cast<uint8_t>(2 * f + 1)}}));
    }
    write_plain(sub + "test_batch.bin", records(100, {{3}}));
  }
};

std::vector<float> example(const Dataset& dataset, int64_t i, int64_t* label = nullptr) {
  Tensor x({1, 3, 32, 32});
  Tensor y({1}, DType::kInt64);
  dataset.fill_batch({i}, x, y);
  if (label) *label = y.item<int64_t>();
  return x.to_vector<float>();
}

TEST_F(CifarTest, LoadsCifar10InFileOrder) {
  write_cifar10();
  const Splits splits = load_cifar(dir_.string(), 10, Normalize::kNone);
  EXPECT_EQ(splits.train->size(), 10);
  EXPECT_EQ(splits.test->size(), 1);
  EXPECT_EQ(splits.train->example_shape(), (Shape{3, 32, 32}));
  EXPECT_EQ(splits.train->num_classes(), 10);
  for (int64_t i = 0; i < 10; ++i) {
    int64_t label = -1;
    const std::vector<float> x = example(*splits.train, i, &label);
    EXPECT_EQ(label, i);
    for (int64_t p : {int64_t{0}, int64_t{1023}, int64_t{1024}, int64_t{2048 + 33}, kPixels - 1}) {
      EXPECT_EQ(x[p], pixel(i, p)) << "example " << i << " pixel " << p;
    }
  }
  int64_t label = -1;
  const std::vector<float> test = example(*splits.test, 0, &label);
  EXPECT_EQ(label, 3);
  EXPECT_EQ(test[5], pixel(100, 5));
  EXPECT_NE(splits.train->describe().find("data_batch_1.bin"), std::string::npos);
}

TEST_F(CifarTest, NormalisesPerChannel) {
  write_cifar10();
  const Splits unit = load_cifar(dir_.string(), 10, Normalize::kUnit);
  const Splits standard = load_cifar(dir_.string(), 10, Normalize::kStandard);
  const std::vector<float> u = example(*unit.train, 4), s = example(*standard.train, 4);
  const float mean[3] = {0.4914f, 0.4822f, 0.4465f}, std[3] = {0.2470f, 0.2435f, 0.2616f};
  for (int64_t p = 0; p < kPixels; p += 97) {
    const int c = static_cast<int>(p / 1024);
    EXPECT_NEAR(u[p], pixel(4, p) / 255.0, 1e-6) << p;
    EXPECT_NEAR(s[p], (pixel(4, p) / 255.0 - mean[c]) / std[c], 1e-5) << p;
  }
}

TEST_F(CifarTest, LoadsCifar100FineLabelsFromTheExtractedDirectory) {
  // The archive extracts into cifar-100-binary/; its parent is accepted too.
  write_plain("cifar-100-binary/train.bin", records(0, {{19, 99}, {0, 42}, {7, 0}}));
  write_plain("cifar-100-binary/test.bin", records(50, {{3, 17}}));
  const Splits splits = load_cifar(dir_.string(), 100, Normalize::kNone);
  EXPECT_EQ(splits.train->size(), 3);
  EXPECT_EQ(splits.train->num_classes(), 100);
  std::vector<int64_t> labels;
  for (int64_t i = 0; i < 3; ++i) {
    int64_t label = -1;
    const std::vector<float> x = example(*splits.train, i, &label);
    labels.push_back(label);
    EXPECT_EQ(x[kPixels - 1], pixel(i, kPixels - 1));
  }
  EXPECT_EQ(labels, (std::vector<int64_t>{99, 42, 0}));
  int64_t label = -1;
  example(*splits.test, 0, &label);
  EXPECT_EQ(label, 17);
}

TEST_F(CifarTest, NamesTheMissingFileAndTheExpectedOnes) {
  write_cifar10();
  std::filesystem::remove(path("data_batch_4.bin"));
  expect_error([&] { load_cifar(dir_.string(), 10, Normalize::kUnit); },
               {dir_.string(), "has no data_batch_4.bin", "data_batch_1.bin ... data_batch_5.bin",
                "test_batch.bin"});
  expect_error([&] { load_cifar(dir_.string(), 100, Normalize::kUnit); },
               {"has no train.bin", "train.bin and test.bin"});
  expect_error([&] { load_cifar(path("absent"), 10, Normalize::kUnit); },
               {path("absent"), "does not exist"});
  expect_error([&] { load_cifar(dir_.string(), 7, Normalize::kUnit); }, {"variant is 7"});
}

TEST_F(CifarTest, RejectsSizesThatAreNotWholeRecords) {
  Bytes data = records(0, {{1}, {2}});
  data.resize(data.size() - 100);
  const std::string cut = write_plain("cut.bin", data);
  expect_error([&] { CifarDataset({cut}, 10, Normalize::kNone); },
               {cut, "size 6046 bytes", "3073-byte record", "truncated"});
  // CIFAR-100 records given as CIFAR-10.
  const std::string hundred = write_plain("hundred.bin", records(0, {{1, 2}, {3, 4}, {5, 6}}));
  expect_error([&] { CifarDataset({hundred}, 10, Normalize::kNone); },
               {hundred, "size 9222 bytes", "3073-byte record", "CIFAR-100 records (3074 bytes)"});
  const std::string empty = write_plain("empty.bin", {});
  expect_error([&] { CifarDataset({empty}, 100, Normalize::kNone); },
               {empty, "size 0 bytes", "3074-byte record"});
}

TEST_F(CifarTest, RejectsLabelsOutOfRange) {
  const std::string ten = write_plain("ten.bin", records(0, {{1}, {10}}));
  expect_error([&] { CifarDataset({ten}, 10, Normalize::kNone); },
               {ten, "label 10 at record 1", "0..9"});
  const std::string fine = write_plain("fine.bin", records(0, {{1, 100}}));
  expect_error([&] { CifarDataset({fine}, 100, Normalize::kNone); },
               {fine, "fine label 100 at record 0", "0..99"});
  const std::string coarse = write_plain("coarse.bin", records(0, {{1, 1}, {1, 1}, {20, 1}}));
  expect_error([&] { CifarDataset({coarse}, 100, Normalize::kNone); },
               {coarse, "coarse label 20 at record 2", "0..19"});
}

}  // namespace
}  // namespace dtrain::data
