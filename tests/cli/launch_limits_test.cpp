// `dtrain launch` at the limits of what it inherits and what its workers send: output and
// heartbeat lines beyond 64 KiB are split instead of buffered whole, descriptors the launcher
// inherited do not reach the workers, and a signal descriptor it cannot create is an error that
// leaves the signal mask as it was. Workers are shell one-liners; every run is bounded.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "cli/run_util.h"
#include "dtrain/launcher/launch.h"
#include "train/scratch_dir.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;
using testutil::CommandResult;

constexpr size_t kMaxLine = 64 << 10;

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST(LaunchLimits, AnOutputLineLongerThan64KiBIsSplit) {
  // 300,000 bytes without a newline, as a binary dump to stdout would be.
  const CommandResult r = testutil::run_dtrain_bounded(
      120,
      "launch --nproc-per-node 1 -- /bin/sh -c 'head -c 300000 /dev/zero | tr \"\\000\" x; echo; "
      "echo done'");
  ASSERT_EQ(r.exit_code, 0) << r.output.substr(0, 2000);
  const std::string prefix = "[rank 0] ";
  size_t xs = 0, longest = 0;
  for (const std::string& line : lines_of(r.output)) {
    if (!line.starts_with(prefix + "x")) continue;
    longest = std::max(longest, line.size() - prefix.size());
    xs += static_cast<size_t>(std::count(line.begin(), line.end(), 'x'));
  }
  EXPECT_EQ(xs, 300000u) << "every byte is passed on";
  EXPECT_EQ(longest, kMaxLine);
  EXPECT_THAT(r.output, HasSubstr(prefix + "done"));
}

TEST(LaunchLimits, AHeartbeatLineLongerThan64KiBIsSplit) {
  // One 200,000-byte heartbeat, then silence until the heartbeat timeout names the worker.
  const CommandResult r = testutil::run_dtrain_bounded(
      120,
      "launch --nproc-per-node 1 --max-restarts 0 --heartbeat-timeout-s 1 -- /bin/sh -c "
      "'head -c 200000 /dev/zero | tr \"\\000\" x >&3; echo >&3; exec sleep 60'");
  // A missed heartbeat is a hang: the launcher ends with the watchdog's status, 3.
  EXPECT_EQ(r.exit_code, 3) << r.output.substr(0, 2000);
  EXPECT_THAT(r.output, HasSubstr("sent no heartbeat for"));
  const std::string label = "last collective: ";
  const size_t at = r.output.find(label);
  ASSERT_NE(at, std::string::npos) << r.output.substr(0, 2000);
  const size_t end = r.output.find(" (last heartbeat", at);
  ASSERT_NE(end, std::string::npos);
  // The newest line: the last 200,000 - 3 * 65,536 bytes.
  EXPECT_EQ(end - at - label.size(), 200000 - 3 * kMaxLine);
}

TEST(LaunchLimits, DescriptorsTheLauncherInheritedDoNotReachTheWorkers) {
  testutil::ScratchDir dir;
  // fd 7 without O_CLOEXEC, as a shell or batch system may leave one; the first ls shows that the
  // launcher gets it, the worker's ls that the worker does not.
  const CommandResult r = testutil::run_shell(
      "exec 7>leak-marker && ls -l /proc/self/fd && OMP_NUM_THREADS=1 timeout -k 10 120 '" +
          std::string(DTRAIN_EXECUTABLE) +
          "' launch --nproc-per-node 1 -- /bin/ls -l /proc/self/fd",
      dir.path().string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  bool launcher_has_it = false, worker_has_it = false, worker_has_heartbeat = false;
  for (const std::string& line : lines_of(r.output)) {
    const bool worker = line.starts_with("[rank 0]");
    if (line.find("leak-marker") != std::string::npos)
      (worker ? worker_has_it : launcher_has_it) = true;
    if (worker && line.find(" 3 -> socket:") != std::string::npos) worker_has_heartbeat = true;
  }
  EXPECT_TRUE(launcher_has_it) << r.output;
  EXPECT_FALSE(worker_has_it) << r.output;
  EXPECT_TRUE(worker_has_heartbeat) << r.output;
}

// Run as a child process by the test below, with the descriptor limit at the first free one.
TEST(LaunchLimitsChild, NoDescriptorForSignals) {
  if (std::getenv("DTRAIN_LAUNCH_LIMITS_CHILD") == nullptr) {
    GTEST_SKIP()
        << "runs only as the child of LaunchLimits.AFailedSignalfdIsAnErrorAndRestoresTheMask";
  }
  const int first_free = ::dup(0);
  ASSERT_GE(first_free, 0);
  ::close(first_free);
  const rlimit none_left{rlim_t(first_free), rlim_t(first_free)};
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &none_left), 0);
  launch::LaunchOptions o;
  o.nnodes = 2;  // takes the token from DTRAIN_STORE_TOKEN: nothing opened before signalfd
  o.nproc_per_node = 1;
  o.command = {"/bin/true"};
  EXPECT_EQ(launch::run_launch(o), 1);
  sigset_t now;
  ASSERT_EQ(::pthread_sigmask(SIG_SETMASK, nullptr, &now), 0);
  EXPECT_FALSE(sigismember(&now, SIGTERM)) << "SIGTERM left blocked";
  EXPECT_FALSE(sigismember(&now, SIGINT)) << "SIGINT left blocked";
}

TEST(LaunchLimits, AFailedSignalfdIsAnErrorAndRestoresTheMask) {
  const CommandResult r = testutil::run_shell(
      "DTRAIN_LAUNCH_LIMITS_CHILD=1 DTRAIN_STORE_TOKEN=0123456789abcdef0123 timeout -k 10 60 "
      "/proc/" +
      std::to_string(::getpid()) + "/exe --gtest_filter=LaunchLimitsChild.*");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("[  PASSED  ] 1 test"));
  EXPECT_THAT(r.output, HasSubstr("dtrain launch: error: cannot watch for signals: signalfd: "));
  EXPECT_THAT(r.output, HasSubstr("raise the limit (ulimit -n)"));
}

}  // namespace
}  // namespace dtrain
