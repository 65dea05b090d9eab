// Real faults against the real executable, no mocks: a disk that fills during checkpoints (a small
// tmpfs), directories that cannot be written, a Store nobody answers, a worker stopped for less
// than the timeout, and a Store that stops answering while the workers train. Every run is bounded
// by `timeout`; the jobs' processes are found by a marker in their environment and must all be
// gone at the end. The network partition between two hosts is tests/launcher/netns_partition.sh.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <future>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "cli/checkpoint_compare.h"
#include "cli/launch_util.h"
#include "cli/run_util.h"
#include "dtrain/train/checkpoint.h"
#include "train/scratch_dir.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testutil::CommandResult;
using testutil::expect_no_process_left;
using testutil::job_processes;
using testutil::JobReaper;
using testutil::read_file;
using testutil::ScratchDir;
using testutil::unique_job;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

constexpr int64_t kPage = 4096;

// 2048 / 32 = 64 steps per epoch, 128 in all; adam, so a checkpoint holds optimizer buffers too
// (~19 KB, 5 pages of tmpfs).
constexpr char kConfig[] =
    "model: {type: mlp, hidden: [32]}\n"
    "data: {name: synthetic, synthetic_train_size: 2048, synthetic_test_size: 512,\n"
    "       synthetic_shape: [32]}\n"
    "optimizer: {type: adam, lr: 0.001}\n"
    "train: {epochs: 2, batch_size: 32, seed: 7, resume: auto, checkpoint_dir: ckpt,\n"
    "        checkpoint_every_steps: 4, keep_checkpoints: 2, threads: 1}\n"
    "log: {dir: runs, progress: off, every_steps: 4}\n";
constexpr int64_t kSteps = 128;

// ---- helpers ------------------------------------------------------------------------------------

/// A tmpfs mounted on `dir` for the life of the object (the directory is created). Needs root or
/// CAP_SYS_ADMIN; ok() is false otherwise and why_not() says why.
class Tmpfs {
 public:
  Tmpfs(const fs::path& dir, int64_t bytes, bool read_only = false) : dir_(dir) {
    fs::create_directories(dir_);
    const std::string options = "size=" + std::to_string(bytes) + ",mode=0755";
    const unsigned long flags = MS_NOSUID | MS_NODEV | (read_only ? MS_RDONLY : 0);
    if (::mount("dtrain-test", dir_.c_str(), "tmpfs", flags, options.c_str()) == 0) {
      mounted_ = true;
    } else {
      why_not_ = "cannot mount a tmpfs on " + dir_.string() + ": " + std::strerror(errno) +
                 " (needs root or CAP_SYS_ADMIN)";
    }
  }
  ~Tmpfs() {
    // MNT_DETACH: a process of a failed test may still hold a file open there.
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  Tmpfs(const Tmpfs&) = delete;
  Tmpfs& operator=(const Tmpfs&) = delete;
  bool ok() const { return mounted_; }
  const std::string& why_not() const { return why_not_; }
  int64_t free_bytes() const {
    struct statvfs s {};
    if (::statvfs(dir_.c_str(), &s) != 0) return -1;
    return static_cast<int64_t>(s.f_bavail) * static_cast<int64_t>(s.f_frsize);
  }

 private:
  fs::path dir_;
  bool mounted_ = false;
  std::string why_not_;
};

/// Takes `bytes` of `path`'s filesystem with a file of that size (tmpfs allocates on fallocate).
bool fill(const fs::path& path, int64_t bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  const int rc = bytes > 0 ? ::posix_fallocate(fd, 0, bytes) : 0;
  ::close(fd);
  return rc == 0;
}

int64_t pages(int64_t bytes) { return (bytes + kPage - 1) / kPage; }

/// Names in `dir`, sorted.
std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

std::string ckpt_name(int64_t step) {
  return fs::path(train::checkpoint_path("ckpt", step)).filename().string();
}

/// The lines of `text` that contain every one of `parts`.
std::vector<std::string> lines_with(const std::string& text,
                                    const std::vector<std::string>& parts) {
  std::vector<std::string> out;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    bool all = true;
    for (const std::string& p : parts) all = all && line.find(p) != std::string::npos;
    if (all) out.push_back(line);
  }
  return out;
}

/// "final: test_accuracy=... test_loss=... steps=N": what two runs that trained alike share (the
/// throughput and wall time that follow differ).
std::string final_result(const std::string& output) {
  const size_t at = output.find("final: ");
  if (at == std::string::npos) return "(no final line)";
  const size_t steps = output.find("steps=", at);
  const size_t end = output.find(' ', steps);
  return output.substr(at, end == std::string::npos ? std::string::npos : end - at);
}

/// Waits (bounded) until the file at `path` contains `text`.
bool wait_for_text(const fs::path& path, const std::string& text, std::chrono::seconds limit) {
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    if (read_file(path).find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

/// The dtrain process of the job running `command` (train, launch), or -1.
pid_t dtrain_pid(const std::string& job, const std::string& command) {
  const std::string prefix = std::string(DTRAIN_EXECUTABLE) + '\0' + command + '\0';
  for (const auto& [pid, env] : job_processes(job)) {
    if (read_file("/proc/" + std::to_string(pid) + "/cmdline").rfind(prefix, 0) == 0) return pid;
  }
  return -1;
}

/// The pid of worker `rank` of a launched job, or -1.
pid_t worker_pid(const std::string& job, int rank) {
  const std::string nul(1, '\0');
  const std::string want = nul + "DTRAIN_RANK=" + std::to_string(rank) + nul;
  for (const auto& [pid, env] : job_processes(job)) {
    if ((nul + env + nul).find(want) != std::string::npos) return pid;
  }
  return -1;
}

/// The state letter of /proc/PID/stat (R, S, T, ...), or '?' when the process is gone.
char process_state(pid_t pid) {
  const std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
  const size_t paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() ? stat[paren + 2] : '?';
}

/// `dtrain ARGS` in `dir` in the background, output to `dir`/out.log, tagged with the job marker
/// and exec'd by the shell under `timeout`.
std::future<CommandResult> start_async(const fs::path& dir, const std::string& job,
                                       const std::string& args, const std::string& env = "") {
  const std::string line = "DTRAIN_TEST_JOB=" + job + " OMP_NUM_THREADS=1 " + env +
                           " exec timeout -s KILL 300 '" + DTRAIN_EXECUTABLE + "' " + args +
                           " > out.log 2>&1";
  const std::string cwd = dir.string();
  return std::async(std::launch::async, [line, cwd] { return testutil::run_shell(line, cwd); });
}

/// A shell command line run in `cwd` with stdout and stderr into a one-page pipe that the test
/// reads line by line. The command cannot get more than a few KB of output (some dozens of
/// progress lines) ahead of the reader, so a test that stops reading holds it back there:
/// synchronisation by back-pressure, not by timing. The line bounds itself with `timeout`.
class ThrottledRun {
 public:
  ThrottledRun(const std::string& line, const fs::path& cwd) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return;
    ::fcntl(fds[0], F_SETPIPE_SZ, 4096);  // set before the child can write anything
    posix_spawn_file_actions_t actions;
    ::posix_spawn_file_actions_init(&actions);
    ::posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
    ::posix_spawn_file_actions_adddup2(&actions, fds[1], 2);
    const std::string command = "cd '" + cwd.string() + "' && " + line;
    const char* argv[] = {"/bin/sh", "-c", command.c_str(), nullptr};
    if (::posix_spawn(&pid_, "/bin/sh", &actions, nullptr, const_cast<char**>(argv), environ) !=
        0) {
      pid_ = -1;
    }
    ::posix_spawn_file_actions_destroy(&actions);
    ::close(fds[1]);
    in_ = ::fdopen(fds[0], "r");
  }
  ~ThrottledRun() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (in_ != nullptr) std::fclose(in_);
  }
  ThrottledRun(const ThrottledRun&) = delete;
  ThrottledRun& operator=(const ThrottledRun&) = delete;

  /// Reads lines until one contains `text` (true) or the output ends (false).
  bool read_until(const std::string& text) { return read_until_any({text}) == 0; }
  /// Reads lines until one contains one of `texts`: its index, or -1 when the output ends.
  int read_until_any(const std::vector<std::string>& texts) {
    char buf[4096];
    while (in_ != nullptr && std::fgets(buf, sizeof buf, in_) != nullptr) {
      output_ += buf;
      for (size_t i = 0; i < texts.size(); ++i) {
        if (std::string_view(buf).find(texts[i]) != std::string_view::npos) {
          return static_cast<int>(i);
        }
      }
    }
    return -1;
  }
  /// Reads the rest of the output; the exit status (128 + N for a signal).
  int finish() {
    while (read_until("\n")) {
    }
    int status = 0;
    if (pid_ <= 0 || ::waitpid(pid_, &status, 0) != pid_) return -1;
    reaped_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  const std::string& output() const { return output_; }

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  FILE* in_ = nullptr;
  std::string output_;
};

/// A network namespace in which 10.78.0.2 routes to a link whose far end is down: a connection
/// there is neither accepted nor refused, as with a host behind a dead or filtering network.
class BlackHoleNamespace {
 public:
  BlackHoleNamespace() {
    static int counter = 0;
    name_ = "dtrain-bh-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
    if (testutil::run_shell("ip netns add " + name_).exit_code != 0) {
      why_not_ = "cannot create a network namespace (needs root and iproute2)";
      return;
    }
    created_ = true;
    const CommandResult r =
        testutil::run_shell("ip -n " + name_ + " link add bh0 type veth peer name bh1 && ip -n " +
                            name_ + " addr add 10.78.0.1/24 dev bh0 && ip -n " + name_ +
                            " link set bh0 up && ip -n " + name_ + " link set lo up");
    if (r.exit_code != 0) why_not_ = "cannot set up the namespace's link: " + r.output;
  }
  ~BlackHoleNamespace() {
    if (!created_) return;
    testutil::run_shell("ip netns pids " + name_ + " | xargs -r kill -KILL; ip netns del " + name_);
  }
  BlackHoleNamespace(const BlackHoleNamespace&) = delete;
  BlackHoleNamespace& operator=(const BlackHoleNamespace&) = delete;
  bool ok() const { return created_ && why_not_.empty(); }
  const std::string& why_not() const { return why_not_; }
  /// Prefix for a shell command line that runs it inside the namespace.
  std::string exec() const { return "ip netns exec " + name_ + " "; }

 private:
  std::string name_, why_not_;
  bool created_ = false;
};

class Faults : public ::testing::Test {
 protected:
  Faults() { testutil::write_bytes(root_ / "run.yaml", kConfig); }
  const fs::path& dir() const { return root_.path(); }
  CommandResult train(const std::string& overrides) const {
    return testutil::run_dtrain_bounded(120, "train run.yaml " + overrides, dir().string());
  }
  /// An undisturbed run with its checkpoints in ref/: its output, and the size of its largest
  /// checkpoint.
  std::pair<CommandResult, int64_t> reference(const std::string& overrides = "") const {
    const CommandResult r = train("train.checkpoint_dir=ref log.dir=ref-runs " + overrides);
    int64_t largest = 0;
    for (const std::string& p : train::list_checkpoints((dir() / "ref").string())) {
      largest = std::max<int64_t>(largest, static_cast<int64_t>(fs::file_size(p)));
    }
    return {r, largest};
  }
  ScratchDir root_;
};
// Runs of more than a few seconds: ctest labels suites named Slow* `slow`.
class SlowFaults : public Faults {};

// ---- 1. the disk fills during checkpoints -------------------------------------------------------

// Room for two checkpoints but not three, keep_checkpoints: 2. Pruning the oldest before writing
// the next keeps the run going; writing first and pruning after would need room for three.
TEST_F(Faults, NearlyFullDiskKeepsCheckpointingBecauseOldOnesArePrunedFirst) {
  const auto [ref, size] = reference();
  ASSERT_EQ(ref.exit_code, 0) << ref.output;
  ASSERT_GT(size, 0);
  const Tmpfs disk(dir() / "ckpt", (2 * pages(size) + pages(size) / 2) * kPage);
  if (!disk.ok()) GTEST_SKIP() << disk.why_not();

  const CommandResult r = train("train.keep_checkpoints=2");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, Not(HasSubstr("No space left on device"))) << r.output;
  EXPECT_EQ(final_result(r.output), final_result(ref.output)) << r.output;
  EXPECT_EQ(entries(dir() / "ckpt"), (std::vector<std::string>{ckpt_name(124), ckpt_name(128)}));
  EXPECT_EQ(train::load_checkpoint(train::checkpoint_path(dir() / "ckpt", kSteps)).step, kSteps);
}

// Room for one checkpoint and a half, keep_checkpoints: 1: the checkpoint of step 4 fits, every
// later one runs out of space part-way (the only valid checkpoint may not be pruned to make room).
// Periodic failures are warnings naming the file and the error, training goes on to the end, the
// final checkpoint's failure is an error (exit 1), and step 4's checkpoint is left, alone.
TEST_F(Faults, DiskFullAfterTheFirstCheckpointWarnsTrainsOnAndFailsOnlyTheFinalCheckpoint) {
  const auto [ref, size] = reference();
  ASSERT_EQ(ref.exit_code, 0) << ref.output;
  const Tmpfs disk(dir() / "ckpt", (pages(size) + pages(size) / 2) * kPage);
  if (!disk.ok()) GTEST_SKIP() << disk.why_not();

  const CommandResult r = train("train.keep_checkpoints=1");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  const std::string enospc = "No space left on device";
  // Periodic: a warning naming the file and the system's error, then training continues.
  EXPECT_EQ(lines_with(r.output, {"warning", "ckpt/" + ckpt_name(8), enospc}).size(), 1u)
      << r.output;
  EXPECT_EQ(lines_with(r.output, {"warning", "ckpt/" + ckpt_name(124), enospc}).size(), 1u)
      << r.output;
  EXPECT_THAT(read_file(dir() / "runs/metrics.jsonl"), HasSubstr("\"step\": 128,"))
      << "training did not go on to the end";
  // Final: an error naming the file.
  EXPECT_EQ(lines_with(r.output, {"error", "ckpt/" + ckpt_name(128), enospc}).size(), 1u)
      << r.output;
  // What is left: the last good checkpoint, no temp file, and it still evaluates.
  EXPECT_EQ(entries(dir() / "ckpt"), std::vector<std::string>{ckpt_name(4)});
  EXPECT_EQ(train::load_checkpoint(train::checkpoint_path(dir() / "ckpt", 4)).step, 4);
  const CommandResult eval = testutil::run_dtrain("eval ckpt/" + ckpt_name(4), dir().string());
  EXPECT_EQ(eval.exit_code, 0) << eval.output;
  EXPECT_THAT(eval.output, HasSubstr("eval: test_accuracy=")) << eval.output;
}

// The disk fills mid-run and is freed again: the checkpoints written meanwhile are lost, nothing
// else. The test holds the trainer back by not reading its progress lines: full from step 48 on
// for at least one periodic checkpoint, free again long before the final one.
TEST_F(Faults, DiskFullForAWhileLosesOnlyTheCheckpointsOfThatWhile) {
  // 60 epochs: 3,840 steps, a checkpoint every 16, a progress line every step.
  const std::string run =
      "train.epochs=60 train.checkpoint_every_steps=16 train.keep_checkpoints=1 "
      "log.progress=lines log.every_steps=1";
  const int64_t last = 60 * 64;
  const auto [ref, size] = reference(run);
  ASSERT_EQ(ref.exit_code, 0) << ref.output;
  const Tmpfs disk(dir() / "ckpt", 64 * kPage);
  if (!disk.ok()) GTEST_SKIP() << disk.why_not();

  const std::string id = unique_job("disk-full");
  JobReaper reaper{id};
  ThrottledRun job("DTRAIN_TEST_JOB=" + id + " OMP_NUM_THREADS=1 exec timeout -s KILL 300 '" +
                       DTRAIN_EXECUTABLE + "' train run.yaml " + run,
                   dir());
  // 1. Checkpoints up to step 32 or 48 are written: fill the disk but for half a checkpoint.
  //    The trainer runs up to a pipe's worth of lines ahead, so the free space may be measured
  //    while a newer checkpoint and the one it replaces are both on disk; then the space left is
  //    a checkpoint and a half, and none fails. Up to three tries, 64 steps apart.
  ASSERT_TRUE(job.read_until(" step 48/")) << job.output();
  const fs::path filler = dir() / "ckpt" / "filler";
  bool failed = false;
  for (int64_t tries = 0, next = 48 + 64; tries < 3 && !failed; ++tries, next += 64) {
    ASSERT_TRUE(fill(filler, disk.free_bytes() - pages(size) / 2 * kPage));
    // 2. A periodic checkpoint fails. While the trainer waits for the test to read on, the
    //    newest valid checkpoint must be there and evaluate; then the disk is freed.
    const int seen =
        job.read_until_any({"No space left on device", " step " + std::to_string(next) + "/"});
    failed = seen == 0;
    if (seen == 1) fs::remove(filler);  // no checkpoint failed in 64 steps: measure again
  }
  const std::vector<std::string> kept = train::list_checkpoints((dir() / "ckpt").string());
  if (!kept.empty()) {  // newest first
    const CommandResult eval = testutil::run_dtrain("eval " + kept.front(), dir().string());
    EXPECT_EQ(eval.exit_code, 0) << "the newest checkpoint does not evaluate:\n" << eval.output;
  }
  fs::remove(filler);
  const int exit_code = job.finish();
  const std::string& out = job.output();
  ASSERT_TRUE(failed) << "no checkpoint failed while the disk was full:\n" << out;
  EXPECT_EQ(kept.size(), 1u) << "no valid checkpoint while the disk was full:\n" << out;
  EXPECT_EQ(exit_code, 0) << out;
  EXPECT_FALSE(lines_with(out, {"warning", "ckpt/ckpt-", "No space left on device"}).empty())
      << out;
  // Training did not notice: the same result as the undisturbed run, final checkpoint included.
  EXPECT_EQ(final_result(out), final_result(ref.output)) << out;
  EXPECT_EQ(entries(dir() / "ckpt"), std::vector<std::string>{ckpt_name(last)}) << out;
  testutil::expect_same_model(train::checkpoint_path(dir() / "ckpt", last),
                              train::checkpoint_path(dir() / "ref", last), 0.0);
  expect_no_process_left(id);
}

// ---- 2. a directory that cannot be written ------------------------------------------------------

TEST_F(Faults, ReadOnlyCheckpointDirIsNamedAndNothingIsWrittenThere) {
  const Tmpfs ro(dir() / "ro-checkpoints", 64 * kPage, /*read_only=*/true);
  if (!ro.ok()) GTEST_SKIP() << ro.why_not();

  // The directory exists but refuses files.
  const CommandResult r = train("train.checkpoint_dir=ro-checkpoints");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_FALSE(lines_with(r.output, {"ro-checkpoints", "Read-only file system"}).empty())
      << r.output;
  EXPECT_TRUE(entries(dir() / "ro-checkpoints").empty());

  // It would have to be created below a read-only one: refused before training.
  const CommandResult sub = train("train.checkpoint_dir=ro-checkpoints/sub");
  EXPECT_EQ(sub.exit_code, 1) << sub.output;
  EXPECT_FALSE(
      lines_with(sub.output, {"error", "ro-checkpoints/sub", "Read-only file system"}).empty())
      << sub.output;
  EXPECT_THAT(sub.output, Not(HasSubstr("final:"))) << sub.output;
  EXPECT_TRUE(entries(dir() / "ro-checkpoints").empty());
}

TEST_F(Faults, ReadOnlyLogDirIsNamedBeforeAnyCheckpointIsWritten) {
  const Tmpfs ro(dir() / "ro-logs", 64 * kPage, /*read_only=*/true);
  if (!ro.ok()) GTEST_SKIP() << ro.why_not();

  for (const std::string logs : {"ro-logs", "ro-logs/sub"}) {
    const CommandResult r = train("log.dir=" + logs);
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_FALSE(lines_with(r.output, {"error", logs, "Read-only file system"}).empty())
        << r.output;
    EXPECT_THAT(r.output, Not(HasSubstr("final:"))) << r.output;
    EXPECT_TRUE(train::list_checkpoints((dir() / "ckpt").string()).empty()) << logs;
  }
  EXPECT_TRUE(entries(dir() / "ro-logs").empty());
}

// Needs no mount: a path below a regular file cannot be a directory for anyone, root included.
TEST_F(Faults, DirectoriesBelowARegularFileAreNamed) {
  const CommandResult ckpt = train("train.checkpoint_dir=run.yaml/checkpoints");
  EXPECT_EQ(ckpt.exit_code, 1) << ckpt.output;
  EXPECT_FALSE(
      lines_with(ckpt.output, {"error", "run.yaml/checkpoints", "Not a directory"}).empty())
      << ckpt.output;

  const CommandResult logs = train("log.dir=run.yaml/logs");
  EXPECT_EQ(logs.exit_code, 1) << logs.output;
  EXPECT_FALSE(lines_with(logs.output, {"error", "run.yaml/logs", "Not a directory"}).empty())
      << logs.output;
  EXPECT_TRUE(train::list_checkpoints((dir() / "ckpt").string()).empty());
  EXPECT_EQ(read_file(dir() / "run.yaml"), kConfig);
}

TEST_F(Faults, ReadOnlyLauncherLogDirIsNamedAndNoWorkerIsLeft) {
  const Tmpfs ro(dir() / "ro-logs", 64 * kPage, /*read_only=*/true);
  if (!ro.ok()) GTEST_SKIP() << ro.why_not();

  for (const std::string logs : {"ro-logs", "ro-logs/sub"}) {
    const std::string id = unique_job("ro-log-dir");
    JobReaper reaper{id};
    const CommandResult r = testutil::run_shell(
        "DTRAIN_TEST_JOB=" + id + " OMP_NUM_THREADS=1 timeout -s KILL 120 '" + DTRAIN_EXECUTABLE +
            "' launch --nproc-per-node 2 --log-dir " + logs + " run.yaml strategy.type=ddp",
        dir().string());
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_FALSE(lines_with(r.output, {"error", logs, "Read-only file system"}).empty())
        << r.output;
    EXPECT_TRUE(train::list_checkpoints((dir() / "ckpt").string()).empty()) << logs;
    expect_no_process_left(id);
  }
  EXPECT_TRUE(entries(dir() / "ro-logs").empty());
}

// ---- 3. a Store nobody answers ------------------------------------------------------------------

constexpr char kToken[] = "DTRAIN_STORE_TOKEN=0123456789abcdef0123";

/// `dtrain launch` as node 1 of 2, pointed at `endpoint` with launcher.rdzv_timeout_s=3: it must
/// give up after those 3 s (and not much later), naming the address and what to check.
void expect_launcher_gives_up(const fs::path& dir, const std::string& endpoint,
                              const std::string& prefix) {
  const std::string id = unique_job("no-store");
  JobReaper reaper{id};
  const auto start = Clock::now();
  const CommandResult r = testutil::run_shell(
      std::string("DTRAIN_TEST_JOB=") + id + " " + kToken + " OMP_NUM_THREADS=1 " + prefix +
          "timeout -s KILL 120 '" + DTRAIN_EXECUTABLE +
          "' launch --nnodes 2 --node-rank 1 --rdzv-endpoint " + endpoint +
          " run.yaml strategy.type=ddp launcher.rdzv_timeout_s=3",
      dir.string());
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("%s: exit %d after %.1f s\n", endpoint.c_str(), r.exit_code, seconds);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_GE(seconds, 2.5) << r.output;
  EXPECT_LE(seconds, 13.0) << r.output;
  const auto errors = lines_with(r.output, {"error", "store " + endpoint, "within 3 s"});
  ASSERT_EQ(errors.size(), 1u) << r.output;
  EXPECT_THAT(errors[0], HasSubstr("launcher.rdzv_timeout_s"));
  EXPECT_THAT(errors[0], HasSubstr("is node 0's launcher running there"));
  expect_no_process_left(id);
}

TEST_F(Faults, LauncherGivesUpOnALoopbackStoreNobodyListensOn) {
  expect_launcher_gives_up(dir(), "127.0.0.1:" + std::to_string(testutil::free_port()), "");
}

TEST_F(Faults, LauncherGivesUpOnAStoreAddressThatNeverAnswers) {
  const BlackHoleNamespace ns;
  if (!ns.ok()) GTEST_SKIP() << ns.why_not();
  expect_launcher_gives_up(dir(), "10.78.0.2:29400", ns.exec());
}

// A worker of a `cluster:` job waits for rank 0's Store for 60 s (distributed/job.cpp), whether
// the address refuses connections or swallows them; both cases run side by side.
TEST_F(SlowFaults, WorkerGivesUpOnAnUnreachableStoreWithinItsConnectTimeout) {
  const BlackHoleNamespace ns;
  struct Case {
    std::string address, prefix, id;
    std::future<std::pair<CommandResult, double>> run;
  };
  std::vector<Case> cases;
  cases.push_back({"127.0.0.1:" + std::to_string(testutil::free_port()), "", "", {}});
  if (ns.ok()) {
    cases.push_back({"10.78.0.2:29400", ns.exec(), "", {}});
  } else {
    std::printf("not tried with an address that never answers: %s\n", ns.why_not().c_str());
  }
  std::vector<std::unique_ptr<JobReaper>> reapers;
  for (Case& c : cases) {
    c.id = unique_job("worker-no-store");
    reapers.push_back(std::make_unique<JobReaper>(JobReaper{c.id}));
    const std::string line = "DTRAIN_TEST_JOB=" + c.id + " " + kToken + " OMP_NUM_THREADS=1 " +
                             c.prefix + "timeout -s KILL 150 '" + DTRAIN_EXECUTABLE +
                             "' train run.yaml strategy.type=ddp cluster.world_size=2 "
                             "cluster.rank=1 cluster.store=" +
                             c.address;
    const std::string cwd = dir().string();
    c.run = std::async(std::launch::async, [line, cwd] {
      const auto start = Clock::now();
      CommandResult r = testutil::run_shell(line, cwd);
      return std::make_pair(r, std::chrono::duration<double>(Clock::now() - start).count());
    });
  }
  for (Case& c : cases) {
    const auto [r, seconds] = c.run.get();
    std::printf("%s: exit %d after %.1f s\n", c.address.c_str(), r.exit_code, seconds);
    EXPECT_EQ(r.exit_code, 1) << c.address << "\n" << r.output;
    EXPECT_GE(seconds, 55.0) << c.address << "\n" << r.output;
    EXPECT_LE(seconds, 75.0) << c.address << "\n" << r.output;
    const auto errors = lines_with(r.output, {"error", "store " + c.address, "within 60000 ms"});
    ASSERT_EQ(errors.size(), 1u) << r.output;
    EXPECT_THAT(errors[0], HasSubstr("Is the store server running, and is this address reachable"));
    EXPECT_FALSE(fs::exists(dir() / "ckpt")) << c.address;
    expect_no_process_left(c.id);
  }
}

// ---- 5. a worker stopped for less than the timeout ----------------------------------------------

class SlowLaunchFaults : public ::testing::Test {
 protected:
  SlowLaunchFaults() { testutil::write_bytes(root_ / "run.yaml", testutil::kLaunchConfig); }
  const fs::path& dir() const { return root_.path(); }
  ScratchDir root_;
};

// Rank 1 is stopped for 3 s, well under strategy.timeout_s (30 s) and the heartbeat timeout (60 s):
// rank 0 waits for it (and warns after strategy.stall_warning_s), then the job goes on and ends
// exactly as an undisturbed one. Rank 0 prints a progress line per step; until the test reads
// them it cannot get far ahead, so the stop comes at step 300 and some hundreds, long before the
// end.
TEST_F(SlowLaunchFaults, WorkerStoppedForLessThanTheTimeoutFinishesLikeAnUndisturbedRun) {
  const std::string run =
      " run.yaml train.epochs=20 strategy.timeout_s=30 strategy.stall_warning_s=1 "
      "log.progress=lines log.every_steps=1";
  const int64_t last = 20 * (20000 / 64);
  fs::create_directories(dir() / "ref");
  testutil::write_bytes(dir() / "ref/run.yaml", testutil::kLaunchConfig);
  const CommandResult ref =
      testutil::run_shell("OMP_NUM_THREADS=1 timeout -s KILL 300 '" +
                              std::string(DTRAIN_EXECUTABLE) + "' launch --nproc-per-node 2" + run,
                          (dir() / "ref").string());
  ASSERT_EQ(ref.exit_code, 0) << ref.output;

  const std::string id = unique_job("sigstop");
  JobReaper reaper{id};
  ThrottledRun job("DTRAIN_TEST_JOB=" + id + " OMP_NUM_THREADS=1 exec timeout -s KILL 300 '" +
                       DTRAIN_EXECUTABLE + "' launch --nproc-per-node 2" + run,
                   dir());
  // Step 300 done: both workers are training.
  const bool training = job.read_until(" step 300/");
  const pid_t victim = worker_pid(id, 1);
  ASSERT_TRUE(training && victim > 0) << job.output();
  ASSERT_EQ(::kill(victim, SIGSTOP), 0);
  // The deliberate stop, shorter than every timeout.
  std::this_thread::sleep_for(3s);
  const char state = process_state(victim);
  ASSERT_EQ(::kill(victim, SIGCONT), 0);
  EXPECT_EQ(state, 'T') << "rank 1 was not stopped";

  const int exit_code = job.finish();
  const std::string& out = job.output();
  EXPECT_EQ(exit_code, 0) << out;
  EXPECT_THAT(out, HasSubstr("collective stalled")) << "rank 0 never waited for rank 1:\n" << out;
  EXPECT_THAT(out, Not(HasSubstr("worker failure"))) << out;
  EXPECT_EQ(final_result(out), final_result(ref.output)) << out;
  testutil::expect_same_model(dir() / train::checkpoint_path("checkpoints", last),
                              dir() / "ref" / train::checkpoint_path("checkpoints", last), 0.0);
  expect_no_process_left(id);
}

// ---- 6. the Store stops answering while the workers train (finding C4) --------------------------

// The launcher, which hosts the Store, is stopped for 8 s. The workers' watchdogs publish their
// progress there every 0.5 s; each such call now hangs until the watchdog's 5 s Store timeout.
// The collectives must not wait for it: training steps (rank 0's metrics lines, one per 50 steps)
// go on throughout, with no gap near the length of a Store timeout.
TEST_F(SlowLaunchFaults, TrainingStepsContinueWhileTheStoreIsStopped) {
  const std::string id = unique_job("store-stall");
  JobReaper reaper{id};
  auto job = start_async(dir(), id,
                         "launch --nproc-per-node 2 run.yaml train.epochs=1000 log.dir=runs "
                         "log.every_steps=50 strategy.timeout_s=60");
  const fs::path metrics = dir() / "runs/metrics.jsonl";
  const bool training = wait_for_text(metrics, "\"step\"", 120s);
  const pid_t launcher = dtrain_pid(id, "launch");
  ASSERT_TRUE(training && launcher > 0) << read_file(dir() / "out.log");

  ASSERT_EQ(::kill(launcher, SIGSTOP), 0);
  const auto stopped_at = Clock::now();
  auto last_growth = stopped_at;
  Clock::duration longest_gap{0};
  uintmax_t size = fs::file_size(metrics);
  const uintmax_t size_at_stop = size;
  // The deliberate stall of the Store: 8 s, longer than the watchdog's Store timeout.
  while (Clock::now() - stopped_at < 8s) {
    std::this_thread::sleep_for(20ms);
    const uintmax_t now_size = fs::file_size(metrics);
    const auto now = Clock::now();
    if (now_size != size) {
      longest_gap = std::max(longest_gap, now - last_growth);
      last_growth = now;
      size = now_size;
    }
  }
  longest_gap = std::max(longest_gap, Clock::now() - last_growth);
  std::printf("longest pause between metrics lines while the Store was stopped: %.2f s\n",
              std::chrono::duration<double>(longest_gap).count());
  const char launcher_state = process_state(launcher);
  ASSERT_EQ(::kill(launcher, SIGCONT), 0);

  EXPECT_EQ(launcher_state, 'T') << "the Store was not stopped";
  EXPECT_GT(size, size_at_stop) << "no training step while the Store was stopped";
  EXPECT_LT(std::chrono::duration<double>(longest_gap).count(), 2.5)
      << "training paused while the Store did not answer";
  // The watchdogs did meet the stalled Store (their Store calls timed out) and said so.
  EXPECT_TRUE(wait_for_text(dir() / "out.log", "cannot publish progress", 60s))
      << read_file(dir() / "out.log");
  // The job is still sound: it trains on, and stops on SIGTERM like any job.
  const uintmax_t size_after = fs::file_size(metrics);
  const auto until = Clock::now() + 60s;
  while (fs::file_size(metrics) == size_after && Clock::now() < until) {
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_GT(fs::file_size(metrics), size_after) << "no training step after the Store came back";
  ASSERT_EQ(::kill(launcher, SIGTERM), 0);
  ASSERT_EQ(job.wait_for(120s), std::future_status::ready) << "the launcher ignored SIGTERM";
  const CommandResult r = job.get();
  const std::string out = read_file(dir() / "out.log");
  EXPECT_EQ(r.exit_code, 143) << out;
  // Said once per rank, not at every later attempt (twice a second).
  EXPECT_LE(lines_with(out, {"cannot publish progress"}).size(), 2u) << out;
  expect_no_process_left(id);
}

}  // namespace
}  // namespace dtrain
