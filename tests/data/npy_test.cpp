// read_npy and NpyDataset: .npy files written byte by byte (versions 1.0, 2.0, 3.0, every supported
// dtype), values through fill_batch and the loader, and every header and label error.
#include "dtrain/data/npy.h"

#include <gtest/gtest.h>

#include <cmath>

#include "data/file_util.h"
#include "dtrain/data/loader.h"

namespace dtrain::data {
namespace {

using testing::Bytes;
using testing::expect_error;
using testing::le_bytes;

/// numpy's header dict for `descr` and `shape`.
std::string header_dict(const std::string& descr, const Shape& shape, bool fortran = false) {
  std::string tuple = "(";
  for (size_t d = 0; d < shape.size(); ++d) tuple += (d ? ", " : "") + std::to_string(shape[d]);
  if (shape.size() == 1) tuple += ",";
  tuple += ")";
  return "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") +
         ", 'shape': " + tuple + ", }";
}

/// A .npy file as numpy writes it: magic, version, header length, the dict padded with spaces and
/// a newline so the data starts at a multiple of 64, then `data`.
Bytes npy_bytes(const std::string& dict, const Bytes& data, int major = 1) {
  const size_t prefix = major == 1 ? 10 : 12;
  std::string header = dict;
  while ((prefix + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  Bytes out{0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<uint8_t>(major), 0};
  const uint32_t len = static_cast<uint32_t>(header.size());
  for (size_t k = 0; k < prefix - 8; ++k) out.push_back(static_cast<uint8_t>(len >> (8 * k)));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

class NpyTest : public testing::TempDirTest {
 protected:
  std::string write_npy(const std::string& name, const std::string& descr, const Shape& shape,
                        const Bytes& data, int major = 1) {
    return write_plain(name, npy_bytes(header_dict(descr, shape), data, major));
  }
};

TEST_F(NpyTest, ReadsEveryDtypeInEveryVersion) {
  for (int major : {1, 2, 3}) {
    SCOPED_TRACE("version " + std::to_string(major) + ".0");
    const std::string f4 =
        write_npy("f4.npy", "<f4", {2, 3}, le_bytes<float>({0, 1.5f, -2, 3, 4, 5}), major);
    const NpyArray a = read_npy(f4);
    EXPECT_EQ(a.shape, (Shape{2, 3}));
    EXPECT_EQ(a.dtype, NpyDType::kFloat32);
    EXPECT_EQ(a.descr, "<f4");
    EXPECT_EQ(a.data_offset % 64, 0u);
    std::vector<float> values(6);
    a.read_float(0, 6, 2.0f, values.data());
    EXPECT_EQ(values, (std::vector<float>{0, 3, -4, 6, 8, 10}));
    a.read_float(4, 2, 1.0f, values.data());
    EXPECT_EQ(values[0], 4.0f);
    EXPECT_EQ(values[1], 5.0f);

    const NpyArray f8 =
        read_npy(write_npy("f8.npy", "<f8", {2}, le_bytes<double>({0.25, -8}), major));
    f8.read_float(0, 2, 1.0f, values.data());
    EXPECT_EQ(values[0], 0.25f);
    EXPECT_EQ(values[1], -8.0f);
    EXPECT_FALSE(f8.is_integer());

    struct IntCase {
      const char* descr;
      NpyDType dtype;
      Bytes data;
    };
    const std::vector<int64_t> expected{7, 0, 255};
    const std::vector<IntCase> ints{
        {"|u1", NpyDType::kUInt8, Bytes{7, 0, 255}},
        {"<i4", NpyDType::kInt32, le_bytes<int32_t>({7, 0, 255})},
        {"<i8", NpyDType::kInt64, le_bytes<int64_t>({7, 0, 255})},
        {"<u2", NpyDType::kUInt16, le_bytes<uint16_t>({7, 0, 255})},
        {"<u4", NpyDType::kUInt32, le_bytes<uint32_t>({7, 0, 255})},
    };
    for (const IntCase& c : ints) {
      SCOPED_TRACE(c.descr);
      const NpyArray i = read_npy(write_npy("int.npy", c.descr, {3}, c.data, major));
      EXPECT_EQ(i.dtype, c.dtype);
      EXPECT_TRUE(i.is_integer());
      std::vector<int64_t> got(3);
      i.read_int64(0, 3, got.data());
      EXPECT_EQ(got, expected);
      i.read_float(0, 3, 1.0f, values.data());
      EXPECT_EQ(values[2], 255.0f);
    }
  }
}

TEST_F(NpyTest, ParsesHeaderVariants) {
  // Key order, double quotes, Python 2 longs and no trailing comma, as older writers produce.
  const std::string dict = "{\"shape\": (2L, 1L), 'fortran_order': False,'descr':'<i8'}";
  const NpyArray a = read_npy(write_plain("odd.npy", npy_bytes(dict, le_bytes<int64_t>({-3, 4}))));
  EXPECT_EQ(a.shape, (Shape{2, 1}));
  std::vector<int64_t> got(2);
  a.read_int64(0, 2, got.data());
  EXPECT_EQ(got, (std::vector<int64_t>{-3, 4}));
  const NpyArray scalar = read_npy(write_npy("scalar.npy", "<f4", {}, le_bytes<float>({2.5f})));
  EXPECT_EQ(scalar.shape, Shape{});
  EXPECT_EQ(scalar.numel(), 1);
}

TEST_F(NpyTest, DatasetScalesImagesAndInfersClasses) {
  Bytes pixels(4 * 1 * 2 * 3);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>(i * 10);
  const std::string x = write_npy("x.npy", "|u1", {4, 1, 2, 3}, pixels);
  const std::string y = write_npy("y.npy", "<i8", {4}, le_bytes<int64_t>({2, 0, 5, 1}));
  const NpyDataset dataset(x, y, /*num_classes=*/0, 1.0f / 255.0f);
  EXPECT_EQ(dataset.size(), 4);
  EXPECT_EQ(dataset.example_shape(), (Shape{1, 2, 3}));
  EXPECT_EQ(dataset.num_classes(), 6);
  EXPECT_EQ(dataset.example_dtype(), DType::kFloat32);
  Tensor bx({2, 1, 2, 3});
  Tensor by({2}, DType::kInt64);
  dataset.fill_batch({2, 0}, bx, by);
  EXPECT_EQ(by.to_vector<int64_t>(), (std::vector<int64_t>{5, 2}));
  const std::vector<float> got = bx.to_vector<float>();
  for (int p = 0; p < 6; ++p) {
    EXPECT_FLOAT_EQ(got[p], pixels[12 + p] * (1.0f / 255.0f)) << p;
    EXPECT_FLOAT_EQ(got[6 + p], pixels[p] * (1.0f / 255.0f)) << p;
  }
  EXPECT_NE(dataset.describe().find(x), std::string::npos) << dataset.describe();
  EXPECT_EQ(NpyDataset(x, y, 10).num_classes(), 10);

  // Column labels [N, 1] and float features through the loader.
  const std::string xf = write_npy("xf.npy", "<f4", {3, 2}, le_bytes<float>({1, 2, 3, 4, 5, 6}));
  const std::string yc = write_npy("yc.npy", "|u1", {3, 1}, Bytes{1, 0, 1});
  auto features = std::make_shared<NpyDataset>(xf, yc);
  DataLoader loader(features, DistributedSampler(3, 1, 0, false, 0, false), 2, false);
  loader.start_epoch(0);
  Batch batch;
  ASSERT_TRUE(loader.next(batch));
  EXPECT_EQ(batch.x.shape(), (Shape{2, 2}));
  EXPECT_EQ(batch.x.to_vector<float>(), (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(batch.y.to_vector<int64_t>(), (std::vector<int64_t>{1, 0}));
}

TEST_F(NpyTest, RejectsBadHeaders) {
  const Bytes data = le_bytes<float>({1, 2, 3, 4});
  const std::string fortran =
      write_plain("fortran.npy", npy_bytes(header_dict("<f4", {2, 2}, true), data));
  expect_error([&] { read_npy(fortran); }, {fortran, "fortran_order is True", "C order"});

  Bytes bad_magic = npy_bytes(header_dict("<f4", {4}), data);
  bad_magic[1] = 'X';
  const std::string magic = write_plain("magic.npy", bad_magic);
  expect_error([&] { read_npy(magic); }, {magic, "bad magic", "93 58 55 4d 50 59"});
  const std::string empty = write_plain("empty.npy", {});
  expect_error([&] { read_npy(empty); }, {empty, "the file is empty"});

  Bytes version = npy_bytes(header_dict("<f4", {4}), data);
  version[6] = 4;
  const std::string v4 = write_plain("v4.npy", version);
  expect_error([&] { read_npy(v4); }, {v4, "format version 4.0", "1.0, 2.0 or 3.0"});

  const std::string big = write_npy("big.npy", ">f4", {4}, data);
  expect_error([&] { read_npy(big); }, {big, "'>f4'", "big-endian", "'<f4'"});
  const std::string half = write_npy("half.npy", "<f2", {8}, data);
  expect_error([&] { read_npy(half); }, {half, "dtype '<f2' is not supported"});

  const std::string garbled = write_plain(
      "garbled.npy", npy_bytes("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (4,), }", data));
  expect_error([&] { read_npy(garbled); }, {garbled, "malformed header", "True or False"});
  const std::string missing_key =
      write_plain("nokey.npy", npy_bytes("{'descr': '<f4', 'shape': (4,), }", data));
  expect_error([&] { read_npy(missing_key); }, {missing_key, "lacks 'fortran_order'"});

  // A header length pointing past the end of the file.
  Bytes long_header = npy_bytes(header_dict("<f4", {4}), data);
  long_header[8] = 0xff;
  long_header[9] = 0xff;
  const std::string cut_header = write_plain("cut_header.npy", long_header);
  expect_error([&] { read_npy(cut_header); },
               {cut_header, "truncated header", "65535 bytes of header"});
  const std::string missing = path("absent.npy");
  expect_error([&] { read_npy(missing); }, {missing, "no such file"});
}

TEST_F(NpyTest, RejectsDataThatDoesNotMatchTheShape) {
  const std::string cut = write_npy("cut.npy", "<f4", {2, 3}, le_bytes<float>({1, 2, 3, 4, 5}));
  expect_error([&] { read_npy(cut); },
               {cut, "truncated: shape [2, 3] of '<f4' needs 24 bytes", "the file has 20"});
  const std::string extra = write_npy("extra.npy", "<i4", {2}, le_bytes<int32_t>({1, 2, 3}));
  expect_error([&] { read_npy(extra); }, {extra, "trailing bytes", "needs 8", "4 extra"});
  // A shape whose size overflows is refused before anything is read.
  const std::string huge =
      write_npy("huge.npy", "<f8", {int64_t{1} << 40, int64_t{1} << 40}, le_bytes<double>({1}));
  expect_error([&] { read_npy(huge); }, {huge, "truncated", "more than 2^64"});
}

TEST_F(NpyTest, DatasetRejectsBadLabels) {
  const std::string x = write_npy("x.npy", "<f4", {3, 2}, le_bytes<float>({1, 2, 3, 4, 5, 6}));
  const std::string y = write_npy("y.npy", "<i4", {3}, le_bytes<int32_t>({0, 12, 1}));
  expect_error([&] { NpyDataset(x, y, 10); }, {y, "label 12 at index 1", "0..9"});
  const std::string negative = write_npy("neg.npy", "<i8", {3}, le_bytes<int64_t>({0, 1, -4}));
  expect_error([&] { NpyDataset(x, negative); }, {negative, "label -4 at index 2", "negative"});
  const std::string two = write_npy("two.npy", "|u1", {2}, Bytes{0, 1});
  expect_error([&] { NpyDataset(x, two); }, {two, x, "has 2 labels", "has 3 examples"});
  const std::string floats = write_npy("yf.npy", "<f4", {3}, le_bytes<float>({0, 1, 2}));
  expect_error([&] { NpyDataset(x, floats); }, {floats, "'<f4'", "integer type"});
  const std::string matrix = write_npy("ym.npy", "|u1", {3, 2}, Bytes{0, 1, 0, 1, 0, 1});
  expect_error([&] { NpyDataset(x, matrix); }, {matrix, "shape [3, 2]", "expected [N]"});
  const std::string flat = write_npy("flat.npy", "<f4", {3}, le_bytes<float>({1, 2, 3}));
  const std::string good_y = write_npy("good.npy", "|u1", {3}, Bytes{0, 1, 0});
  expect_error([&] { NpyDataset(flat, good_y); }, {flat, "shape [3]", "[N, ...]"});
  expect_error([&] { NpyDataset(x, good_y, -1); }, {"num_classes is -1"});
}

}  // namespace
}  // namespace dtrain::data
