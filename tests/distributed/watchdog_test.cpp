// The watchdog: a collective that one rank never reaches is reported with that rank's number
// (from the progress every rank publishes to a real Store), a stall is warned about once, and by
// default the process stops with kWatchdogExitCode instead of hanging.
#include "dtrain/distributed/watchdog.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <thread>

#include "dtrain/distributed/backends/local/local_communicator.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

constexpr char kToken[] = "watchdog-test-token";

/// Reports delivered to a test's watchdog action, with a bounded wait for them.
struct Reports {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> items;
  void add(const std::string& r) {
    std::lock_guard lock(mu);
    items.push_back(r);
    cv.notify_all();
  }
  bool wait_for_count(size_t n, std::chrono::milliseconds limit) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, limit, [&] { return items.size() >= n; });
  }
};

std::shared_ptr<dist::StoreClient> client_of(const dist::StoreServer& server) {
  dist::StoreClientOptions o;
  o.port = server.port();
  o.token = kToken;
  return std::make_shared<dist::StoreClient>(o);
}

TEST(Watchdog, TimeoutNamesTheRankThatNeverArrived) {
  dist::StoreServerOptions so;
  so.token = kToken;
  dist::StoreServer server(so);
  auto comms = dist::make_local_group(3);
  Reports timeouts;
  std::vector<std::unique_ptr<dist::Watchdog>> dogs;
  for (int r = 0; r < 3; ++r) {
    dist::WatchdogOptions o;
    o.timeout = 300ms;
    o.stall_warning = 10s;
    o.poll = 20ms;
    dogs.push_back(std::make_unique<dist::Watchdog>(
        r, 3, o, client_of(server), [&](const std::string& rep) { timeouts.add(rep); }));
    comms[r]->add_observer(dogs.back().get());
  }
  // Ranks 0 and 2 enter collective #1; rank 1 never does.
  Tensor a = zeros({16}), c = zeros({16});
  dist::WorkPtr w0 = comms[0]->all_reduce(a, {dist::ReduceOp::kSum, 1000ms});
  dist::WorkPtr w2 = comms[2]->all_reduce(c, {dist::ReduceOp::kSum, 1000ms});
  ASSERT_TRUE(timeouts.wait_for_count(2, 10s)) << "the watchdogs did not fire";
  for (const std::string& rep : timeouts.items) {
    EXPECT_THAT(rep, HasSubstr("collective #1 all_reduce(sum) float32 x 16"));
    EXPECT_THAT(rep, HasSubstr("ranks that have not reached it: 1"));
    EXPECT_THAT(rep, HasSubstr("rank 1: last started #0"));
  }
  EXPECT_THROW(w0->wait(10s), Error);  // the collective's own timeout ends it
  EXPECT_THROW(w2->wait(10s), Error);
  for (size_t r = 0; r < comms.size(); ++r) comms[r]->remove_observer(dogs[r].get());
}

TEST(Watchdog, StallIsWarnedOnceAndTheCollectiveStillCompletes) {
  auto comms = dist::make_local_group(2);
  Reports stalls, timeouts;
  dist::WatchdogOptions o;
  o.timeout = 60s;
  o.stall_warning = 100ms;
  o.poll = 10ms;
  dist::Watchdog dog(
      0, 2, o, nullptr, [&](const std::string& r) { timeouts.add(r); },
      [&](const std::string& r) { stalls.add(r); });
  comms[0]->add_observer(&dog);
  Tensor a = ones({4}), b = ones({4});
  dist::WorkPtr w0 = comms[0]->all_reduce(a);
  ASSERT_TRUE(stalls.wait_for_count(1, 10s)) << "no stall warning";
  dist::WorkPtr w1 = comms[1]->all_reduce(b);  // rank 1 arrives late, after the warning
  w0->wait(10s);
  w1->wait(10s);
  EXPECT_EQ(a.to_vector<float>()[0], 2.f);
  EXPECT_THAT(stalls.items[0], HasSubstr("collective stalled"));
  EXPECT_THAT(stalls.items[0], HasSubstr("collective #1"));
  EXPECT_EQ(stalls.items.size(), 1u);
  EXPECT_TRUE(timeouts.items.empty());
  comms[0]->remove_observer(&dog);
}

// Run as a child process by the test below: the default action must end the process.
TEST(WatchdogChild, HangsUntilTheWatchdogStopsTheProcess) {
  if (std::getenv("DTRAIN_WATCHDOG_CHILD") == nullptr) {
    GTEST_SKIP() << "runs only as the child process of Watchdog.DefaultActionExitsNonZero";
  }
  auto comms = dist::make_local_group(2);
  dist::WatchdogOptions o;
  o.timeout = 200ms;
  o.poll = 20ms;
  dist::Watchdog dog(0, 2, o, nullptr);
  comms[0]->add_observer(&dog);
  Tensor t = zeros({4});
  comms[0]->all_reduce(t, {dist::ReduceOp::kSum, 60s})->wait(60s);  // rank 1 never comes
  ADD_FAILURE() << "the watchdog did not stop the process";
}

TEST(Watchdog, DefaultActionExitsNonZeroInsteadOfHanging) {
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  const auto start = std::chrono::steady_clock::now();
  const std::string cmd = "DTRAIN_WATCHDOG_CHILD=1 timeout 30 '" + self +
                          "' --gtest_filter=WatchdogChild.* > /dev/null 2>&1";
  const int status = std::system(cmd.c_str());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), dist::kWatchdogExitCode) << "124 would mean it hung";
  EXPECT_LT(seconds, 20.0);
}

}  // namespace
}  // namespace dtrain
