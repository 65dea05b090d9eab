// The tcp backend over a real Store on loopback: every collective for 1, 2, 3 and 4 ranks (threads
// of this process with their own sockets), results bit-identical to the local backend's, strangers
// turned away, and a rank that leaves or never arrives named by the others.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>
#include <thread>

#include "collective_cases.h"
#include "distributed/backends/local/local_communicator.h"
#include "distributed/backends/tcp/tcp_communicator.h"
#include "distributed/socket.h"
#include "tcp_ranks.h"

namespace dtrain {
namespace {

using dist::AsyncCommunicator;
using ::testing::HasSubstr;

/// (ranks, whether same-host data goes by address): both data paths run every case.
class TcpCollectives : public ::testing::TestWithParam<std::tuple<int, bool>> {
 protected:
  int world() const { return std::get<0>(GetParam()); }
  dist::TcpOptions options() const {
    dist::TcpOptions o;
    o.cross_memory = std::get<1>(GetParam());
    return o;
  }
};

TEST_P(TcpCollectives, EveryCollectiveDtypeAndCount) {
  const bool by_address = std::get<1>(GetParam());
  for_each_tcp_rank(
      world(),
      [&](AsyncCommunicator& c) {
        // Ranks that are threads of one process share one host: every peer is read by address
        // unless that is switched off.
        EXPECT_EQ(static_cast<dist::TcpCommunicator&>(c).cross_memory_peers(),
                  by_address ? c.size() - 1 : 0);
        testdist::check_everything(c);
      },
      options());
}

TEST_P(TcpCollectives, LargeMessagesOfEveryCollective) {
  // 1.6 MB float32 buffers: every chunk to a peer is at least 400 KB, above the size from which
  // same-host data goes by address.
  constexpr int64_t kCount = 400'000;
  for_each_tcp_rank(
      world(),
      [&](AsyncCommunicator& c) {
        testdist::check_all_reduce(c, DType::kFloat32, kCount, dist::ReduceOp::kSum);
        testdist::check_all_reduce(c, DType::kFloat64, kCount, dist::ReduceOp::kMax);
        testdist::check_broadcast(c, DType::kFloat32, kCount, c.size() - 1);
        testdist::check_reduce(c, DType::kFloat32, kCount, 0);
        testdist::check_all_gather(c, DType::kFloat32, kCount / 4);
        testdist::check_reduce_scatter(c, DType::kFloat32, kCount / 4);
        testdist::check_send_recv_ring(c, DType::kFloat32, kCount);
      },
      options());
}

TEST_P(TcpCollectives, SumsThatRoundAreBitIdenticalToTheLocalBackend) {
  const int world = this->world();
  const auto input = [](int rank) {
    Tensor t({1001});
    Generator gen(11, rank);
    uniform_(t, -1, 1, gen);
    return t;
  };
  std::vector<Tensor> tcp(world), local(world);
  for_each_tcp_rank(
      world,
      [&](AsyncCommunicator& c) {
        Tensor t = input(c.rank());
        c.all_reduce(t, {dist::ReduceOp::kAvg})->wait();
        tcp[c.rank()] = t;
      },
      options());
  auto comms = dist::make_local_group(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      Tensor t = input(r);
      comms[r]->all_reduce(t, {dist::ReduceOp::kAvg})->wait();
      local[r] = t;
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) {
    EXPECT_EQ(std::memcmp(tcp[r].data_ptr(), local[0].data_ptr(), local[0].nbytes()), 0)
        << "rank " << r << " differs from the local backend";
  }
}

INSTANTIATE_TEST_SUITE_P(World, TcpCollectives,
                         ::testing::Combine(::testing::Values(1, 2, 3, 4), ::testing::Bool()),
                         [](const auto& info) {
                           return std::to_string(std::get<0>(info.param)) + "ranks" +
                                  (std::get<1>(info.param) ? "ByAddress" : "OverSockets");
                         });

TEST(TcpBackend, ARankThatNeverJoinsIsNamedAfterTheConnectTimeout) {
  dist::TcpOptions o;
  o.connect_timeout = std::chrono::milliseconds(500);
  std::vector<std::string> errors;
  for_each_tcp_rank(
      3, [](AsyncCommunicator&) {}, o, &errors, /*absent_rank=*/1);
  EXPECT_THAT(errors[2], HasSubstr("rank 1 to publish its address"));
  // Rank 2 connected to rank 0 before it gave up waiting for rank 1.
  EXPECT_THAT(errors[0], HasSubstr("waited 500 ms for rank(s) 1 to connect"));
}

TEST(TcpBackend, ARankThatLeavesIsNamedInTheCollectiveOfTheOthers) {
  std::vector<std::string> errors;
  for_each_tcp_rank(
      2,
      [](AsyncCommunicator& c) {
        if (c.rank() == 1) return;  // leaves: its destructor closes the connections
        Tensor t({16});
        try {
          c.all_reduce(t)->wait();
          ADD_FAILURE() << "the all-reduce completed without rank 1";
        } catch (const Error& e) {
          EXPECT_THAT(e.message(), HasSubstr("rank 1 ("));
          EXPECT_THAT(e.message(), HasSubstr("closed the connection"));
          EXPECT_THAT(e.message(), HasSubstr("#1 all_reduce(sum) float32 x 16"));
        }
      },
      {}, &errors);
}

TEST(TcpBackend, ACollectiveThatTimesOutNamesTheRanksStillOwingData) {
  for_each_tcp_rank(3, [](AsyncCommunicator& c) {
    Tensor t({8});
    if (c.rank() == 2) {
      // Joins late, after the others gave up; its own call then fails on the closed sockets.
      std::this_thread::sleep_for(std::chrono::milliseconds(400));
      return;
    }
    dist::AllReduceOptions o;
    o.timeout = std::chrono::milliseconds(100);
    try {
      c.all_reduce(t, o)->wait();
      ADD_FAILURE() << "completed without rank 2";
    } catch (const TimeoutError& e) {
      EXPECT_THAT(e.message(), HasSubstr("did not complete within 100 ms"));
      EXPECT_THAT(e.message(), HasSubstr("receiving from rank 2"));
    }
  });
}

TEST(TcpBackend, DifferentCollectivesAreReportedInsteadOfMixingData) {
  std::vector<std::string> errors(2);
  for_each_tcp_rank(2, [&](AsyncCommunicator& c) {
    Tensor t({c.rank() == 0 ? 8 : 9});
    try {
      c.all_reduce(t)->wait();
    } catch (const Error& e) {
      errors[c.rank()] = e.message();
    }
  });
  EXPECT_THAT(errors[0], HasSubstr("the ranks issued different collectives"));
  EXPECT_THAT(errors[0], HasSubstr("all_reduce(sum) float32 x 9"));
}

TEST(TcpBackend, AConnectionWithoutTheSecretIsTurnedAway) {
  TestStore store;
  std::vector<std::thread> threads;
  std::atomic<bool> stranger_done{false};
  // A stranger dials rank 0's port as soon as it is published, before rank 1 does.
  threads.emplace_back([&] {
    auto client = store.client();
    const std::string address = client->get("dtrain/tcp/addr/0");
    const auto [host, port] = dist::net::split_host_port(address, "address");
    std::string error;
    auto fd = dist::net::try_connect_tcp(host, port,
                                         dist::net::Clock::now() + std::chrono::seconds(5), error);
    ASSERT_TRUE(fd) << error;
    const std::string junk(48, 'x');
    ASSERT_EQ(::send(fd.get(), junk.data(), junk.size(), MSG_NOSIGNAL), 48);
    stranger_done = true;
    client->set("stranger", "done");
  });
  std::vector<Tensor> results(2);
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      auto client = store.client();
      if (r == 1) client->get("stranger");
      dist::TcpCommunicator c(client, r, 2);
      Tensor t = testdist::rank_input(DType::kFloat32, dist::ReduceOp::kSum, r, 5);
      c.all_reduce(t)->wait();
      results[r] = t;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_TRUE(stranger_done);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(results[0].data<float>()[i],
              testdist::expected_value(DType::kFloat32, dist::ReduceOp::kSum, 2, i));
  }
}

}  // namespace
}  // namespace dtrain
