// A rank stopped with SIGSTOP in the middle of training, under each launcher: `dtrain launch`
// without and with heartbeats, and `mpirun -n 2` (srun: tests/slurm/hang_check.sh). Each time the
// job must end within strategy.timeout_s + 10 s with exit status 3, a report that names the
// stopped rank (not the healthy one that reports it), and no process left. Every wait is bounded;
// the processes are found by a marker in their environment and continued before being killed.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <future>
#include <string>
#include <thread>

#include "cli/launch_util.h"
#include "cli/run_util.h"
#include "dtrain/train/checkpoint.h"
#include "train/scratch_dir.h"

namespace dtrain {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;
using testutil::CommandResult;
using testutil::job_processes;
using testutil::JobReaper;
using testutil::ScratchDir;
using testutil::unique_job;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

constexpr int kTimeoutS = 4;  // strategy.timeout_s: the report must come within it + 10 s
// Long enough never to end by itself; the first checkpoint (step 150) shows both ranks train.
const std::string kOverrides =
    " run.yaml train.epochs=1000 strategy.timeout_s=" + std::to_string(kTimeoutS) +
    " train.checkpoint_every_steps=150";

/// The pid of the process of `job` whose environment holds `variable`=`value`, waiting (bounded)
/// for it; -1 if none appears.
pid_t pid_with(const std::string& job, const std::string& variable, int value) {
  const std::string want = '\0' + variable + "=" + std::to_string(value) + '\0';
  const auto deadline = Clock::now() + 60s;
  while (Clock::now() < deadline) {
    for (const auto& [pid, env] : job_processes(job)) {
      if (('\0' + env + '\0').find(want) != std::string::npos) return pid;
    }
    std::this_thread::sleep_for(20ms);
  }
  return -1;
}

/// Polls (bounded) until no process of `job` is left; a launcher may return while the processes
/// it signalled are still exiting. The pids still there after `limit`.
std::string processes_left(const std::string& job, std::chrono::seconds limit) {
  const auto deadline = Clock::now() + limit;
  for (;;) {
    const auto left = job_processes(job);
    if (left.empty()) return "";
    if (Clock::now() >= deadline) {
      std::string pids;
      for (const auto& p : left) pids += " " + std::to_string(p.first);
      return pids;
    }
    std::this_thread::sleep_for(50ms);
  }
}

class HangReport : public ::testing::Test {
 protected:
  HangReport() { testutil::write_bytes(dir() / "run.yaml", testutil::kLaunchConfig); }
  const fs::path& dir() const { return root_.path(); }

  /// Starts `command` (a shell line, exec'd under `timeout`) tagged with the job marker, waits
  /// for the first checkpoint, stops the process whose environment has `rank_variable`=`victim`,
  /// and returns what the command printed, its exit status and how long after the stop it ended.
  struct Outcome {
    CommandResult result;
    double seconds_after_stop = -1;
    pid_t victim = -1;
  };
  Outcome stop_rank(const std::string& job, const std::string& command,
                    const std::string& rank_variable, int victim = 1) {
    const std::string line = "DTRAIN_TEST_JOB=" + job + " OMP_NUM_THREADS=1 " + command;
    const std::string cwd = dir().string();
    auto run =
        std::async(std::launch::async, [line, cwd] { return testutil::run_shell(line, cwd); });
    Outcome out;
    const bool training =
        testutil::wait_for_file(dir() / train::checkpoint_path("checkpoints", 150), 120s);
    out.victim = pid_with(job, rank_variable, victim);
    if (!training || out.victim < 0) {
      ADD_FAILURE() << "the job did not start training (checkpoint " << training << ", rank "
                    << victim << " pid " << out.victim << ")";
      JobReaper{job};
      out.result = run.get();
      return out;
    }
    EXPECT_EQ(::kill(out.victim, SIGSTOP), 0);
    const auto stopped_at = Clock::now();
    // Bounded: the job must end by itself well within this; the reaper ends it otherwise.
    if (run.wait_for(std::chrono::seconds(kTimeoutS + 40)) != std::future_status::ready) {
      ADD_FAILURE() << "the job did not end within " << kTimeoutS + 40 << " s of the stop";
      JobReaper{job};
    }
    out.result = run.get();
    out.seconds_after_stop = std::chrono::duration<double>(Clock::now() - stopped_at).count();
    std::printf("ended %.1f s after the stop, exit status %d\n", out.seconds_after_stop,
                out.result.exit_code);
    return out;
  }

  /// What every launcher must deliver.
  void expect_report_naming(const Outcome& o, const std::string& job, int victim = 1) {
    const std::string named = std::to_string(victim);
    const std::string& out = o.result.output;
    EXPECT_EQ(o.result.exit_code, 3) << out;
    EXPECT_LE(o.seconds_after_stop, kTimeoutS + 10.0) << out;
    // The healthy rank reports: the victim either had not reached the collective or stopped
    // inside it, depending on where SIGSTOP caught it.
    EXPECT_THAT(out, HasSubstr("watchdog timeout")) << out;
    EXPECT_THAT(out, AnyOf(HasSubstr("ranks that have not reached it: " + named + "\n"),
                           HasSubstr("stopped responding before finishing it (stopped, hung or cut "
                                     "off): " +
                                     named + "\n")))
        << out;
    // Not the collective's own anonymous timeout error.
    EXPECT_THAT(out, ::testing::Not(HasSubstr("did not complete within"))) << out;
    const std::string left = processes_left(job, 10s);
    EXPECT_TRUE(left.empty()) << "processes of the job still running:" << left;
  }

  ScratchDir root_;
};

void expect_launcher_blames_rank_1(const std::string& out, pid_t victim) {
  EXPECT_THAT(out, HasSubstr("root cause:\n  rank 1 on node 0")) << out;
  EXPECT_THAT(out, HasSubstr("pid " + std::to_string(victim) + ") ")) << out;
  EXPECT_THAT(out, AnyOf(HasSubstr(") has not reached collective #"),
                         HasSubstr(") stopped responding before finishing collective #")))
      << out;
  EXPECT_THAT(out, HasSubstr("its process is stopped (SIGSTOP, a debugger)")) << out;
  EXPECT_THAT(out, ::testing::Not(HasSubstr("root cause:\n  rank 0 "))) << out;
}

TEST_F(HangReport, LaunchWithoutHeartbeatsNamesTheStoppedRankAndExits3) {
  const std::string job = unique_job("hang-launch");
  JobReaper reaper{job};
  const Outcome o =
      stop_rank(job,
                "exec timeout -s KILL 300 '" + std::string(DTRAIN_EXECUTABLE) +
                    "' launch --nproc-per-node 2 --heartbeat-timeout-s 0" + kOverrides,
                "DTRAIN_RANK");
  expect_report_naming(o, job);
  expect_launcher_blames_rank_1(o.result.output, o.victim);
}

// Heartbeats on (60 s, the default): the watchdog still reports first, and the launcher blames the
// stopped rank, not the one whose watchdog stopped it.
TEST_F(HangReport, LaunchWithHeartbeatsNamesTheStoppedRankAndExits3) {
  const std::string job = unique_job("hang-launch-hb");
  JobReaper reaper{job};
  const Outcome o = stop_rank(job,
                              "exec timeout -s KILL 300 '" + std::string(DTRAIN_EXECUTABLE) +
                                  "' launch --nproc-per-node 2" + kOverrides,
                              "DTRAIN_RANK");
  expect_report_naming(o, job);
  expect_launcher_blames_rank_1(o.result.output, o.victim);
}

// mpirun: rank 0 hosts the watchdogs' Store (its address and token broadcast over MPI), so the
// report knows rank 1's progress, and that it stopped.
TEST_F(HangReport, MpirunNamesTheStoppedRankAndExits3) {
  if (!testutil::mpirun_available()) {
    GTEST_SKIP() << "mpirun is not installed (scripts/setup.sh installs openmpi-bin)";
  }
  const std::string job = unique_job("hang-mpirun");
  JobReaper reaper{job};
  const Outcome o = stop_rank(job,
                              "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
                              "exec timeout -s KILL 300 mpirun --oversubscribe -n 2 '" +
                                  std::string(DTRAIN_EXECUTABLE) + "' train" + kOverrides,
                              "OMPI_COMM_WORLD_RANK");
  expect_report_naming(o, job);
  EXPECT_THAT(o.result.output, ::testing::Not(HasSubstr("unknown (no store)")));
}

// mpirun with rank 0 stopped: the Store lives in rank 0's process, so rank 1's report cannot read
// it; it names rank 0 as the store's host that does not answer, still in time.
TEST_F(HangReport, MpirunNamesAStoppedRank0ThatHostsTheStore) {
  if (!testutil::mpirun_available()) {
    GTEST_SKIP() << "mpirun is not installed (scripts/setup.sh installs openmpi-bin)";
  }
  const std::string job = unique_job("hang-mpirun-0");
  JobReaper reaper{job};
  const Outcome o = stop_rank(job,
                              "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
                              "exec timeout -s KILL 300 mpirun --oversubscribe -n 2 '" +
                                  std::string(DTRAIN_EXECUTABLE) + "' train" + kOverrides,
                              "OMPI_COMM_WORLD_RANK", /*victim=*/0);
  expect_report_naming(o, job, 0);
  EXPECT_THAT(o.result.output, HasSubstr("rank 0: unknown (the store does not answer)  <- hosts "
                                         "the store and does not answer"));
}

}  // namespace
}  // namespace dtrain
