// CIFAR binary reader: sizes checked against the record size before reading, then read in chunks
// of records into pixel bytes and labels.
#include "dtrain/data/cifar.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "dtrain/tensor/check.h"

namespace dtrain::data {
namespace {

constexpr int64_t kPixels = 3 * 32 * 32;

// Per-channel mean and std of the training sets' pixels scaled to [0, 1] (RGB).
constexpr float kCifar10Mean[3] = {0.4914f, 0.4822f, 0.4465f};
constexpr float kCifar10Std[3] = {0.2470f, 0.2435f, 0.2616f};
constexpr float kCifar100Mean[3] = {0.5071f, 0.4865f, 0.4409f};
constexpr float kCifar100Std[3] = {0.2673f, 0.2564f, 0.2762f};

std::string expected_files(int variant) {
  return variant == 10 ? "data_batch_1.bin ... data_batch_5.bin and test_batch.bin "
                         "(from cifar-10-binary.tar.gz)"
                       : "train.bin and test.bin (from cifar-100-binary.tar.gz)";
}

}  // namespace

CifarDataset::CifarDataset(std::vector<std::string> files, int variant, Normalize normalize)
    : files_(std::move(files)), variant_(variant), normalize_(normalize) {
  DTRAIN_CHECK(variant == 10 || variant == 100, "CifarDataset: variant is ", variant,
               "; expected 10 (CIFAR-10) or 100 (CIFAR-100)");
  DTRAIN_CHECK(!files_.empty(), "CifarDataset: no files given; expected ", expected_files(variant));
  const int64_t label_bytes = variant == 10 ? 1 : 2;
  const int64_t record = label_bytes + kPixels;
  const char* name = variant == 10 ? "CIFAR-10" : "CIFAR-100";

  // Sizes first: memory is reserved only for what the files hold, and a bad file fails before any
  // is read.
  std::vector<int64_t> records;
  for (const std::string& path : files_) {
    std::error_code ec;
    DTRAIN_CHECK(std::filesystem::is_regular_file(path, ec), name, " file '", path,
                 "': not found (or not a regular file); expected ", expected_files(variant));
    const uint64_t size = std::filesystem::file_size(path, ec);
    DTRAIN_CHECK(!ec, name, " file '", path, "': cannot read its size: ", ec.message());
    if (size == 0 || size % record != 0) {
      const int64_t other_record = variant == 10 ? kPixels + 2 : kPixels + 1;
      const std::string hint = size > 0 && size % other_record == 0
                                   ? std::string("; its size fits ") +
                                         (variant == 10 ? "CIFAR-100" : "CIFAR-10") + " records (" +
                                         std::to_string(other_record) + " bytes): wrong variant?"
                                   : "; truncated or not a CIFAR binary file?";
      DTRAIN_THROW(ValueError, name, " file '", path, "': size ", size,
                   " bytes is not a positive multiple of the ", record, "-byte record (",
                   label_bytes == 1 ? "1 label byte" : "coarse and fine label bytes", " + ",
                   kPixels, " pixel bytes)", hint);
    }
    records.push_back(static_cast<int64_t>(size) / record);
    n_ += records.back();
  }
  pixels_.resize(static_cast<size_t>(n_ * kPixels));
  labels_.resize(static_cast<size_t>(n_));

  constexpr int64_t kChunkRecords = 1024;
  std::vector<uint8_t> chunk(static_cast<size_t>(kChunkRecords * record));
  int64_t next = 0;  // example index of the next record
  for (size_t f = 0; f < files_.size(); ++f) {
    const std::string& path = files_[f];
    std::ifstream in(path, std::ios::binary);
    DTRAIN_CHECK(in.is_open(), name, " file '", path, "': cannot open: ", std::strerror(errno));
    for (int64_t r = 0; r < records[f]; r += kChunkRecords) {
      const int64_t count = std::min(kChunkRecords, records[f] - r);
      in.read(reinterpret_cast<char*>(chunk.data()), count * record);
      DTRAIN_CHECK(in.gcount() == count * record, name, " file '", path, "': truncated while ",
                   "reading record ", r, " (the file shrank?)");
      for (int64_t k = 0; k < count; ++k) {
        const uint8_t* rec = chunk.data() + k * record;
        const int64_t index_in_file = r + k;
        if (variant == 100) {
          DTRAIN_CHECK(rec[0] < 20, name, " file '", path, "': coarse label ", int{rec[0]},
                       " at record ", index_in_file, " is out of range; expected 0..19");
        }
        const int label = rec[label_bytes - 1];
        DTRAIN_CHECK(label < variant, name, " file '", path,
                     "': ", variant == 100 ? "fine label " : "label ", label, " at record ",
                     index_in_file, " is out of range; expected 0..", variant - 1,
                     variant == 10 ? ". A CIFAR-100 file (coarse, fine label)?" : "");
        labels_[next] = label;
        std::memcpy(pixels_.data() + next * kPixels, rec + label_bytes, kPixels);
        ++next;
      }
    }
  }

  for (int c = 0; c < 3; ++c) {
    scale_[c] = 1.0f;
    shift_[c] = 0.0f;
    if (normalize == Normalize::kUnit) {
      scale_[c] = 1.0f / 255.0f;
    } else if (normalize == Normalize::kStandard) {
      const float mean = variant == 10 ? kCifar10Mean[c] : kCifar100Mean[c];
      const float std = variant == 10 ? kCifar10Std[c] : kCifar100Std[c];
      scale_[c] = 1.0f / (255.0f * std);
      shift_[c] = -mean / std;
    }
  }
}

void CifarDataset::fill_batch(const std::vector<int64_t>& indices, Tensor& x, Tensor& y) const {
  detail::check_batch(*this, indices, x, y);
  float* xs = x.data<float>();
  int64_t* ys = y.data<int64_t>();
  constexpr int64_t kPlane = 32 * 32;
  for (size_t b = 0; b < indices.size(); ++b) {
    const int64_t i = indices[b];
    const uint8_t* src = pixels_.data() + i * kPixels;
    float* dst = xs + b * kPixels;
    for (int64_t p = 0; p < kPixels; ++p) {
      const int64_t c = p / kPlane;
      dst[p] = src[p] * scale_[c] + shift_[c];
    }
    ys[b] = labels_[i];
  }
}

std::string CifarDataset::describe() const {
  const std::string more =
      files_.size() > 1 ? " + " + std::to_string(files_.size() - 1) + " more" : "";
  return dtrain::detail::concat("CifarDataset(CIFAR-", variant_, " '", files_[0], "'", more, ": ",
                                n_, " x [3, 32, 32], ", variant_, " classes, normalize ",
                                normalize_name(normalize_), ")");
}

Splits load_cifar(const std::string& dir, int variant, Normalize normalize) {
  DTRAIN_CHECK(variant == 10 || variant == 100, "load_cifar('", dir, "'): variant is ", variant,
               "; expected 10 (CIFAR-10) or 100 (CIFAR-100)");
  namespace fs = std::filesystem;
  std::vector<std::string> train_names, test_names;
  if (variant == 10) {
    for (int i = 1; i <= 5; ++i) train_names.push_back("data_batch_" + std::to_string(i) + ".bin");
    test_names = {"test_batch.bin"};
  } else {
    train_names = {"train.bin"};
    test_names = {"test.bin"};
  }
  const std::string name = variant == 10 ? "CIFAR-10" : "CIFAR-100";
  std::error_code ec;
  DTRAIN_CHECK(fs::is_directory(dir, ec), name, " directory '", dir,
               "' does not exist (or is not a directory); expected ", expected_files(variant),
               " inside it");
  // The archives extract into a sub-directory; accept its parent too.
  fs::path root = dir;
  const fs::path nested = root / (variant == 10 ? "cifar-10-batches-bin" : "cifar-100-binary");
  if (!fs::exists(root / test_names[0], ec) && fs::is_directory(nested, ec)) root = nested;

  auto paths = [&](const std::vector<std::string>& names) {
    std::vector<std::string> out;
    for (const std::string& n : names) {
      const fs::path p = root / n;
      DTRAIN_CHECK(fs::is_regular_file(p, ec), name, " directory '", root.string(), "' has no ", n,
                   "; expected ", expected_files(variant),
                   ". Download the binary version from "
                   "https://www.cs.toronto.edu/~kriz/cifar.html and point data.path at it");
      out.push_back(p.string());
    }
    return out;
  };
  // Every file is located before any is read, so a missing one fails fast.
  const std::vector<std::string> train_files = paths(train_names);
  const std::vector<std::string> test_files = paths(test_names);
  Splits splits;
  splits.train = std::make_shared<CifarDataset>(train_files, variant, normalize);
  splits.test = std::make_shared<CifarDataset>(test_files, variant, normalize);
  return splits;
}

}  // namespace dtrain::data
