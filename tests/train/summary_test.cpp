// CRC-32C vectors, TensorBoard event files read back frame by frame (both CRCs, then
// tensorflow.Event) and when their records reach the file, and the JSON-lines writer's exact text.
#include "dtrain/train/summary.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <regex>
#include <thread>

#include "dtrain/tensor/check.h"
#include "dtrain/train/config.h"
#include "dtrain/train/encoding.h"
#include "dtrain/train/metrics_sink.h"
#include "train/scratch_dir.h"
#include "train/tensorboard.pb.h"

namespace dtrain::train {
namespace {

using ::testing::HasSubstr;
using testutil::read_bytes;
using testutil::ScratchDir;
using testutil::write_bytes;

TEST(Crc32c, KnownVectors) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  const std::string zeros(32, '\0');
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  // RFC 3720 (iSCSI) appendix B.4.
  const std::string ones(32, '\xff');
  EXPECT_EQ(crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  std::string ascending(32, '\0');
  for (int i = 0; i < 32; ++i) ascending[i] = static_cast<char>(i);
  EXPECT_EQ(crc32c(ascending.data(), ascending.size()), 0x46DD794Eu);
  EXPECT_EQ(crc32c("", 0), 0u);
}

TEST(Crc32c, ContinuesAcrossPieces) {
  const std::string text = "The quick brown fox jumps over the lazy dog";
  const uint32_t whole = crc32c(text.data(), text.size());
  for (size_t split = 0; split <= text.size(); split += 7) {
    EXPECT_EQ(crc32c(text.data() + split, text.size() - split, crc32c(text.data(), split)), whole)
        << "split at " << split;
  }
}

TEST(Crc32c, MaskedIsRotatedPlusConstant) {
  // crc 0xE3069283: rotate right by 15, add 0xa282ead8 modulo 2^32.
  EXPECT_EQ(masked_crc32c("123456789", 9), 0xC78AB0E5u);
  const std::string data = "tfrecord payload";
  const uint32_t crc = crc32c(data.data(), data.size());
  EXPECT_EQ(masked_crc32c(data.data(), data.size()),
            static_cast<uint32_t>(((crc >> 15) | (crc << 17)) + 0xa282ead8u));
}

/// Every record of a TFRecord file; fails the test on a bad frame or checksum.
std::vector<tensorflow::Event> read_events(const std::string& path) {
  const std::string file = read_bytes(path);
  std::vector<tensorflow::Event> events;
  size_t at = 0;
  while (at < file.size()) {
    EXPECT_GE(file.size() - at, 12u) << "partial frame header at byte " << at;
    if (file.size() - at < 12) break;
    uint64_t length;
    uint32_t length_crc, data_crc;
    std::memcpy(&length, file.data() + at, 8);
    std::memcpy(&length_crc, file.data() + at + 8, 4);
    EXPECT_EQ(length_crc, masked_crc32c(file.data() + at, 8)) << "length CRC at byte " << at;
    EXPECT_GE(file.size() - at - 12, length + 4) << "record at byte " << at << " is cut off";
    if (file.size() - at - 12 < length + 4) break;
    const char* data = file.data() + at + 12;
    std::memcpy(&data_crc, data + length, 4);
    EXPECT_EQ(data_crc, masked_crc32c(data, length)) << "data CRC at byte " << at;
    tensorflow::Event event;
    EXPECT_TRUE(event.ParseFromArray(data, static_cast<int>(length))) << "record at byte " << at;
    events.push_back(event);
    at += 12 + length + 4;
  }
  return events;
}

std::string this_hostname() {
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  return name;
}

TEST(TensorBoardWriter, WritesFramedEventsTensorBoardReads) {
  ScratchDir dir;
  const std::string logdir = dir / "runs/mlp";  // nested and missing: created by the writer
  const double before = static_cast<double>(std::time(nullptr));
  std::string path;
  {
    TensorBoardWriter writer(logdir);
    path = writer.path();
    writer.add_scalar("train/loss", 0.5, 1, 1700000000.25);
    writer.add_scalar("train/loss", 0.1, 2, 1700000001.5);
    writer.add_scalar("lr", 1e-3, 2, 1700000001.75);
  }
  const std::string name = std::filesystem::path(path).filename().string();
  EXPECT_EQ(std::filesystem::path(path).parent_path(), std::filesystem::path(logdir));
  std::smatch parts;
  ASSERT_TRUE(std::regex_match(name, parts, std::regex(R"(events\.out\.tfevents\.(\d+)\.(.+))")))
      << name;
  EXPECT_GE(std::stod(parts[1].str()), before);
  EXPECT_EQ(parts[2].str(), this_hostname());

  const std::vector<tensorflow::Event> events = read_events(path);
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[0].file_version(), "brain.Event:2");
  EXPECT_GE(events[0].wall_time(), before);
  EXPECT_LE(events[0].wall_time(), before + 60);

  struct Expected {
    const char* tag;
    float value;
    int64_t step;
    double wall_time;
  };
  const Expected expected[] = {{"train/loss", 0.5f, 1, 1700000000.25},
                               {"train/loss", 0.1f, 2, 1700000001.5},
                               {"lr", 1e-3f, 2, 1700000001.75}};
  for (size_t i = 0; i < 3; ++i) {
    SCOPED_TRACE(i);
    const tensorflow::Event& event = events[i + 1];
    ASSERT_TRUE(event.has_summary());
    ASSERT_EQ(event.summary().value_size(), 1);
    EXPECT_EQ(event.summary().value(0).tag(), expected[i].tag);
    EXPECT_EQ(event.summary().value(0).simple_value(), expected[i].value);
    EXPECT_EQ(event.step(), expected[i].step);
    EXPECT_EQ(event.wall_time(), expected[i].wall_time);
  }
}

TEST(TensorBoardWriter, FlushMakesRecordsVisibleBeforeClose) {
  ScratchDir dir;
  TensorBoardWriter writer(dir.path().string());
  writer.add_scalar("x", 3.0, 7, 1.0);
  writer.flush();
  const auto events = read_events(writer.path());
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[1].step(), 7);
}

TEST(TensorBoardWriter, ARecordWrittenOnceTheFlushIntervalHasPassedFlushesTheFile) {
  ScratchDir dir;
  TensorBoardWriter::Clock::time_point now{};  // the writer's clock, moved by hand
  TensorBoardWriter writer(dir.path().string(), std::chrono::seconds(30), [&] { return now; });
  now += std::chrono::seconds(29);
  writer.add_scalar("x", 1.0, 1, 1.0);
  // A record of a few dozen bytes stays in the stream's buffer until something flushes it.
  EXPECT_EQ(read_events(writer.path()).size(), 1u) << "flushed before the interval had passed";
  now += std::chrono::seconds(1);
  writer.add_scalar("x", 2.0, 2, 2.0);
  std::vector<tensorflow::Event> events = read_events(writer.path());
  ASSERT_EQ(events.size(), 3u) << "not flushed 30 s after the last flush";
  EXPECT_EQ(events[1].step(), 1);
  EXPECT_EQ(events[2].step(), 2);
  // The interval counts from that flush.
  now += std::chrono::seconds(29);
  writer.add_scalar("x", 3.0, 3, 3.0);
  EXPECT_EQ(read_events(writer.path()).size(), 3u);
  now += std::chrono::seconds(1);
  writer.add_scalar("x", 4.0, 4, 4.0);
  events = read_events(writer.path());
  ASSERT_EQ(events.size(), 5u);
  EXPECT_EQ(events[4].step(), 4);
}

TEST(TensorBoardWriter, AZeroFlushIntervalFlushesEveryRecord) {
  ScratchDir dir;
  TensorBoardWriter writer(dir.path().string(), std::chrono::milliseconds(0));
  writer.add_scalar("x", 1.0, 1, 1.0);
  EXPECT_EQ(read_events(writer.path()).size(), 2u);
  writer.add_scalar("x", 2.0, 2, 2.0);
  const auto events = read_events(writer.path());
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[2].step(), 2);
  EXPECT_EQ(events[2].summary().value(0).simple_value(), 2.0f);
}

TEST(MetricsSink, FlushPutsTheScalarsSoFarInTheEventFile) {
  ScratchDir dir;
  Config config;
  config.log.dir = dir / "logs";
  config.log.progress = "off";
  config.log.every_steps = 1;
  MetricsSink sink(config, /*total_steps=*/10, /*append=*/false);
  sink.step(/*step=*/1, /*epoch=*/0, /*epochs=*/1, /*loss=*/0.25, /*lr=*/0.1,
            /*samples_per_step=*/32, /*last=*/false);
  sink.flush();
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(config.log.dir)) {
    if (entry.path().filename().string().starts_with("events.out.tfevents.")) {
      files.push_back(entry.path().string());
    }
  }
  ASSERT_EQ(files.size(), 1u);
  const std::vector<tensorflow::Event> events = read_events(files[0]);
  std::vector<std::string> tags;
  for (const auto& event : events) {
    if (!event.has_summary()) continue;
    EXPECT_EQ(event.step(), 1);
    tags.push_back(event.summary().value(0).tag());
    if (tags.back() == "train/loss") {
      EXPECT_EQ(event.summary().value(0).simple_value(), 0.25f);
    }
  }
  EXPECT_EQ(tags, (std::vector<std::string>{"train/loss", "train/lr", "train/samples_per_sec",
                                            "train/gflops"}));
}

/// A quiet run's config for MetricsSink: logs under `dir`, no progress display, no event file.
Config sink_config(const ScratchDir& dir, int64_t every_steps) {
  Config config;
  config.log.dir = dir / "logs";
  config.log.progress = "off";
  config.log.tensorboard = false;
  config.log.every_steps = every_steps;
  return config;
}

/// The last value of `key` in the training records of `path` (metrics.jsonl), or -1 when none.
double last_record_value(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  std::string line;
  double value = -1;
  const std::regex field("\"" + key + "\": *([0-9.eE+-]+)");
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_search(line, m, field)) value = std::stod(m[1]);
  }
  return value;
}

// Steps of 20 ms or more around a 200 ms evaluation: the window's throughput counts the four
// steps' time, not only the two after the evaluation. (A slower machine only lowers the rate.)
TEST(MetricsSink, ThroughputAfterAnEvaluationCountsTheWholeWindowsSteps) {
  ScratchDir dir;
  const Config config = sink_config(dir, 4);
  const double samples_per_step = 100;
  const auto pause = [](int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); };
  {
    MetricsSink sink(config, /*total_steps=*/4, /*append=*/false);
    for (int64_t step = 1; step <= 4; ++step) {
      pause(20);
      sink.step(step, /*epoch=*/0, /*epochs=*/1, /*loss=*/1.0, /*lr=*/0.1, samples_per_step,
                /*last=*/step == 4);
      if (step == 2) {
        pause(200);  // the evaluation
        sink.test(step, 0, 1, /*loss=*/1.0, /*accuracy=*/0.5);
      }
    }
    sink.finish();
  }
  const double rate = last_record_value(config.log.dir + "/metrics.jsonl", "samples_per_sec");
  ASSERT_GT(rate, 0) << "no samples_per_sec in metrics.jsonl";
  // At least 4 x 20 ms of steps: at most 5,000 samples/s (2x that when the evaluation resets it).
  EXPECT_LE(rate, 4 * samples_per_step / 0.080 * 1.02);
}

// A window's gflops are its training steps' matrix products over their time: samples_per_sec
// shares that time, so gflops / samples_per_sec gives the FLOPs per sample back. An evaluation's
// products inside the window (here 100x a step's) are left out.
TEST(MetricsSink, GflopsOfAWindowLeaveTheEvaluationOut) {
  ScratchDir dir;
  const Config config = sink_config(dir, 2);
  const Tensor a = ones({8, 16}), b = ones({16, 4}), big = ones({80, 16});
  const double step_flops = 2.0 * 8 * 16 * 4;
  {
    MetricsSink sink(config, /*total_steps=*/2, /*append=*/false);
    ops::matmul(a, b);
    sink.step(1, /*epoch=*/0, /*epochs=*/1, /*loss=*/1.0, /*lr=*/0.1, /*samples_per_step=*/1,
              /*last=*/false);
    for (int i = 0; i < 10; ++i) ops::matmul(big, b);  // the evaluation
    sink.test(1, 0, 1, /*loss=*/1.0, /*accuracy=*/0.5);
    ops::matmul(a, b);
    sink.step(2, /*epoch=*/0, /*epochs=*/1, /*loss=*/1.0, /*lr=*/0.1, /*samples_per_step=*/1,
              /*last=*/true);
    sink.finish();
  }
  const std::string metrics = config.log.dir + "/metrics.jsonl";
  const double rate = last_record_value(metrics, "samples_per_sec");
  const double gflops = last_record_value(metrics, "gflops");
  ASSERT_GT(rate, 0) << "no samples_per_sec in metrics.jsonl";
  ASSERT_GE(gflops, 0) << "no gflops in metrics.jsonl";
  EXPECT_NEAR(gflops * 1e9 / rate, step_flops, step_flops * 1e-9);
}

TEST(TensorBoardWriter, SecondWriterInSameSecondGetsItsOwnFile) {
  ScratchDir dir;
  TensorBoardWriter first(dir.path().string());
  TensorBoardWriter second(dir.path().string());
  EXPECT_NE(first.path(), second.path());
  first.add_scalar("a", 1, 1, 1);
  second.add_scalar("b", 2, 1, 1);
  first.flush();
  second.flush();
  EXPECT_EQ(read_events(first.path()).size(), 2u);
  EXPECT_EQ(read_events(second.path()).size(), 2u);
}

TEST(TensorBoardWriter, UncreatableDirectoryIsNamed) {
  ScratchDir dir;
  write_bytes(dir / "file", "not a directory");
  const std::string logdir = dir / "file/logs";
  try {
    TensorBoardWriter writer(logdir);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_THAT(e.message(), HasSubstr(logdir));
  }
}

std::vector<std::string> lines_of(const std::string& path) {
  std::vector<std::string> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST(JsonlWriter, WritesOneObjectPerLine) {
  ScratchDir dir;
  const std::string path = dir / "logs/metrics.jsonl";
  JsonlWriter writer(path);
  writer.write({{"step", 10}, {"epoch", 0}, {"loss", 0.5}, {"lr", 0.1}, {"neg", -3}});
  writer.write({{"step", 20},
                {"loss", std::numeric_limits<double>::quiet_NaN()},
                {"inf", std::numeric_limits<double>::infinity()},
                {"ninf", -std::numeric_limits<double>::infinity()},
                {"two53", 9007199254740992.0},
                {"huge", 1e300},
                {"tiny", 1e-310}});
  // Flushed per line: readable while the writer is still open.
  const std::vector<std::string> lines = lines_of(path);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0],
            R"({"step": 10, "epoch": 0, "loss": 0.5, "lr": 0.10000000000000001, "neg": -3})");
  EXPECT_EQ(lines[1],
            R"({"step": 20, "loss": null, "inf": null, "ninf": null, "two53": 9007199254740992, )"
            R"("huge": 1.0000000000000001e+300, "tiny": 9.9999999999999694e-311})");
  EXPECT_EQ(std::strtod("0.10000000000000001", nullptr), 0.1);
}

TEST(JsonlWriter, EscapesKeys) {
  ScratchDir dir;
  const std::string path = dir / "m.jsonl";
  JsonlWriter writer(path);
  writer.write({{"a\"b\\c", 1}});
  EXPECT_EQ(lines_of(path), std::vector<std::string>{R"({"a\"b\\c": 1})"});
}

TEST(JsonlWriter, TruncatesUnlessAppending) {
  ScratchDir dir;
  const std::string path = dir / "m.jsonl";
  JsonlWriter(path).write({{"step", 1}});
  JsonlWriter(path, /*append=*/true).write({{"step", 2}});
  EXPECT_EQ(lines_of(path), (std::vector<std::string>{R"({"step": 1})", R"({"step": 2})"}));
  JsonlWriter(path).write({{"step", 3}});
  EXPECT_EQ(lines_of(path), std::vector<std::string>{R"({"step": 3})"});
}

TEST(JsonlWriter, UnopenablePathIsNamed) {
  ScratchDir dir;
  std::filesystem::create_directories(dir / "taken");
  const std::string path = dir / "taken";  // a directory cannot be opened as a file
  try {
    JsonlWriter writer(path);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_THAT(e.message(), HasSubstr(path));
  }
}

}  // namespace
}  // namespace dtrain::train
