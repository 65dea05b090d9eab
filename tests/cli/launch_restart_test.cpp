// `dtrain launch` restarts counted and numbered: each attempt's workers see DTRAIN_RESTART_COUNT
// equal to the number of restarts before them (their store keys and resumption depend on it), and
// the launcher numbers each restart. The workers are shell one-liners that fail on purpose.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "cli/run_util.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testutil::CommandResult;

/// `dtrain launch` of two workers, at most two restarts, each running `script` under /bin/sh;
/// killed after 120 s so that a launcher that never ends fails the test instead of hanging it.
CommandResult launch_script(const std::string& script) {
  return testutil::run_dtrain_bounded(
      120, "launch --nproc-per-node 2 --max-restarts 2 -- /bin/sh -c '" + script + "'");
}

/// Each worker prints this line once it has passed its failure point.
const std::string kReport =
    "echo \"rank $DTRAIN_RANK saw DTRAIN_RESTART_COUNT=$DTRAIN_RESTART_COUNT\"";

std::string report(int rank, int count) {
  return "[rank " + std::to_string(rank) + "] rank " + std::to_string(rank) +
         " saw DTRAIN_RESTART_COUNT=" + std::to_string(count);
}

TEST(LaunchRestart, AWorkerRestartedOnceSeesRestartCountOne) {
  // Rank 1 fails in the first attempt only; the second attempt succeeds on both ranks.
  const CommandResult r = launch_script(
      "[ \"$DTRAIN_RESTART_COUNT\" = 0 ] && [ \"$DTRAIN_RANK\" = 1 ] && exit 3; " + kReport);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("exited with status 3"));
  EXPECT_THAT(r.output, HasSubstr("restarting every worker (restart 1 of 2)"));
  EXPECT_THAT(r.output, HasSubstr("attempt 1: started ranks 0-1 of 2"));
  EXPECT_THAT(r.output, HasSubstr(report(0, 1)));
  EXPECT_THAT(r.output, HasSubstr(report(1, 1)));
  EXPECT_THAT(r.output, HasSubstr("finished after 1 restart(s)"));
  EXPECT_THAT(r.output, Not(HasSubstr(report(1, 0))));
  EXPECT_THAT(r.output, Not(HasSubstr("restart 2 of 2")));
}

TEST(LaunchRestart, ASecondFailureIsReportedAsRestartTwo) {
  // Rank 1 fails in the first two attempts; the third succeeds on both ranks.
  const CommandResult r = launch_script(
      "[ \"$DTRAIN_RESTART_COUNT\" -lt 2 ] && [ \"$DTRAIN_RANK\" = 1 ] && exit 3; " + kReport);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("restarting every worker (restart 1 of 2)"));
  EXPECT_THAT(r.output, HasSubstr("restarting every worker (restart 2 of 2)"));
  EXPECT_THAT(r.output, HasSubstr("attempt 2: started ranks 0-1 of 2"));
  EXPECT_THAT(r.output, HasSubstr(report(0, 2)));
  EXPECT_THAT(r.output, HasSubstr(report(1, 2)));
  EXPECT_THAT(r.output, HasSubstr("finished after 2 restart(s)"));
  EXPECT_THAT(r.output, Not(HasSubstr(report(1, 0))));
  EXPECT_THAT(r.output, Not(HasSubstr(report(1, 1))));
}

}  // namespace
}  // namespace dtrain
