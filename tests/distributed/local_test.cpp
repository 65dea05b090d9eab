// The local backend's own behaviour: reserved tags, asynchronous progress, mismatch detection and
// timeouts that name the missing ranks, and observers that are never called once removed. Its
// collective results are checked by the parity suite (parity_test.cpp), which also makes it the
// reference for the other backends.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "dtrain/distributed/backends/local/local_communicator.h"

namespace dtrain {
namespace {

using dist::HostCommunicator;
using ::testing::HasSubstr;

/// Runs body(comm) on every rank of a new local group, one thread per rank.
void for_each_rank(int world, const std::function<void(HostCommunicator&)>& body) {
  auto comms = dist::make_local_group(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) threads.emplace_back([&, r] { body(*comms[r]); });
  for (auto& t : threads) t.join();
}

TEST(LocalBackend, TagsDtrainReservesAreRefusedWhereTheyAreUsed) {
  auto comms = dist::make_local_group(2);
  Tensor t = zeros({4});
  for (int tag : {-1, dist::kReservedTags}) {
    try {
      comms[0]->send(t, 1, {tag});
      ADD_FAILURE() << "tag " << tag << " was accepted";
    } catch (const ValueError& e) {
      EXPECT_THAT(e.message(), HasSubstr("send: tag " + std::to_string(tag) + " must be in [0, " +
                                         std::to_string(dist::kReservedTags) + ")"));
    }
    EXPECT_THROW(comms[1]->recv(t, 0, {tag}), ValueError);
  }
}

TEST(LocalBackend, CollectivesRunInIssueOrderWhileTheCallerContinues) {
  for_each_rank(2, [](HostCommunicator& c) {
    Tensor a = full({4}, c.rank() + 1.0), b = full({4}, 10.0 * (c.rank() + 1));
    const uint64_t first = c.next_sequence();
    dist::WorkPtr wa = c.all_reduce(a);
    dist::WorkPtr wb = c.all_reduce(b);  // issued before the first finished
    EXPECT_EQ(wa->info().sequence, first);
    EXPECT_EQ(wb->info().sequence, first + 1);
    wb->wait();
    EXPECT_TRUE(wa->is_completed());  // in order: the first is done when the second is
    EXPECT_EQ(a.to_vector<float>()[0], 3.f);
    EXPECT_EQ(b.to_vector<float>()[0], 30.f);
  });
}

TEST(LocalBackend, DifferentCollectivesOnTwoRanksAreReportedOnBoth) {
  std::vector<std::string> errors(2);
  for_each_rank(2, [&](HostCommunicator& c) {
    Tensor t({c.rank() == 0 ? 4 : 5});
    t.zero_();
    try {
      c.all_reduce(t)->wait();
    } catch (const Error& e) {
      errors[c.rank()] = e.message();
    }
  });
  for (const std::string& e : errors) {
    EXPECT_THAT(e, HasSubstr("ranks called different collectives"));
    EXPECT_THAT(e, HasSubstr("rank 0: collective #1 all_reduce(sum) float32 x 4"));
    EXPECT_THAT(e, HasSubstr("rank 1: collective #1 all_reduce(sum) float32 x 5"));
  }
}

TEST(LocalBackend, DebugChecksCompareCallsBeforeRunningThem) {
  std::vector<std::string> errors(2);
  for_each_rank(2, [&](HostCommunicator& c) {
    c.set_debug_checks(true);
    Tensor t = zeros({c.rank() == 0 ? 4 : 6});
    try {
      c.all_reduce(t)->wait();
    } catch (const Error& e) {
      errors[c.rank()] = e.message();
    }
  });
  for (const std::string& e : errors) {
    EXPECT_THAT(e, HasSubstr("DTRAIN_DISTRIBUTED_DEBUG"));
    EXPECT_THAT(e, HasSubstr("rank 0: collective #1 all_reduce(sum) float32 x 4"));
    EXPECT_THAT(e, HasSubstr("rank 1: collective #1 all_reduce(sum) float32 x 6"));
  }
}

TEST(LocalBackend, DifferentKindsAreReported) {
  std::vector<std::string> errors(2);
  for_each_rank(2, [&](HostCommunicator& c) {
    Tensor t = zeros({4});
    try {
      if (c.rank() == 0) {
        c.all_reduce(t)->wait();
      } else {
        c.broadcast(t)->wait();
      }
    } catch (const Error& e) {
      errors[c.rank()] = e.message();
    }
  });
  EXPECT_THAT(errors[0], HasSubstr("broadcast(root 0)"));
  EXPECT_THAT(errors[1], HasSubstr("all_reduce(sum)"));
}

TEST(LocalBackend, ARankThatNeverArrivesIsNamedByTheOthers) {
  // Ranks 0 and 2 wait with a short timeout; rank 1 skips the collective entirely.
  std::vector<std::string> errors(3);
  for_each_rank(3, [&](HostCommunicator& c) {
    if (c.rank() == 1) return;
    Tensor t = zeros({8});
    try {
      c.all_reduce(t, {dist::ReduceOp::kSum, std::chrono::milliseconds(200)})->wait();
    } catch (const Error& e) {
      errors[c.rank()] = e.message();
    }
  });
  for (int r : {0, 2}) {
    EXPECT_THAT(errors[r], HasSubstr("collective #1 all_reduce(sum) float32 x 8"));
    EXPECT_THAT(errors[r], HasSubstr("ranks that have not reached it: 1"));
  }
}

TEST(LocalBackend, AllReduceNowNamesARankThatNeverArrives) {
  std::vector<std::string> errors(3);
  for_each_rank(3, [&](HostCommunicator& c) {
    if (c.rank() == 1) return;
    Tensor t = zeros({8});
    try {
      c.all_reduce_now(t, {dist::ReduceOp::kSum, std::chrono::milliseconds(200)});
      errors[c.rank()] = "completed without rank 1";
    } catch (const Error& e) {  // the first to time out throws TimeoutError, the others its text
      errors[c.rank()] = e.message();
    }
  });
  for (int r : {0, 2}) {
    EXPECT_THAT(errors[r], HasSubstr("collective #1 all_reduce(sum) float32 x 8 timed out"));
    EXPECT_THAT(errors[r], HasSubstr("ranks that have not reached it: 1"));
  }
}

TEST(LocalBackend, AllReduceNowAdvancesTheSequenceAndCallsDigestAsAllReduceDoes) {
  auto queued = dist::make_local_group(1);
  auto now = dist::make_local_group(1);
  Tensor a = ones({3}), b = ones({3}, DType::kFloat64);
  queued[0]->all_reduce(a)->wait();
  queued[0]->all_reduce(b, {dist::ReduceOp::kMax})->wait();
  now[0]->all_reduce_now(a);
  now[0]->all_reduce_now(b, {dist::ReduceOp::kMax});
  EXPECT_EQ(now[0]->next_sequence(), queued[0]->next_sequence());
  EXPECT_EQ(now[0]->calls_digest(), queued[0]->calls_digest());
  now[0]->all_reduce_now(b);  // another op: another digest
  EXPECT_NE(now[0]->calls_digest(), queued[0]->calls_digest());
}

TEST(LocalBackend, WaitTimesOutNamingTheCollective) {
  auto comms = dist::make_local_group(2);
  Tensor t = zeros({3});
  // Only rank 0 issues: its work cannot finish, and wait() says which collective it was.
  dist::WorkPtr w = comms[0]->all_reduce(t, {dist::ReduceOp::kSum, std::chrono::milliseconds(300)});
  EXPECT_THROW(w->wait(std::chrono::milliseconds(50)), TimeoutError);
  try {
    w->wait(std::chrono::milliseconds(5000));  // the collective's own timeout fires first
    ADD_FAILURE() << "expected the collective to time out";
  } catch (const TimeoutError& e) {
    EXPECT_THAT(e.message(), HasSubstr("ranks that have not reached it: 1"));
  }
}

/// Notes each call it gets ("start #1", "finish #1"); `hold` makes on_start wait for release().
class RecordingObserver final : public dist::CollectiveObserver {
 public:
  explicit RecordingObserver(bool hold = false) : hold_(hold) {}
  void on_start(int, const dist::CollectiveInfo& info) override {
    std::unique_lock lock(mu_);
    events_.push_back("start #" + std::to_string(info.sequence));
    cv_.notify_all();
    if (hold_) cv_.wait_for(lock, std::chrono::seconds(10), [&] { return released_; });
  }
  void on_finish(int, const dist::CollectiveInfo& info) override {
    std::lock_guard lock(mu_);
    events_.push_back("finish #" + std::to_string(info.sequence));
  }
  bool wait_for_start(std::chrono::milliseconds limit) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, limit, [&] { return !events_.empty(); });
  }
  void release() {
    std::lock_guard lock(mu_);
    released_ = true;
    cv_.notify_all();
  }
  std::vector<std::string> events() {
    std::lock_guard lock(mu_);
    return events_;
  }

 private:
  const bool hold_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> events_;
  bool released_ = false;
};

TEST(LocalBackend, AnObserverRemovedWhileItsCollectiveRunsIsNeverCalledAgain) {
  // What a strategy relies on when a wait() timed out and it is destroyed while the collective
  // still runs on the communicator's thread: once remove_observer returns, the observer may go.
  auto comms = dist::make_local_group(2);
  RecordingObserver removed, kept;
  comms[0]->add_observer(&removed);
  comms[0]->add_observer(&kept);
  Tensor a = ones({4}), b = ones({4});
  dist::WorkPtr w0 = comms[0]->all_reduce(a, {dist::ReduceOp::kSum, std::chrono::seconds(30)});
  ASSERT_TRUE(removed.wait_for_start(std::chrono::seconds(10)));
  EXPECT_THROW(w0->wait(std::chrono::milliseconds(20)), TimeoutError);  // rank 1 is not there
  comms[0]->remove_observer(&removed);
  dist::WorkPtr w1 = comms[1]->all_reduce(b);
  w0->wait(std::chrono::seconds(10));
  w1->wait(std::chrono::seconds(10));
  EXPECT_EQ(a.to_vector<float>()[0], 2.f);
  EXPECT_EQ(removed.events(), std::vector<std::string>{"start #1"});
  EXPECT_EQ(kept.events(), (std::vector<std::string>{"start #1", "finish #1"}));
  comms[0]->remove_observer(&kept);
}

TEST(LocalBackend, RemoveObserverWaitsForACallInProgress) {
  auto comms = dist::make_local_group(1);
  RecordingObserver held(/*hold=*/true);
  comms[0]->add_observer(&held);
  Tensor t = ones({2});
  // A group of one runs the collective inside the call, so the call is made on its own thread.
  dist::WorkPtr w;
  std::thread issuer([&] { w = comms[0]->all_reduce(t); });
  if (!held.wait_for_start(std::chrono::seconds(10))) {
    held.release();
    issuer.join();
    FAIL() << "the observer was never called";
  }
  // on_start is running now, on the thread running the collective.
  std::mutex mu;
  std::condition_variable cv;
  bool returned = false;
  std::thread remover([&] {
    comms[0]->remove_observer(&held);
    std::lock_guard lock(mu);
    returned = true;
    cv.notify_all();
  });
  {
    std::unique_lock lock(mu);
    // Must not happen while on_start runs: a bounded look for a return that would be too early.
    EXPECT_FALSE(cv.wait_for(lock, std::chrono::milliseconds(300), [&] { return returned; }))
        << "remove_observer returned while the observer was still being called";
  }
  held.release();
  remover.join();
  issuer.join();
  w->wait(std::chrono::seconds(10));
  EXPECT_TRUE(returned);
}

TEST(LocalBackend, BadArgumentsAreRejectedAtTheCall) {
  auto comms = dist::make_local_group(2);
  Tensor bools({4}, DType::kBool);
  Tensor t = zeros({4}), wrong = zeros({7});
  EXPECT_THROW(comms[0]->all_reduce(bools), ValueError);
  EXPECT_THROW(comms[0]->broadcast(t, {5}), ValueError);
  EXPECT_THROW(comms[0]->all_gather(t, wrong), ValueError);
  EXPECT_THROW(comms[0]->send(t, 0), ValueError);  // to itself
}

}  // namespace
}  // namespace dtrain
