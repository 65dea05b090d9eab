// Stopping on a signal (train.checkpoint_on_signal): SIGTERM or SIGUSR1 ends a run after a
// checkpoint at a step every replica agrees on, the process exits 128 + the signal, and running
// the same command again continues as if nothing had happened. Real signals to real processes:
// one process, a `dtrain launch` job, and an mpirun job where only one rank gets the signal. A
// periodic checkpoint that cannot be written does not end the run; the last one does.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <future>
#include <limits>
#include <regex>
#include <string>
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
using testutil::job_processes;
using testutil::JobReaper;
using testutil::kLaunchConfig;
using testutil::kLaunchTotalSteps;
using testutil::ScratchDir;
using testutil::unique_job;
using testutil::wait_for_file;

constexpr int kRunLimitS = 300;
// One process with the global batch of kLaunchConfig's two workers takes the same steps.
constexpr char kSingle[] = " strategy.type=single train.batch_size=64";
constexpr int64_t kStepsPerEpoch = 20000 / 64;

/// The processes of `job` whose environment holds `marker` (e.g. "OMPI_COMM_WORLD_RANK=1").
std::vector<pid_t> processes_with(const std::string& job, const std::string& marker) {
  std::vector<pid_t> pids;
  for (const auto& [pid, env] : job_processes(job)) {
    if (env.find('\0' + marker + '\0') != std::string::npos) pids.push_back(pid);
  }
  return pids;
}

/// The step in "stopped by <signal> after step <k>", or -1.
int64_t stopped_after_step(const std::string& output, const std::string& signal) {
  std::smatch m;
  const std::regex line("stopped by " + signal + " after step ([0-9]+) of");
  return std::regex_search(output, m, line) ? std::stoll(m[1]) : -1;
}

/// Counts the lines of `output` that contain `text`.
int count_of(const std::string& output, const std::string& text) {
  int n = 0;
  for (size_t at = output.find(text); at != std::string::npos; at = output.find(text, at + 1)) ++n;
  return n;
}

class Preemption : public ::testing::Test {
 protected:
  Preemption() { testutil::write_bytes(root_ / "run.yaml", kLaunchConfig); }
  std::string dir() const { return root_.path().string(); }
  std::filesystem::path checkpoint(int64_t step) const {
    return root_ / train::checkpoint_path("checkpoints", step);
  }
  /// Starts `line` (under the test's job marker) in the run directory without waiting.
  std::future<CommandResult> start(const std::string& line) {
    const std::string cwd = dir();
    const std::string marked = "DTRAIN_TEST_JOB=" + job_ + " " + line;
    return std::async(std::launch::async,
                      [marked, cwd] { return testutil::run_shell(marked, cwd); });
  }
  /// Waits for the run's first checkpoint (the processes are past start-up and training), then
  /// sends `signo` to every process of the job that has `marker` in its environment.
  int signal_when_training(const std::string& marker, int signo) {
    if (!wait_for_file(checkpoint(150), std::chrono::seconds(180))) return 0;
    int sent = 0;
    for (pid_t pid : processes_with(job_, marker)) sent += ::kill(pid, signo) == 0;
    return sent;
  }
  std::string dtrain() const { return "'" + std::string(DTRAIN_EXECUTABLE) + "'"; }

  ScratchDir root_;
  std::string job_ = unique_job("preempt");
  JobReaper reaper_{job_};
};

TEST_F(Preemption, SigtermCheckpointsAndTheRunAgainEndsWhereAnUninterruptedRunEnds) {
  // Uninterrupted reference, in its own directory.
  ScratchDir whole;
  testutil::write_bytes(whole / "run.yaml", kLaunchConfig);
  const CommandResult ref = testutil::run_dtrain_bounded(
      kRunLimitS, std::string("train run.yaml") + kSingle, whole.path().string());
  ASSERT_EQ(ref.exit_code, 0) << ref.output;

  // DTRAIN_TEST_MARK tells the training process from `timeout` and the shell.
  auto run = start("DTRAIN_TEST_MARK=1 exec timeout -k 10 " + std::to_string(kRunLimitS) + " " +
                   dtrain() + " train run.yaml" + kSingle);
  const int sent = signal_when_training("DTRAIN_TEST_MARK=1", SIGTERM);
  const CommandResult stopped = run.get();
  ASSERT_GE(sent, 1) << "the run never wrote its first checkpoint:\n" << stopped.output;
  EXPECT_EQ(stopped.exit_code, 128 + SIGTERM) << stopped.output;
  const int64_t step = stopped_after_step(stopped.output, "SIGTERM");
  ASSERT_GT(step, 0) << stopped.output;
  ASSERT_LT(step, kLaunchTotalSteps) << "the signal came after the run's end:\n" << stopped.output;
  EXPECT_TRUE(std::filesystem::exists(checkpoint(step))) << stopped.output;
  EXPECT_THAT(stopped.output, Not(HasSubstr("final:")));

  const CommandResult resumed =
      testutil::run_dtrain_bounded(kRunLimitS, std::string("train run.yaml") + kSingle, dir());
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_THAT(resumed.output, HasSubstr("step " + std::to_string(step) + ","));
  // Exact resume: bit-identical to the run that was never stopped.
  testutil::expect_same_model(whole / train::checkpoint_path("checkpoints", kLaunchTotalSteps),
                              checkpoint(kLaunchTotalSteps).string(), 0.0);
}

TEST_F(Preemption, SigtermToTheLauncherCheckpointsEveryWorkerAtOneStepAndExits143) {
  auto run = start("exec timeout -s KILL " + std::to_string(kRunLimitS) + " " + dtrain() +
                   " launch --nproc-per-node 2 run.yaml");
  // The launcher is the process with `launch` and no DTRAIN_RANK; testutil finds it.
  if (!wait_for_file(checkpoint(150), std::chrono::seconds(180))) {
    FAIL() << "no first checkpoint:\n" << run.get().output;
  }
  const pid_t launcher = testutil::launcher_pid(job_);
  ASSERT_GT(launcher, 0);
  ASSERT_EQ(::kill(launcher, SIGTERM), 0);
  const CommandResult r = run.get();
  EXPECT_EQ(r.exit_code, 128 + SIGTERM) << r.output;
  const int64_t step = stopped_after_step(r.output, "SIGTERM");
  ASSERT_GT(step, 0) << r.output;
  EXPECT_EQ(count_of(r.output, "stopped by SIGTERM"), 1) << "rank 0 alone reports:\n" << r.output;
  const train::CheckpointData c = train::load_checkpoint(checkpoint(step).string());
  EXPECT_EQ(c.step, step);
  EXPECT_EQ(c.world_size, 2);
  testutil::expect_no_process_left(job_);

  const CommandResult resumed =
      testutil::run_dtrain_bounded(kRunLimitS, "launch --nproc-per-node 2 run.yaml", dir());
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_THAT(resumed.output,
              HasSubstr("resuming from checkpoints/" +
                        std::filesystem::path(checkpoint(step)).filename().string()))
      << resumed.output;
  EXPECT_TRUE(std::filesystem::exists(checkpoint(kLaunchTotalSteps))) << resumed.output;
}

// SIGTERM at any moment of a launched job, from the launcher's start-up through the workers'
// rendezvous and connections into training: every run ends with 143 (a checkpoint after the
// agreed step, or the signal itself before a worker could act on it), never with a crash. Start-up
// and collectives make calls that a handler interrupts (EINTR).
TEST_F(Preemption, SigtermAtAnyMomentOfALaunchedJobEndsItWith143AndNoCrash) {
  for (const int delay_ms : {0, 150, 400, 800, 1500}) {
    SCOPED_TRACE("SIGTERM " + std::to_string(delay_ms) + " ms after the start");
    // Enough epochs that training outlasts the latest signal (the config's six take under half a
    // second once running); the signal ends every run.
    const std::string dir_override =
        " train.checkpoint_dir=at_" + std::to_string(delay_ms) + " train.epochs=200";
    auto run = start("exec timeout -s KILL " + std::to_string(kRunLimitS) + " " + dtrain() +
                     " launch --nproc-per-node 2 run.yaml" + dir_override);
    const auto sent_after = std::chrono::steady_clock::now() + std::chrono::milliseconds(delay_ms);
    pid_t launcher = -1;
    for (int i = 0; i < 3000 && launcher <= 0; ++i) {  // the shell may not have exec'd it yet
      launcher = testutil::launcher_pid(job_);
      if (launcher <= 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ASSERT_GT(launcher, 0);
    std::this_thread::sleep_until(sent_after);
    ASSERT_EQ(::kill(launcher, SIGTERM), 0);
    const CommandResult r = run.get();
    EXPECT_EQ(r.exit_code, 128 + SIGTERM) << r.output;
    for (const char* crash : {"corrupted", "double free", "free(): ", "malloc", "Aborted",
                              "Segmentation", "SIGSEGV", "SIGABRT"}) {
      EXPECT_THAT(r.output, Not(HasSubstr(crash))) << r.output;
    }
    testutil::expect_no_process_left(job_);
  }
}

TEST_F(Preemption, SigusrToOneMpiRankStopsEveryRankAtTheSameStep) {
  if (!testutil::mpirun_available()) GTEST_SKIP() << "mpirun is not installed";
  auto run = start(testutil::mpirun_prefix(2) + dtrain() + " train run.yaml");
  // Rank 1 alone gets the signal: rank 0, which writes checkpoints, learns of it only from the
  // vote, and must stop at the same step.
  const int sent = signal_when_training("OMPI_COMM_WORLD_RANK=1", SIGUSR1);
  const CommandResult r = run.get();
  ASSERT_EQ(sent, 1) << r.output;
  EXPECT_EQ(r.exit_code, 128 + SIGUSR1) << r.output;
  const int64_t step = stopped_after_step(r.output, "SIGUSR1");
  ASSERT_GT(step, 0) << r.output;
  const train::CheckpointData c = train::load_checkpoint(checkpoint(step).string());
  EXPECT_EQ(c.step, step);
  EXPECT_EQ(c.world_size, 2);
  // No rank trained past the agreed step: no checkpoint beyond it, no final line.
  for (const std::string& path : train::list_checkpoints(root_ / "checkpoints")) {
    EXPECT_LE(train::load_checkpoint(path).step, step) << path;
  }
  EXPECT_THAT(r.output, Not(HasSubstr("final:")));
}

TEST_F(Preemption, WithCheckpointOnSignalOffSigtermEndsTheProcessAtOnce) {
  auto run = start("DTRAIN_TEST_MARK=1 exec timeout -k 10 " + std::to_string(kRunLimitS) + " " +
                   dtrain() + " train run.yaml train.checkpoint_on_signal=false" + kSingle);
  const int sent = signal_when_training("DTRAIN_TEST_MARK=1", SIGTERM);
  const CommandResult r = run.get();
  ASSERT_GE(sent, 1) << r.output;
  EXPECT_EQ(r.exit_code, 128 + SIGTERM) << r.output;  // killed by the signal itself
  EXPECT_THAT(r.output, Not(HasSubstr("stopped by")));
}

// A periodic checkpoint that cannot be written (a directory squats its file name, so the rename
// fails) is a warning; the run goes on and writes its later checkpoints.
TEST_F(Preemption, AFailedPeriodicCheckpointIsAWarningAndTheRunGoesOn) {
  std::filesystem::create_directories(checkpoint(300) / "squatter");
  const CommandResult r = testutil::run_dtrain_bounded(
      kRunLimitS, std::string("train run.yaml train.epochs=1") + kSingle, dir());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("step 300: checkpoint not written, training goes on"));
  EXPECT_THAT(r.output, HasSubstr(checkpoint(300).filename().string()));
  EXPECT_TRUE(std::filesystem::exists(checkpoint(kStepsPerEpoch))) << r.output;
  EXPECT_THAT(r.output, HasSubstr("final:"));
  for (const auto& entry : std::filesystem::directory_iterator(root_ / "checkpoints")) {
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos)
        << "left behind: " << entry.path();
  }
}

// The last checkpoint is the run's result: failing to write it is an error naming the file.
TEST_F(Preemption, AFailedFinalCheckpointEndsTheRunWithAnErrorNamingTheFile) {
  const int64_t last = kStepsPerEpoch;  // one epoch
  std::filesystem::create_directories(checkpoint(last) / "squatter");
  const CommandResult r = testutil::run_dtrain_bounded(
      kRunLimitS, std::string("train run.yaml train.epochs=1") + kSingle, dir());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr(checkpoint(last).filename().string()));
  // The checkpoint before it is still there to resume from.
  EXPECT_NO_THROW(train::load_checkpoint(checkpoint(300).string()));
}

// A checkpoint whose global batch is not a count (NaN here) is skipped by resume: auto for the
// older one, naming the metric, instead of casting it.
TEST_F(Preemption, ResumeAutoSkipsACheckpointWhoseGlobalBatchIsNotACount) {
  const CommandResult first = testutil::run_dtrain_bounded(
      kRunLimitS, std::string("train run.yaml train.stop_at_step=300") + kSingle, dir());
  ASSERT_EQ(first.exit_code, 0) << first.output;
  train::CheckpointData damaged = train::load_checkpoint(checkpoint(300).string());
  damaged.metrics["global_batch"] = std::numeric_limits<double>::quiet_NaN();
  train::save_checkpoint(checkpoint(300).string(), damaged);

  // Named on purpose, with another number of replicas (the only case that reads the value), it
  // is an error naming the file and the metric. (Before the run below writes step 300 again.)
  const CommandResult named = testutil::run_dtrain_bounded(
      kRunLimitS,
      "launch --nproc-per-node 2 run.yaml train.resume=" + checkpoint(300).string() +
          " train.checkpoint_dir=elsewhere",
      dir());
  EXPECT_NE(named.exit_code, 0) << named.output;
  EXPECT_THAT(named.output, HasSubstr("global_batch is nan"));
  EXPECT_THAT(named.output, HasSubstr(checkpoint(300).string()));

  const CommandResult again = testutil::run_dtrain_bounded(
      kRunLimitS, std::string("train run.yaml train.stop_at_step=450") + kSingle, dir());
  EXPECT_EQ(again.exit_code, 0) << again.output;
  EXPECT_THAT(again.output, HasSubstr("its metric global_batch is nan"));
  EXPECT_THAT(again.output,
              HasSubstr("resuming from checkpoints/" + checkpoint(150).filename().string()));
}

}  // namespace
}  // namespace dtrain
