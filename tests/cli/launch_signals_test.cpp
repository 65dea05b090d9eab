// `dtrain launch` and the signals a closed terminal or ssh session brings: SIGHUP stops the job
// like SIGTERM (the workers are stopped, the launcher exits 129), and a closed stdout (SIGPIPE)
// does not end the job. Every run is bounded by `timeout`, and each test checks that no process
// of its job is left.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <thread>
#include <utility>
#include <vector>

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
using testutil::kLaunchConfig;
using testutil::launcher_pid;
using testutil::read_file;
using testutil::ScratchDir;
using testutil::unique_job;
using testutil::wait_for_file;
using Clock = std::chrono::steady_clock;

/// The pids of the job's workers (processes with DTRAIN_RANK set).
std::vector<pid_t> worker_pids(const std::string& job) {
  std::vector<pid_t> pids;
  for (const auto& [pid, env] : job_processes(job)) {
    if (env.find(std::string("\0DTRAIN_RANK=", 13)) != std::string::npos) pids.push_back(pid);
  }
  return pids;
}

class LaunchSignals : public ::testing::Test {
 protected:
  LaunchSignals() { testutil::write_bytes(root_ / "run.yaml", kLaunchConfig); }
  const std::filesystem::path& dir() const { return root_.path(); }
  ScratchDir root_;
};

TEST_F(LaunchSignals, SighupStopsEveryWorkerAndExitsWith129) {
  const std::string id = unique_job("sighup");
  JobReaper reaper{id};
  // exec'd by the shell under `timeout`, so the launcher is the process the test signals.
  const std::string line = "DTRAIN_TEST_JOB=" + id + " exec timeout -s KILL 300 '" +
                           DTRAIN_EXECUTABLE + "' launch --nproc-per-node 2 run.yaml";
  const std::string cwd = dir().string();
  auto run = std::async(std::launch::async, [line, cwd] { return testutil::run_shell(line, cwd); });

  // The first checkpoint: both workers are past rendezvous and training.
  const bool training =
      wait_for_file(dir() / train::checkpoint_path("checkpoints", 150), std::chrono::seconds(180));
  const pid_t launcher = launcher_pid(id);
  const std::vector<pid_t> workers = worker_pids(id);
  if (!training || launcher <= 0) {
    for (const auto& [pid, env] : job_processes(id)) ::kill(pid, SIGKILL);
    const CommandResult r = run.get();
    FAIL() << "no checkpoint at step 150 within 180 s (launcher pid " << launcher << ")\n"
           << r.output;
  }
  EXPECT_EQ(workers.size(), 2u);
  ASSERT_EQ(::kill(launcher, SIGHUP), 0);

  ASSERT_EQ(run.wait_for(std::chrono::seconds(120)), std::future_status::ready)
      << "the launcher did not end within 120 s of SIGHUP";
  const CommandResult r = run.get();
  EXPECT_EQ(r.exit_code, 129) << r.output;
  EXPECT_THAT(r.output, HasSubstr("received signal 1 (SIGHUP); stopping the workers")) << r.output;
  EXPECT_THAT(r.output, Not(HasSubstr("final:"))) << r.output;
  EXPECT_THAT(r.output, Not(HasSubstr("restarting every worker"))) << r.output;
  expect_no_process_left(id);
}

/// Waits (bounded) until the file at `path` contains `text`.
bool wait_for_text(const std::filesystem::path& path, const std::string& text,
                   std::chrono::seconds limit) {
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    if (read_file(path).find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

TEST_F(LaunchSignals, SigtermWhileWaitingForOtherNodesStopsAtOnce) {
  // Node 0 of two waits for node 1, which never comes, for up to 120 s (launcher.rdzv_timeout_s).
  const std::string id = unique_job("sigterm-rdzv");
  JobReaper reaper{id};
  const std::string line = "DTRAIN_TEST_JOB=" + id +
                           " DTRAIN_STORE_TOKEN=0123456789abcdef0123 exec timeout -s KILL 300 '" +
                           DTRAIN_EXECUTABLE +
                           "' launch --nnodes 2 --node-rank 0 --rdzv-endpoint 127.0.0.1:" +
                           std::to_string(testutil::free_port()) +
                           " run.yaml launcher.rdzv_timeout_s=120 > out.log 2>&1";
  const std::string cwd = dir().string();
  auto run = std::async(std::launch::async, [line, cwd] { return testutil::run_shell(line, cwd); });
  // The store is up, so the launcher's signal handling is in place and it now waits for node 1.
  const bool waiting =
      wait_for_text(dir() / "out.log", "hosts the store", std::chrono::seconds(60));
  const pid_t launcher = launcher_pid(id);
  if (!waiting || launcher <= 0) {
    for (const auto& [pid, env] : job_processes(id)) ::kill(pid, SIGKILL);
    run.get();
    FAIL() << "the launcher did not start its store:\n" << read_file(dir() / "out.log");
  }
  ASSERT_EQ(::kill(launcher, SIGTERM), 0);
  ASSERT_EQ(run.wait_for(std::chrono::seconds(30)), std::future_status::ready)
      << "the launcher kept waiting for node 1 after SIGTERM";
  const CommandResult r = run.get();
  const std::string out = read_file(dir() / "out.log");
  EXPECT_EQ(r.exit_code, 143) << out;
  EXPECT_THAT(out, HasSubstr("received signal 15 (SIGTERM) while waiting for the store or the "
                             "other nodes"));
  expect_no_process_left(id);
}

TEST_F(LaunchSignals, ClosedStdoutDoesNotEndTheJob) {
  const std::string id = unique_job("sigpipe");
  JobReaper reaper{id};
  // The reader of the launcher's output (`true`) is gone at once; the launcher's exit status is
  // written to rc.txt. A short run: 200 steps.
  const std::string line = "( DTRAIN_TEST_JOB=" + id + " timeout -s KILL 300 '" +
                           DTRAIN_EXECUTABLE +
                           "' launch --nproc-per-node 2 run.yaml train.max_steps=200; echo $? > "
                           "rc.txt ) 2>&1 | true";
  const std::string cwd = dir().string();
  auto run = std::async(std::launch::async, [line, cwd] { return testutil::run_shell(line, cwd); });
  ASSERT_EQ(run.wait_for(std::chrono::seconds(300)), std::future_status::ready)
      << "the launch did not end within 300 s";
  const CommandResult r = run.get();
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(read_file(dir() / "rc.txt"), "0\n");
  EXPECT_TRUE(std::filesystem::exists(dir() / train::checkpoint_path("checkpoints", 200)));
  expect_no_process_left(id);
}

}  // namespace
}  // namespace dtrain
