// Run summaries other tools read: TensorBoard event files and JSON-lines metrics.
#pragma once

#include <chrono>
#include <cstdint>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace dtrain::train {

/// How often a TensorBoardWriter flushes by itself: a TensorBoard watching a running job shows its
/// points this late at most, as long as further points are written.
inline constexpr std::chrono::milliseconds kTensorBoardFlushInterval{30'000};

/// Writes events.out.tfevents.<unix seconds>.<hostname> in `dir` (created if missing; ".<n>" is
/// appended when another writer took that name in the same second): TFRecord framing of
/// tensorflow.Event messages (wire-compatible schema in train/tensorboard.proto). The first record
/// carries file_version "brain.Event:2". Records are flushed by flush(), on destruction, and by the
/// first record written `flush_interval` or more after the last flush (0: every record), as
/// measured by `clock`; there is no timer thread. Throws dtrain::Error naming the path when the
/// file cannot be opened or written. Not thread-safe.
class TensorBoardWriter {
 public:
  using Clock = std::chrono::steady_clock;
  explicit TensorBoardWriter(const std::string& dir,
                             std::chrono::milliseconds flush_interval = kTensorBoardFlushInterval,
                             std::function<Clock::time_point()> clock = Clock::now);
  ~TensorBoardWriter();
  /// `value` is stored as float32 (Summary.Value.simple_value); wall_time in unix seconds.
  void add_scalar(const std::string& tag, double value, int64_t step, double wall_time);
  /// Hands every record written so far to the operating system: readers of the file see them.
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& data);
  std::string path_;
  std::ofstream out_;
  std::chrono::milliseconds flush_interval_;
  std::function<Clock::time_point()> now_;
  Clock::time_point last_flush_;
};

/// One JSON object per line: {"step": 10, "epoch": 0, "loss": 0.5, ...}; whole numbers below 2^53
/// without a decimal point, others with full precision (%.17g), non-finite values as null. Flushed
/// after every line. The parent directory is created if missing; `append` keeps existing lines (a
/// resumed run), otherwise the file is truncated. Throws dtrain::Error naming the path when it
/// cannot be opened or written. Not thread-safe.
class JsonlWriter {
 public:
  explicit JsonlWriter(const std::string& path, bool append = false);
  /// Keys in the given order.
  void write(const std::vector<std::pair<std::string, double>>& fields);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace dtrain::train
