// The watchdog: a collective that one rank never reaches is reported with that rank's number
// (from the progress every rank publishes to a real Store), a stall is warned about once, and by
// default the process stops with kWatchdogExitCode instead of hanging.
#include "dtrain/distributed/watchdog.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
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

TEST(Watchdog, GivesUpBeforeTheCollectivesOwnTimeout) {
  // Its report must come before the collective's anonymous timeout error, with time to spare
  // for a poll and the Store reads: clamp(T / 10, 3 s, 30 s) earlier, never before T / 2.
  EXPECT_EQ(dist::watchdog_timeout(300s), 270s);
  EXPECT_EQ(dist::watchdog_timeout(60s), 54s);
  EXPECT_EQ(dist::watchdog_timeout(20s), 17s);
  EXPECT_EQ(dist::watchdog_timeout(4s), 2s);
  EXPECT_EQ(dist::watchdog_timeout(1000s), 970s);
}

// Rank 1 published progress and then went silent (its watchdog gone, as in a stopped process):
// rank 0's report names it as not responding, even though its last record does not show it
// behind, and the verdict for a launcher names it too.
TEST(Watchdog, RankWhoseRecordStopsChangingIsNamedAsNotResponding) {
  dist::StoreServerOptions so;
  so.token = kToken;
  dist::StoreServer server(so);
  auto comms = dist::make_local_group(2);
  dist::WatchdogOptions o;
  // The judgment needs a probe taken between the probe lead and the minimum probe age before
  // the timeout: a window of one poll, which a 100 ms poll keeps open on two loaded cores.
  o.timeout = 1200ms;
  o.stall_warning = 10s;
  o.poll = 100ms;
  auto reader = client_of(server);
  {
    dist::Watchdog silent(1, 2, o, client_of(server), [](const std::string&) {});
    // Bounded wait for its first records (poll 20 ms).
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (!reader->try_get(o.key_prefix + "1") && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(5ms);
    }
    ASSERT_TRUE(reader->try_get(o.key_prefix + "1")) << "rank 1 never published";
    // It claims to have started collective #1 already: only its silence gives it away.
    reader->set(o.key_prefix + "1", "1 0 7");
  }
  Reports timeouts;
  dist::Watchdog dog(0, 2, o, client_of(server), [&](const std::string& r) { timeouts.add(r); });
  comms[0]->add_observer(&dog);
  Tensor a = zeros({8});
  dist::WorkPtr w = comms[0]->all_reduce(a, {dist::ReduceOp::kSum, 3000ms});
  ASSERT_TRUE(timeouts.wait_for_count(1, 10s)) << "the watchdog did not fire";
  const std::string& rep = timeouts.items[0];
  EXPECT_THAT(rep, HasSubstr("collective #1 all_reduce(sum) float32 x 8"));
  EXPECT_THAT(rep, HasSubstr("ranks that stopped responding before finishing it (stopped, "
                             "hung or cut off): 1"));
  EXPECT_THAT(rep, HasSubstr("rank 1: no progress report for"));
  const auto verdict = reader->try_get(o.key_prefix + "hang");
  ASSERT_TRUE(verdict.has_value());
  EXPECT_THAT(*verdict,
              ::testing::StartsWith("behind=;silent=1;mismatch=;sequence=1;reporter=0\n"));
  EXPECT_THROW(w->wait(10s), Error);
  comms[0]->remove_observer(&dog);
}

// A rank that called another collective as the same sequence number (here another op and count)
// is named with both calls, whatever the backend: the watchdogs compare what each rank published
// it started. Rank 1's record is written by the test, as rank 1's watchdog would.
TEST(Watchdog, RanksThatCallDifferentCollectivesAreNamedWithTheirCalls) {
  dist::StoreServerOptions so;
  so.token = kToken;
  dist::StoreServer server(so);
  auto comms = dist::make_local_group(2);
  dist::WatchdogOptions o;
  o.timeout = 600ms;
  o.stall_warning = 10s;
  o.poll = 20ms;
  auto reader = client_of(server);
  reader->set(o.key_prefix + "1", "1 0 3 all_reduce(max) float32 x 16");
  Reports timeouts;
  dist::Watchdog dog(0, 2, o, client_of(server), [&](const std::string& r) { timeouts.add(r); });
  comms[0]->add_observer(&dog);
  Tensor a = zeros({8});
  dist::WorkPtr w = comms[0]->all_reduce(a, {dist::ReduceOp::kSum, 1500ms});
  ASSERT_TRUE(timeouts.wait_for_count(1, 10s)) << "the watchdog did not fire";
  EXPECT_THAT(timeouts.items[0],
              HasSubstr("ranks called different collectives as #1 (every rank must issue the same "
                        "collectives, in the same order): rank 0: all_reduce(sum) float32 x 8; "
                        "rank 1: all_reduce(max) float32 x 16"));
  EXPECT_THAT(timeouts.items[0], HasSubstr("called #1 as all_reduce(max) float32 x 16"));
  const auto verdict = reader->try_get(o.key_prefix + "hang");
  ASSERT_TRUE(verdict.has_value());
  EXPECT_THAT(*verdict, HasSubstr(";mismatch=1;"));
  EXPECT_THROW(w->wait(10s), Error);
  comms[0]->remove_observer(&dog);
}

// The Store lives in rank 1's process (as rank 0's under mpirun), and that process is stopped:
// rank 0's report says so, names rank 1, and still comes within a second or two.
TEST(Watchdog, StoppedStoreHostIsNamedAndTheReportStillComesInTime) {
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t host = ::fork();
  ASSERT_GE(host, 0);
  if (host == 0) {
    ::close(ready[0]);
    dist::StoreServerOptions so;
    so.token = kToken;
    dist::StoreServer server(so);
    const uint16_t port = server.port();
    if (::write(ready[1], &port, sizeof port) != sizeof port) ::_exit(1);
    ::pause();  // until the test kills it
    ::_exit(0);
  }
  ::close(ready[1]);
  uint16_t port = 0;
  const bool started = ::read(ready[0], &port, sizeof port) == sizeof port;
  ::close(ready[0]);
  struct Reaper {
    pid_t pid;
    ~Reaper() {
      ::kill(pid, SIGCONT);
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  } reaper{host};
  ASSERT_TRUE(started) << "the store process did not start";
  const auto client = [&](std::chrono::milliseconds request_timeout) {
    dist::StoreClientOptions co;
    co.port = port;
    co.token = kToken;
    co.request_timeout = request_timeout;
    return std::make_shared<dist::StoreClient>(co);
  };
  auto comms = dist::make_local_group(2);
  dist::WatchdogOptions o;
  o.timeout = 1500ms;
  o.stall_warning = 10s;
  o.poll = 20ms;
  o.store_host_rank = 1;
  Reports timeouts;
  dist::Watchdog dog(
      0, 2, o, client(2000ms), [&](const std::string& r) { timeouts.add(r); }, nullptr,
      client(300ms));
  comms[0]->add_observer(&dog);
  ASSERT_EQ(::kill(host, SIGSTOP), 0);
  const auto start = std::chrono::steady_clock::now();
  Tensor a = zeros({8});
  dist::WorkPtr w = comms[0]->all_reduce(a, {dist::ReduceOp::kSum, 3500ms});
  ASSERT_TRUE(timeouts.wait_for_count(1, 10s)) << "the watchdog did not fire";
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::string& rep = timeouts.items[0];
  EXPECT_THAT(rep, HasSubstr("ranks that stopped responding before finishing it (stopped, "
                             "hung or cut off): 1"));
  EXPECT_THAT(rep, HasSubstr("rank 1: unknown (the store does not answer)  <- hosts the store"));
  // The timeout, a poll and one store request timeout at most, well before the collective's 3.5 s.
  EXPECT_LT(seconds, 3.0) << rep;
  EXPECT_THROW(w->wait(10s), Error);
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
