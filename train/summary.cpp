// TensorBoard event files (TFRecord framing of tensorflow.Event) and JSON-lines metrics.
#include "dtrain/train/summary.h"

#include <unistd.h>

#include <bit>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <system_error>
#include <utility>

#include "dtrain/tensor/check.h"
#include "dtrain/train/encoding.h"
#include "train/tensorboard.pb.h"

namespace dtrain::train {
namespace {

static_assert(
    std::endian::native == std::endian::little,
    "TFRecord framing is little-endian; this writer copies integers as they are in memory");

std::string hostname() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

/// Creates `dir` and its parents; throws naming it on failure.
void create_directories(const std::filesystem::path& dir, const char* what) {
  if (dir.empty()) return;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  DTRAIN_CHECK(!ec, what, ": cannot create directory ", dir.string(), ": ", ec.message());
}

std::string format_number(double value) {
  if (!std::isfinite(value)) return "null";
  char text[32];
  // Whole numbers that a double holds exactly print as integers (steps, epochs, counts).
  if (value == std::trunc(value) && std::fabs(value) < 9007199254740992.0) {
    std::snprintf(text, sizeof(text), "%lld", static_cast<long long>(value));
  } else {
    std::snprintf(text, sizeof(text), "%.17g", value);
  }
  return text;
}

}  // namespace

// ---- TensorBoardWriter ------------------------------------------------------------------------

TensorBoardWriter::TensorBoardWriter(const std::string& dir,
                                     std::chrono::milliseconds flush_interval,
                                     std::function<Clock::time_point()> clock)
    : flush_interval_(flush_interval), now_(std::move(clock)) {
  create_directories(dir, "TensorBoardWriter");
  const std::string base = (std::filesystem::path(dir) / "events.out.tfevents.").string() +
                           std::to_string(static_cast<long long>(std::time(nullptr))) + "." +
                           hostname();
  path_ = base;
  for (int n = 1; std::filesystem::exists(path_); ++n) path_ = base + "." + std::to_string(n);
  out_.open(path_, std::ios::binary | std::ios::trunc);
  DTRAIN_CHECK(out_.is_open(), "TensorBoardWriter: cannot open ", path_,
               " for writing: ", std::strerror(errno));

  tensorflow::Event event;
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  event.set_wall_time(std::chrono::duration<double>(now).count());
  event.set_file_version("brain.Event:2");
  write_record(event.SerializeAsString());
  flush();
}

TensorBoardWriter::~TensorBoardWriter() {
  // A destructor must not throw; a write error was already reported by the call that hit it.
  if (out_.is_open()) out_.flush();
}

void TensorBoardWriter::add_scalar(const std::string& tag, double value, int64_t step,
                                   double wall_time) {
  tensorflow::Event event;
  event.set_wall_time(wall_time);
  event.set_step(step);
  tensorflow::Summary::Value* entry = event.mutable_summary()->add_value();
  entry->set_tag(tag);
  entry->set_simple_value(static_cast<float>(value));
  write_record(event.SerializeAsString());
  // A long run writes a few dozen bytes per logged step, so without this the stream's buffer
  // would keep them from TensorBoard for hours.
  if (now_() - last_flush_ >= flush_interval_) flush();
}

void TensorBoardWriter::flush() {
  out_.flush();
  DTRAIN_CHECK(out_.good(), "TensorBoardWriter: cannot write ", path_, ": ", std::strerror(errno));
  last_flush_ = now_();
}

void TensorBoardWriter::write_record(const std::string& data) {
  const uint64_t length = data.size();
  const uint32_t length_crc = masked_crc32c(&length, sizeof(length));
  const uint32_t data_crc = masked_crc32c(data.data(), data.size());
  out_.write(reinterpret_cast<const char*>(&length), sizeof(length));
  out_.write(reinterpret_cast<const char*>(&length_crc), sizeof(length_crc));
  out_.write(data.data(), static_cast<std::streamsize>(data.size()));
  out_.write(reinterpret_cast<const char*>(&data_crc), sizeof(data_crc));
  DTRAIN_CHECK(out_.good(), "TensorBoardWriter: cannot write ", path_, ": ", std::strerror(errno));
}

// ---- JsonlWriter ------------------------------------------------------------------------------

JsonlWriter::JsonlWriter(const std::string& path, bool append) : path_(path) {
  create_directories(std::filesystem::path(path).parent_path(), "JsonlWriter");
  out_.open(path, append ? std::ios::app : std::ios::trunc);
  DTRAIN_CHECK(out_.is_open(), "JsonlWriter: cannot open ", path,
               " for writing: ", std::strerror(errno));
}

void JsonlWriter::write(const std::vector<std::pair<std::string, double>>& fields) {
  std::string line = "{";
  for (size_t i = 0; i < fields.size(); ++i) {
    if (i > 0) line += ", ";
    line += detail::json_string(fields[i].first);
    line += ": ";
    line += format_number(fields[i].second);
  }
  line += "}\n";
  out_ << line;
  // Flushed per line so a crashed or killed run still leaves every completed line readable.
  out_.flush();
  DTRAIN_CHECK(out_.good(), "JsonlWriter: cannot write ", path_, ": ", std::strerror(errno));
}

}  // namespace dtrain::train
