// What the end-to-end tests of `dtrain launch` share: finding a job's processes by the
// DTRAIN_TEST_JOB marker in their environment, bounded waits for files, the check that a
// finished job left no process behind, and killing what a failed test left.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cli/run_util.h"

namespace dtrain::testutil {

using LaunchClock = std::chrono::steady_clock;

// A ddp job of 2 workers long enough to interrupt: ~2,800 steps, a checkpoint every 150 (the
// first shows the workers are training, long before the run would end), a few seconds in all.
inline constexpr char kLaunchConfig[] = R"(model: {type: mlp, hidden: [64]}
data:
  name: synthetic
  synthetic_train_size: 20000
  synthetic_test_size: 1000
  synthetic_shape: [1, 28, 28]
  synthetic_classes: 10
optimizer: {type: sgd, lr: 0.05, momentum: 0.9}
train: {epochs: 6, batch_size: 32, seed: 3, checkpoint_dir: checkpoints,
        checkpoint_every_steps: 150, keep_checkpoints: 2, resume: auto, threads: 1}
strategy: {type: ddp}
log: {progress: off, tensorboard: false, every_steps: 1000}
)";
inline constexpr int64_t kLaunchTotalSteps = 6 * (20000 / 64);

inline std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

/// Processes whose environment holds DTRAIN_TEST_JOB=<job> (the launcher, its workers and
/// anything they started), with their environment.
inline std::vector<std::pair<pid_t, std::string>> job_processes(const std::string& job) {
  std::vector<std::pair<pid_t, std::string>> found;
  const std::string marker = "DTRAIN_TEST_JOB=" + job;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string env = read_file(entry.path() / "environ");
    if (env.find(marker + '\0') == std::string::npos &&
        !(env.size() >= marker.size() &&
          env.compare(env.size() - marker.size(), marker.size(), marker) == 0)) {
      continue;
    }
    // A zombie keeps its entry until reaped; only live processes count.
    const std::string stat = read_file(entry.path() / "stat");
    const size_t paren = stat.rfind(')');
    if (paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z') continue;
    found.emplace_back(std::stoi(name), env);
  }
  return found;
}

/// Kills what is left of the job when it goes out of scope, so a failed test does not leave it
/// running; a process the test stopped (SIGSTOP) is continued first, so none stays stopped.
struct JobReaper {
  std::string job;
  ~JobReaper() {
    for (const auto& [pid, env] : job_processes(job)) {
      ::kill(pid, SIGCONT);
      ::kill(pid, SIGKILL);
    }
  }
};

/// The dtrain process running `launch` for the job (not `timeout`, whose arguments name it too).
inline pid_t launcher_pid(const std::string& job) {
  const std::string cmdline = std::string(DTRAIN_EXECUTABLE) + '\0' + "launch" + '\0';
  for (const auto& [pid, env] : job_processes(job)) {
    if (read_file("/proc/" + std::to_string(pid) + "/cmdline").rfind(cmdline, 0) == 0) return pid;
  }
  return -1;
}

/// Waits (bounded) until `path` exists.
inline bool wait_for_file(const std::filesystem::path& path, std::chrono::seconds limit) {
  const auto deadline = LaunchClock::now() + limit;
  while (LaunchClock::now() < deadline) {
    if (std::filesystem::exists(path)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

inline std::string unique_job(const char* what) {
  static int counter = 0;
  return std::string(what) + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
}

inline void expect_no_process_left(const std::string& job) {
  // The launcher has returned, so its workers must be gone already: no waiting here.
  const auto left = job_processes(job);
  std::string pids;
  for (const auto& p : left) {
    pids += ' ';
    pids += std::to_string(p.first);
  }
  EXPECT_TRUE(left.empty()) << "processes of the job still running:" << pids;
}

}  // namespace dtrain::testutil
