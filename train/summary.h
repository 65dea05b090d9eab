// Run summaries other tools read: TensorBoard event files and JSON-lines metrics.
#pragma once

#include <cstdint>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace dtrain::train {

/// Masked CRC-32C as TFRecord framing uses it: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);
uint32_t masked_crc32c(const void* data, size_t n);

/// Writes events.out.tfevents.<unix seconds>.<hostname> in `dir` (created if missing): TFRecord
/// framing of tensorflow.Event messages (wire-compatible schema in train/tensorboard.proto). The
/// first record carries file_version "brain.Event:2". Records are flushed by flush() and on
/// destruction.
class TensorBoardWriter {
 public:
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();
  void add_scalar(const std::string& tag, double value, int64_t step, double wall_time);
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& data);
  std::string path_;
  std::ofstream out_;
};

/// One JSON object per line: {"step": 10, "epoch": 0, "loss": 0.5, ...}; numbers written with
/// full precision (%.17g), non-finite values as null. Flushed after every line.
class JsonlWriter {
 public:
  explicit JsonlWriter(const std::string& path);
  void write(const std::vector<std::pair<std::string, double>>& fields);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace dtrain::train
