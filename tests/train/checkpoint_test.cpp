// Checkpoint files: bit-exact round trip, every load error named, atomic saves that fail cleanly,
// listing and pruning by step, and recovery from a corrupt newest checkpoint.
#include "dtrain/train/checkpoint.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <limits>
#include <mutex>
#include <regex>
#include <thread>

#include "dtrain/train/encoding.h"
#include "train/checkpoint.pb.h"
#include "train/scratch_dir.h"

namespace dtrain::train {
namespace {

using ::testing::HasSubstr;
using testutil::read_bytes;
using testutil::ScratchDir;
using testutil::write_bytes;

constexpr size_t kHeaderBytes = 20;

std::string bytes_of(const Tensor& t) {
  return std::string(static_cast<const char*>(t.data_ptr()), t.nbytes());
}

std::string bytes_of(double value) { return std::string(reinterpret_cast<char*>(&value), 8); }

CheckpointData make_sample() {
  CheckpointData data;
  data.step = 1234567890123;
  data.epoch = 7;
  data.batch_in_epoch = 42;
  data.world_size = 4;
  data.config_yaml =
      std::string("model: mlp\nlr: 0.1\n# \xC3\xA9t\xC3\xA9 and a NUL:") + '\0' + "!";
  const float nan_with_payload = std::bit_cast<float>(0x7FC00123u);
  data.model.emplace_back(
      "fc2.weight",  // deliberately not in alphabetical order: the order must survive
      from_vector<float>({1.5f, -0.0f, std::numeric_limits<float>::denorm_min(),
                          std::numeric_limits<float>::infinity(), nan_with_payload, 3.14159265f},
                         {2, 3}));
  data.model.emplace_back("fc1.bias", from_vector<double>({0.1, -1e-300, 1e300}, {3}));
  data.model.emplace_back("step_counter", from_vector<int64_t>({INT64_MIN, -1, 0, INT64_MAX}, {4}));
  data.model.emplace_back("empty", Tensor({0, 5}, DType::kFloat32));
  data.optimizer_tensors.emplace("fc1.bias.exp_avg", from_vector<double>({1.0 / 3, 2.0 / 3, 1.0}));
  data.optimizer_tensors.emplace(
      "fc2.weight.momentum", from_vector<float>({0.25f, 0.5f, 0.75f, 1.f, 1.25f, 1.5f}, {3, 2}));
  data.optimizer_scalars = {{"beta1", 0.9}, {"step", 17.0}, {"eps", 1e-8}};
  data.schedule_step = 99;
  data.rng_offsets = {{"dropout", 12345}, {"sampler", UINT64_MAX}};
  data.metrics = {{"loss", 0.123456789012345678}, {"accuracy", 0.5}};
  return data;
}

std::string load_error(const std::string& path) {
  try {
    load_checkpoint(path);
  } catch (const Error& e) {
    return e.message();
  }
  return "(no exception)";
}

template <class Fn>
std::string save_error(Fn&& save) {
  try {
    save();
  } catch (const Error& e) {
    return e.message();
  }
  return "(no exception)";
}

/// A file with a valid header around `payload`.
std::string framed(const std::string& payload, uint32_t version = 1) {
  std::string file = "DTCK";
  const uint64_t length = payload.size();
  const uint32_t checksum = crc32c(payload.data(), payload.size());
  file.append(reinterpret_cast<const char*>(&version), 4);
  file.append(reinterpret_cast<const char*>(&length), 8);
  file.append(reinterpret_cast<const char*>(&checksum), 4);
  return file + payload;
}

TEST(Checkpoint, RoundTripIsBitExact) {
  ScratchDir dir;
  const CheckpointData saved = make_sample();
  const std::string path = checkpoint_path(dir.path().string(), saved.step);
  save_checkpoint(path, saved);
  const CheckpointData loaded = load_checkpoint(path);

  EXPECT_EQ(loaded.step, saved.step);
  EXPECT_EQ(loaded.epoch, saved.epoch);
  EXPECT_EQ(loaded.batch_in_epoch, saved.batch_in_epoch);
  EXPECT_EQ(loaded.world_size, saved.world_size);
  EXPECT_EQ(loaded.config_yaml, saved.config_yaml);
  EXPECT_EQ(loaded.schedule_step, saved.schedule_step);
  EXPECT_EQ(loaded.rng_offsets, saved.rng_offsets);

  ASSERT_EQ(loaded.model.size(), saved.model.size());
  for (size_t i = 0; i < saved.model.size(); ++i) {
    SCOPED_TRACE(saved.model[i].first);
    EXPECT_EQ(loaded.model[i].first, saved.model[i].first);
    EXPECT_EQ(loaded.model[i].second.dtype(), saved.model[i].second.dtype());
    EXPECT_EQ(loaded.model[i].second.shape(), saved.model[i].second.shape());
    EXPECT_EQ(bytes_of(loaded.model[i].second), bytes_of(saved.model[i].second));
  }
  ASSERT_EQ(loaded.optimizer_tensors.size(), saved.optimizer_tensors.size());
  for (const auto& [name, tensor] : saved.optimizer_tensors) {
    SCOPED_TRACE(name);
    ASSERT_EQ(loaded.optimizer_tensors.count(name), 1u);
    const Tensor& back = loaded.optimizer_tensors.at(name);
    EXPECT_EQ(back.dtype(), tensor.dtype());
    EXPECT_EQ(back.shape(), tensor.shape());
    EXPECT_EQ(bytes_of(back), bytes_of(tensor));
  }
  for (const auto maps : {&CheckpointData::optimizer_scalars, &CheckpointData::metrics}) {
    ASSERT_EQ((loaded.*maps).size(), (saved.*maps).size());
    for (const auto& [key, value] : saved.*maps) {
      ASSERT_EQ((loaded.*maps).count(key), 1u) << key;
      EXPECT_EQ(bytes_of((loaded.*maps).at(key)), bytes_of(value)) << key;
    }
  }
}

TEST(Checkpoint, EqualStatesGiveEqualFiles) {
  ScratchDir dir;
  save_checkpoint(dir / "a.dtck", make_sample());
  save_checkpoint(dir / "b.dtck", make_sample());
  EXPECT_EQ(read_bytes(dir / "a.dtck"), read_bytes(dir / "b.dtck"));
}

TEST(Checkpoint, HeaderLayout) {
  ScratchDir dir;
  save_checkpoint(dir / "c.dtck", make_sample());
  const std::string file = read_bytes(dir / "c.dtck");
  ASSERT_GT(file.size(), kHeaderBytes);
  EXPECT_EQ(file.substr(0, 4), "DTCK");
  uint32_t version, checksum;
  uint64_t length;
  std::memcpy(&version, file.data() + 4, 4);
  std::memcpy(&length, file.data() + 8, 8);
  std::memcpy(&checksum, file.data() + 16, 4);
  EXPECT_EQ(version, 1u);
  EXPECT_EQ(length, file.size() - kHeaderBytes);
  EXPECT_EQ(checksum, crc32c(file.data() + kHeaderBytes, length));
  proto::Checkpoint message;
  ASSERT_TRUE(message.ParseFromString(file.substr(kHeaderBytes)));
  EXPECT_EQ(message.step(), 1234567890123);
  EXPECT_EQ(message.model(0).dtype(), "float32");
  EXPECT_EQ(message.model(2).dtype(), "int64");
}

TEST(Checkpoint, TruncatedFileIsNamed) {
  ScratchDir dir;
  const std::string good = dir / "good.dtck";
  save_checkpoint(good, make_sample());
  const std::string file = read_bytes(good);
  for (const size_t cut : {size_t{0}, size_t{3}, size_t{4}, size_t{19}, size_t{20}, size_t{21},
                           file.size() / 2, file.size() - 1}) {
    SCOPED_TRACE("cut at " + std::to_string(cut) + " of " + std::to_string(file.size()));
    const std::string path = dir / ("cut" + std::to_string(cut) + ".dtck");
    write_bytes(path, file.substr(0, cut));
    const std::string message = load_error(path);
    EXPECT_THAT(message, HasSubstr(path));
    EXPECT_THAT(message, HasSubstr("truncated"));
    if (cut >= kHeaderBytes) {
      EXPECT_THAT(message,
                  HasSubstr("header says " + std::to_string(file.size() - kHeaderBytes) +
                            " payload bytes, file has " + std::to_string(cut - kHeaderBytes)));
    }
  }
}

TEST(Checkpoint, FlippedPayloadByteFailsChecksum) {
  ScratchDir dir;
  const std::string path = dir / "c.dtck";
  save_checkpoint(path, make_sample());
  const std::string good = read_bytes(path);
  for (const size_t at : {kHeaderBytes, good.size() / 2, good.size() - 1}) {
    SCOPED_TRACE("byte " + std::to_string(at));
    std::string bad = good;
    bad[at] ^= 0x01;
    write_bytes(path, bad);
    const std::string message = load_error(path);
    EXPECT_THAT(message, HasSubstr(path));
    EXPECT_THAT(message, HasSubstr("checksum mismatch"));
  }
}

TEST(Checkpoint, BadMagicIsNamed) {
  ScratchDir dir;
  const std::string path = dir / "c.dtck";
  save_checkpoint(path, make_sample());
  std::string bytes = read_bytes(path);
  bytes[0] = 'P';  // e.g. a zip or a PyTorch file given by mistake
  bytes[1] = 'K';
  write_bytes(path, bytes);
  const std::string message = load_error(path);
  EXPECT_THAT(message, HasSubstr(path));
  EXPECT_THAT(message, HasSubstr("bad magic"));
}

TEST(Checkpoint, UnsupportedVersionIsNamed) {
  ScratchDir dir;
  const std::string path = dir / "c.dtck";
  save_checkpoint(path, make_sample());
  std::string bytes = read_bytes(path);
  bytes[4] = 2;
  write_bytes(path, bytes);
  const std::string message = load_error(path);
  EXPECT_THAT(message, HasSubstr(path));
  EXPECT_THAT(message, HasSubstr("unsupported format version 2"));
}

TEST(Checkpoint, MissingFileIsNamed) {
  ScratchDir dir;
  const std::string path = dir / "nope.dtck";
  const std::string message = load_error(path);
  EXPECT_THAT(message, HasSubstr(path));
  EXPECT_THAT(message, HasSubstr("No such file or directory"));
}

TEST(Checkpoint, UnparsablePayloadIsNamed) {
  ScratchDir dir;
  const std::string path = dir / "c.dtck";
  write_bytes(path, framed(std::string("\x08\xff\xff", 3)));  // field 1, unterminated varint
  const std::string message = load_error(path);
  EXPECT_THAT(message, HasSubstr(path));
  EXPECT_THAT(message, HasSubstr("does not parse as dtrain.proto.Checkpoint"));
}

TEST(Checkpoint, TensorSizeNotMatchingShapeIsNamed) {
  ScratchDir dir;
  proto::Checkpoint message;
  proto::TensorData* tensor = message.add_model();
  tensor->set_name("fc.weight");
  tensor->add_shape(2);
  tensor->add_shape(3);
  tensor->set_dtype("float32");
  tensor->set_data(std::string(20, '\0'));  // 2*3*4 = 24 expected
  const std::string path = dir / "c.dtck";
  write_bytes(path, framed(message.SerializeAsString()));
  const std::string error = load_error(path);
  EXPECT_THAT(error, HasSubstr(path));
  EXPECT_THAT(error, HasSubstr("'fc.weight'"));
  EXPECT_THAT(error, HasSubstr("needs 24 bytes, payload has 20"));

  tensor->set_data(std::string(24, '\0'));
  tensor->set_dtype("float128");
  write_bytes(path, framed(message.SerializeAsString()));
  EXPECT_THAT(load_error(path), HasSubstr("unknown dtype 'float128'"));
}

TEST(Checkpoint, AFifoOrADeviceIsRefusedBeforeAnythingIsRead) {
  ScratchDir dir;
  const std::string fifo = dir / "ckpt-0000000001.dtck";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  // A writer that never writes: a reader that reads waits for it. The guard closes it after 10 s
  // at the latest, so that a failing test ends.
  const int writer = ::open(fifo.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(writer, 0);
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::thread guard([&] {
    std::unique_lock lock(mu);
    cv.wait_for(lock, std::chrono::seconds(10), [&] { return done; });
    ::close(writer);
  });
  const std::string message = load_error(fifo);
  {
    std::lock_guard lock(mu);
    done = true;
  }
  cv.notify_all();
  guard.join();
  EXPECT_THAT(message, HasSubstr(fifo + ": not a regular file (a FIFO)"));
  EXPECT_THAT(load_error("/dev/null"), HasSubstr("not a regular file (a character device)"));
  EXPECT_THAT(load_error(dir.path().string()), HasSubstr("not a regular file (a directory)"));
}

TEST(Checkpoint, AHeaderAnnouncingMoreThanAProtobufHoldsIsRefusedWithoutReading) {
  ScratchDir dir;
  // Sparse: 2 GiB + 1 of payload costs no disk and, read, would cost 2 GiB of memory.
  const std::string path = dir / "huge.dtck";
  const uint64_t length = (uint64_t{1} << 31) + 1;
  std::string header = framed("").substr(0, kHeaderBytes);
  std::memcpy(header.data() + 8, &length, sizeof length);
  write_bytes(path, header);
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(kHeaderBytes + length)), 0);
  EXPECT_THAT(load_error(path), HasSubstr("header says 2147483649 payload bytes, more than the 2 "
                                          "GiB a checkpoint can hold"));
}

TEST(Checkpoint, NamesWithControlCharactersAreRefusedAndPrintedEscaped) {
  ScratchDir dir;
  const std::string path = dir / "c.dtck";
  const std::string escape = "fc1.\x1b[2J\x1b]0;owned\x07weight";
  for (const int where : {0, 1, 2}) {
    SCOPED_TRACE("in place " + std::to_string(where));
    proto::Checkpoint message;
    proto::TensorData* t = where == 1 ? message.add_optimizer_tensors() : message.add_model();
    t->set_name(where == 2 ? "fc1.weight" : escape);
    t->set_dtype("float32");
    t->add_shape(1);
    t->set_data(std::string(4, '\0'));
    if (where == 2) (*message.mutable_metrics())[escape] = 1.0;
    write_bytes(path, framed(message.SerializeAsString()));
    const std::string error = load_error(path);
    EXPECT_THAT(error,
                HasSubstr("'fc1.\\x1b[2J\\x1b]0;owned\\x07weight' holds control characters"));
    EXPECT_EQ(error.find('\x1b'), std::string::npos) << "a raw escape reached the message";
  }
}

TEST(Checkpoint, AnUnknownDtypeIsPrintedEscaped) {
  ScratchDir dir;
  const std::string path = dir / "c.dtck";
  proto::Checkpoint message;
  proto::TensorData* t = message.add_model();
  t->set_name("w");
  t->set_dtype("float\x1b[31m");
  write_bytes(path, framed(message.SerializeAsString()));
  EXPECT_THAT(load_error(path), HasSubstr("unknown dtype 'float\\x1b[31m'"));
}

// ---- failing saves ------------------------------------------------------------------------------

std::vector<std::string> temp_files(const ScratchDir& dir) {
  std::vector<std::string> found;
  for (const std::string& name : dir.entries()) {
    if (name.find(".tmp.") != std::string::npos) found.push_back(name);
  }
  return found;
}

TEST(CheckpointSave, ReadOnlyDirectoryThrowsAndKeepsOldCheckpoint) {
  ScratchDir dir;
  const std::string path = checkpoint_path(dir.path().string(), 10);
  CheckpointData old_state = make_sample();
  old_state.step = 10;
  save_checkpoint(path, old_state);
  const std::string old_bytes = read_bytes(path);

  ASSERT_EQ(::chmod(dir.path().c_str(), 0555), 0);
  const std::string probe = dir / "probe";
  if (FILE* f = std::fopen(probe.c_str(), "w")) {
    std::fclose(f);
    std::remove(probe.c_str());
    GTEST_SKIP() << "chmod 0555 does not stop this process from writing (running as root or with "
                    "CAP_DAC_OVERRIDE); SaveFailingMidWrite and RenameOntoDirectory cover the "
                    "failure paths instead";
  }
  const std::string message = save_error([&] { save_checkpoint(path, make_sample()); });
  EXPECT_THAT(message, HasSubstr(path));
  EXPECT_THAT(message, HasSubstr("Permission denied"));
  EXPECT_EQ(read_bytes(path), old_bytes);
  EXPECT_THAT(temp_files(dir), ::testing::IsEmpty());
}

TEST(CheckpointSave, FailingMidWriteKeepsOldCheckpointAndRemovesTemp) {
  ScratchDir dir;
  const std::string path = checkpoint_path(dir.path().string(), 10);
  CheckpointData old_state;
  old_state.step = 10;
  save_checkpoint(path, old_state);
  const std::string old_bytes = read_bytes(path);

  CheckpointData big = make_sample();
  big.model.emplace_back("big", zeros({256, 1024}));  // 1 MiB
  // A file-size limit makes write() fail with EFBIG part-way, even for root.
  rlimit saved_limit{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved_limit), 0);
  rlimit small_limit = saved_limit;
  small_limit.rlim_cur = 64 * 1024;
  const auto saved_handler = std::signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small_limit), 0);
  const std::string message = save_error([&] { save_checkpoint(path, big); });
  ::setrlimit(RLIMIT_FSIZE, &saved_limit);
  std::signal(SIGXFSZ, saved_handler);

  EXPECT_THAT(message, HasSubstr(path));
  EXPECT_THAT(message, HasSubstr("File too large"));
  EXPECT_EQ(read_bytes(path), old_bytes);
  EXPECT_THAT(temp_files(dir), ::testing::IsEmpty());
  EXPECT_EQ(load_checkpoint(path).step, 10);
}

TEST(CheckpointSave, RenameOntoDirectoryThrowsAndRemovesTemp) {
  ScratchDir dir;
  const std::string path = dir / "occupied";
  std::filesystem::create_directories(path);
  write_bytes(path + "/keep.txt", "still here");
  const std::string message = save_error([&] { save_checkpoint(path, make_sample()); });
  EXPECT_THAT(message, HasSubstr(path));
  EXPECT_THAT(message, HasSubstr("renaming"));
  EXPECT_THAT(temp_files(dir), ::testing::IsEmpty());
  EXPECT_EQ(read_bytes(path + "/keep.txt"), "still here");
}

TEST(CheckpointSave, MissingDirectoryThrowsNamingPath) {
  ScratchDir dir;
  const std::string path = dir / "no/such/dir/ckpt.dtck";
  const std::string message = save_error([&] { save_checkpoint(path, make_sample()); });
  EXPECT_THAT(message, HasSubstr(path));
  EXPECT_THAT(message, HasSubstr("No such file or directory"));
}

/// The temp file a failed save named in its message ("renaming <temp> over it").
std::string temp_named_in(const std::string& message) {
  const size_t at = message.find("renaming ");
  const size_t end = message.find(" over it");
  if (at == std::string::npos || end == std::string::npos || end < at) return "";
  return std::filesystem::path(message.substr(at + 9, end - at - 9)).filename().string();
}

TEST(CheckpointSave, TempFileNamesAreFreshAndUnpredictable) {
  ScratchDir dir;
  const std::string path = dir / "occupied";  // a directory: each save fails at its rename
  std::filesystem::create_directories(path);
  const std::string first =
      temp_named_in(save_error([&] { save_checkpoint(path, make_sample()); }));
  const std::string second =
      temp_named_in(save_error([&] { save_checkpoint(path, make_sample()); }));
  const std::regex pattern("occupied\\.tmp\\." + std::to_string(::getpid()) + "\\.[0-9a-f]{16}");
  EXPECT_TRUE(std::regex_match(first, pattern)) << first;
  EXPECT_TRUE(std::regex_match(second, pattern)) << second;
  EXPECT_NE(first, second);
}

TEST(CheckpointSave, ALinkPlantedAtTheOldTempNameIsNotFollowed) {
  ScratchDir dir;
  const std::string path = checkpoint_path(dir.path().string(), 7);
  const std::string victim = dir / "victim.txt";
  write_bytes(victim, "someone else's file");
  std::filesystem::create_symlink(victim, path + ".tmp." + std::to_string(::getpid()));
  CheckpointData state = make_sample();
  state.step = 7;
  save_checkpoint(path, state);
  EXPECT_EQ(read_bytes(victim), "someone else's file");
  EXPECT_FALSE(std::filesystem::is_symlink(path));
  EXPECT_EQ(load_checkpoint(path).step, 7);
}

// ---- listing, pruning, recovery -----------------------------------------------------------------

CheckpointData at_step(int64_t step) {
  CheckpointData data;
  data.step = step;
  data.model.emplace_back("w", full({3}, static_cast<double>(step)));
  return data;
}

TEST(CheckpointFiles, PathIsZeroPadded) {
  EXPECT_EQ(checkpoint_path("/runs/a", 42), "/runs/a/ckpt-0000000042.dtck");
  EXPECT_EQ(checkpoint_path("/runs/a/", 0), "/runs/a/ckpt-0000000000.dtck");
  EXPECT_THROW(checkpoint_path("/runs/a", -1), ValueError);
}

TEST(CheckpointFiles, ListIsNewestFirstByStepAndIgnoresOtherNames) {
  ScratchDir dir;
  const std::string root = dir.path().string();
  for (const int64_t step : {5, 100, 20, 3})
    save_checkpoint(checkpoint_path(root, step), at_step(step));
  // Unpadded: "ckpt-9" sorts after "ckpt-0000000020" by name but before it by step.
  save_checkpoint(dir / "ckpt-9.dtck", at_step(9));
  write_bytes(dir / "ckpt-0000000200.dtck.tmp.1234", "partial");
  write_bytes(dir / "ckpt-abc.dtck", "x");
  write_bytes(dir / "ckpt-.dtck", "x");
  write_bytes(dir / "notes.txt", "x");
  std::filesystem::create_directories(dir / "ckpt-0000000999.dtck");

  EXPECT_EQ(list_checkpoints(root),
            (std::vector<std::string>{checkpoint_path(root, 100), checkpoint_path(root, 20),
                                      dir / "ckpt-9.dtck", checkpoint_path(root, 5),
                                      checkpoint_path(root, 3)}));
  EXPECT_TRUE(list_checkpoints(dir / "missing").empty());
}

TEST(CheckpointFiles, StaleTempFilesOfDeadWritersAreRemoved) {
  ScratchDir dir;
  // A writer that has exited: a child reaped before its temp file is looked at.
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ASSERT_GT(child, 0);
  ASSERT_EQ(::waitpid(child, nullptr, 0), child);
  const std::string dead = "ckpt-0000000004.dtck.tmp." + std::to_string(child);
  const std::string alive = "ckpt-0000000005.dtck.tmp." + std::to_string(::getpid());
  for (const std::string& name : {dead, alive, std::string("notes.tmp.x")}) {
    write_bytes(dir / name, "partial");
  }
  save_checkpoint(checkpoint_path(dir.path().string(), 3), at_step(3));

  const std::vector<std::string> removed = remove_stale_temp_files(dir.path().string());
  ASSERT_EQ(removed.size(), 1u);
  EXPECT_EQ(std::filesystem::path(removed[0]).filename(), dead);
  EXPECT_FALSE(std::filesystem::exists(dir / dead));
  EXPECT_TRUE(std::filesystem::exists(dir / alive));  // its writer still runs
  EXPECT_TRUE(std::filesystem::exists(dir / "notes.tmp.x"));
  EXPECT_EQ(list_checkpoints(dir.path().string()).size(), 1u);
}

TEST(CheckpointFiles, TheTempFileOfAWriterKilledMidWriteIsRemoved) {
  ScratchDir dir;
  const std::string path = checkpoint_path(dir.path().string(), 8);
  CheckpointData big = at_step(8);
  big.model.emplace_back("big", zeros({256, 1024}));  // 1 MiB
  // The child dies of SIGXFSZ part-way through its write, leaving its temp file as it named it.
  const pid_t child = ::fork();
  if (child == 0) {
    rlimit small{64 * 1024, 64 * 1024}, no_core{0, 0};
    ::setrlimit(RLIMIT_CORE, &no_core);
    ::setrlimit(RLIMIT_FSIZE, &small);
    std::signal(SIGXFSZ, SIG_DFL);
    save_checkpoint(path, big);
    ::_exit(0);
  }
  ASSERT_GT(child, 0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGXFSZ) << "status " << status;
  ASSERT_EQ(temp_files(dir).size(), 1u);
  EXPECT_THAT(temp_files(dir)[0], HasSubstr(".tmp." + std::to_string(child) + "."));
  // One of a writer that still runs (this process), in the same pattern, stays.
  const std::string alive =
      "ckpt-0000000009.dtck.tmp." + std::to_string(::getpid()) + ".0123456789abcdef";
  write_bytes(dir / alive, "partial");
  const std::string odd = "ckpt-0000000009.dtck.tmp." + std::to_string(child) + ".not-hex";
  write_bytes(dir / odd, "not ours");

  const std::vector<std::string> removed = remove_stale_temp_files(dir.path().string());
  ASSERT_EQ(removed.size(), 1u);
  EXPECT_THAT(removed[0], HasSubstr(".tmp." + std::to_string(child) + "."));
  std::vector<std::string> left = {alive, odd};
  std::sort(left.begin(), left.end());
  EXPECT_EQ(temp_files(dir), left);
}

TEST(CheckpointFiles, PruneKeepsNewestK) {
  ScratchDir dir;
  const std::string root = dir.path().string();
  for (const int64_t step : {1, 2, 30, 4, 5})
    save_checkpoint(checkpoint_path(root, step), at_step(step));
  write_bytes(dir / "notes.txt", "x");

  prune_checkpoints(root, 2);
  EXPECT_EQ(list_checkpoints(root),
            (std::vector<std::string>{checkpoint_path(root, 30), checkpoint_path(root, 5)}));
  EXPECT_TRUE(std::filesystem::exists(dir / "notes.txt"));

  prune_checkpoints(root, 5);  // fewer than keep: nothing removed
  EXPECT_EQ(list_checkpoints(root).size(), 2u);
  prune_checkpoints(root, 0);
  EXPECT_TRUE(list_checkpoints(root).empty());
  EXPECT_THROW(prune_checkpoints(root, -1), ValueError);
}

/// A file that does not load, named as a checkpoint of `step`: a bit-flipped copy of a valid one,
/// one cut short, or a foreign file (a zip, as a PyTorch checkpoint is).
enum class Bad { kBitFlipped, kTruncated, kForeign };
const char* bad_name(Bad bad) {
  return bad == Bad::kBitFlipped ? "bit-flipped" : bad == Bad::kTruncated ? "truncated" : "foreign";
}
std::string write_unloadable(const std::string& root, int64_t step, Bad bad) {
  const std::string path = checkpoint_path(root, step);
  save_checkpoint(path, at_step(step));
  std::string bytes = read_bytes(path);
  if (bad == Bad::kBitFlipped) bytes[bytes.size() / 2] ^= 0x01;
  if (bad == Bad::kTruncated) bytes.resize(bytes.size() - 3);
  if (bad == Bad::kForeign) bytes = std::string("PK\x03\x04", 4) + std::string(200, 'z');
  write_bytes(path, bytes);
  EXPECT_THROW(load_checkpoint(path), Error) << bad_name(bad);
  return bytes;
}

TEST(CheckpointFiles, PruneNeverCountsNewerFilesThatDoNotLoad) {
  for (const Bad bad : {Bad::kBitFlipped, Bad::kTruncated, Bad::kForeign}) {
    SCOPED_TRACE(bad_name(bad));
    ScratchDir dir;
    const std::string root = dir.path().string();
    save_checkpoint(checkpoint_path(root, 8), at_step(8));
    const std::string bad_bytes = write_unloadable(root, 100, bad);
    // The checkpoint a run has just written, below the bad file's step.
    save_checkpoint(checkpoint_path(root, 20), at_step(20));

    prune_checkpoints(root, 2);
    EXPECT_EQ(list_checkpoints(root),
              (std::vector<std::string>{checkpoint_path(root, 100), checkpoint_path(root, 20),
                                        checkpoint_path(root, 8)}));

    prune_checkpoints(root, 1);
    EXPECT_EQ(list_checkpoints(root),
              (std::vector<std::string>{checkpoint_path(root, 100), checkpoint_path(root, 20)}));
    EXPECT_EQ(load_checkpoint(checkpoint_path(root, 20)).step, 20);
    // Left as it was: neither counted nor removed nor rewritten.
    EXPECT_EQ(read_bytes(checkpoint_path(root, 100)), bad_bytes);
    const auto latest = load_latest_valid(root);
    ASSERT_TRUE(latest.has_value());
    EXPECT_EQ(latest->data.step, 20);
  }
}

TEST(CheckpointFiles, PruneKeepsTheNewestValidOnesPastSeveralBadNewerFiles) {
  ScratchDir dir;
  const std::string root = dir.path().string();
  for (const int64_t step : {4, 8, 12}) save_checkpoint(checkpoint_path(root, step), at_step(step));
  write_unloadable(root, 100, Bad::kBitFlipped);
  write_unloadable(root, 90, Bad::kForeign);
  write_unloadable(root, 10, Bad::kTruncated);  // between valid ones

  prune_checkpoints(root, 2);
  // The two newest valid ones (12, 8) stay with the bad files above them; everything older
  // than the second of them goes, whether it loads or not.
  EXPECT_EQ(list_checkpoints(root),
            (std::vector<std::string>{checkpoint_path(root, 100), checkpoint_path(root, 90),
                                      checkpoint_path(root, 12), checkpoint_path(root, 10),
                                      checkpoint_path(root, 8)}));
  prune_checkpoints(root, 1);
  EXPECT_EQ(list_checkpoints(root),
            (std::vector<std::string>{checkpoint_path(root, 100), checkpoint_path(root, 90),
                                      checkpoint_path(root, 12)}));
}

std::vector<std::string>& warnings() {
  static std::vector<std::string> seen;
  return seen;
}
void record_warning(const std::string& message) { warnings().push_back(message); }

TEST(CheckpointFiles, LoadLatestValidSkipsCorruptNewest) {
  ScratchDir dir;
  const std::string root = dir.path().string();
  for (const int64_t step : {1, 2, 3}) save_checkpoint(checkpoint_path(root, step), at_step(step));
  const std::string newest = checkpoint_path(root, 3);
  std::string bytes = read_bytes(newest);
  bytes[bytes.size() - 2] ^= 0x40;
  write_bytes(newest, bytes);

  warnings().clear();
  const auto loaded = load_latest_valid(root, &record_warning);
  ASSERT_TRUE(loaded.has_value());
  EXPECT_EQ(loaded->path, checkpoint_path(root, 2));
  EXPECT_EQ(loaded->data.step, 2);
  EXPECT_EQ(loaded->data.model.at(0).second.to_vector<float>(), (std::vector<float>{2, 2, 2}));
  ASSERT_EQ(warnings().size(), 1u);
  EXPECT_THAT(warnings()[0], HasSubstr(newest));
  EXPECT_THAT(warnings()[0], HasSubstr("checksum mismatch"));

  // Without a callback the corrupt file is skipped silently.
  EXPECT_EQ(load_latest_valid(root)->data.step, 2);
}

TEST(CheckpointFiles, LoadLatestValidReturnsNulloptWhenNoneIsValid) {
  ScratchDir dir;
  const std::string root = dir.path().string();
  warnings().clear();
  EXPECT_FALSE(load_latest_valid(root, &record_warning).has_value());
  EXPECT_FALSE(load_latest_valid(dir / "missing", &record_warning).has_value());
  EXPECT_TRUE(warnings().empty());

  write_bytes(checkpoint_path(root, 1), "DTCK");
  write_bytes(checkpoint_path(root, 2), "garbage that is longer than a header");
  EXPECT_FALSE(load_latest_valid(root, &record_warning).has_value());
  ASSERT_EQ(warnings().size(), 2u);
  EXPECT_THAT(warnings()[0], HasSubstr(checkpoint_path(root, 2)));
  EXPECT_THAT(warnings()[0], HasSubstr("bad magic"));
  EXPECT_THAT(warnings()[1], HasSubstr(checkpoint_path(root, 1)));
  EXPECT_THAT(warnings()[1], HasSubstr("truncated"));
}

}  // namespace
}  // namespace dtrain::train
