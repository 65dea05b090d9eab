// Helpers for the data tests that read real files: a per-test temporary directory, plain and gzip
// writers, and a check that an error message names every expected fragment.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "dtrain/tensor/check.h"

namespace dtrain::data::testing {

using Bytes = std::vector<uint8_t>;

/// A fresh directory per test (named after the test and the pid), removed afterwards.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::temp_directory_path() /
           (std::string("dtrain_") + info->test_suite_name() + "_" + info->name() + "_" +
            std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  std::string write_plain(const std::string& name, const Bytes& bytes) const {
    const std::string p = path(name);
    std::filesystem::create_directories(std::filesystem::path(p).parent_path());
    std::ofstream out(p, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
    EXPECT_TRUE(out.good()) << p;
    return p;
  }
  std::string write_text(const std::string& name, const std::string& text) const {
    return write_plain(name, Bytes(text.begin(), text.end()));
  }
  std::string write_gzip(const std::string& name, const Bytes& bytes) const {
    const std::string p = path(name);
    gzFile file = gzopen(p.c_str(), "wb");
    EXPECT_NE(file, nullptr) << p;
    EXPECT_EQ(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())),
              static_cast<int>(bytes.size()));
    EXPECT_EQ(gzclose(file), Z_OK);
    return p;
  }

  std::filesystem::path dir_;
};

/// `body` throws ValueError whose message holds every fragment.
inline void expect_error(const std::function<void()>& body,
                         const std::vector<std::string>& fragments) {
  try {
    body();
    ADD_FAILURE() << "expected a ValueError mentioning '" << fragments.front() << "'";
  } catch (const ValueError& e) {
    for (const auto& fragment : fragments) {
      EXPECT_NE(e.message().find(fragment), std::string::npos)
          << "missing '" << fragment << "' in: " << e.message();
    }
  }
}

/// Little-endian bytes of `values`.
template <class T>
Bytes le_bytes(const std::vector<T>& values) {
  Bytes out(values.size() * sizeof(T));
  if (!values.empty()) std::memcpy(out.data(), values.data(), out.size());
  return out;
}

}  // namespace dtrain::data::testing
