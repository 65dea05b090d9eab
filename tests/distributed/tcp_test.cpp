// The tcp backend's own behaviour over a real Store on loopback (ranks are threads of this process
// with their own sockets): strangers turned away, different collectives reported, a peer's
// by-address frames refused unless both sides verified each other, and a rank that leaves, never
// arrives or is late named by the others. Its collective results, on both data
// paths, are checked by the parity suite (parity_test.cpp).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <latch>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "collective_cases.h"
#include "dtrain/distributed/backends/tcp/tcp_communicator.h"
#include "dtrain/distributed/shared_memory.h"
#include "dtrain/distributed/socket.h"
#include "tcp_ranks.h"

namespace dtrain {
namespace {

using dist::HostCommunicator;
using ::testing::HasSubstr;

/// A 2-rank group in which rank 1 joins only after `stranger` has done its part against rank 0's
/// listener (host, port), while rank 0 is accepting. Both ranks then all-reduce; returns what
/// each rank threw ("" when it got the right sum).
std::vector<std::string> two_ranks_after_stranger(
    const dist::TcpOptions& options,
    const std::function<void(const std::string& host, uint16_t port)>& stranger) {
  TestStore store;
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  threads.emplace_back([&] {
    auto client = store.client();
    const auto [host, port] =
        dist::net::split_host_port(client->get(options.key_prefix + "addr/0"), "address");
    stranger(host, port);
    client->set("stranger", "done");
  });
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      try {
        auto client = store.client();
        if (r == 1) client->get("stranger");
        dist::TcpCommunicator c(client, r, 2, options);
        Tensor t = testdist::rank_input(DType::kFloat32, dist::ReduceOp::kSum, r, 5);
        c.all_reduce(t)->wait();
        for (int i = 0; i < 5; ++i) {
          if (t.data<float>()[i] !=
              testdist::expected_value(DType::kFloat32, dist::ReduceOp::kSum, 2, i)) {
            errors[r] = "wrong sum at " + std::to_string(i);
          }
        }
      } catch (const Error& e) {
        errors[r] = e.message();
      }
    });
  }
  for (auto& t : threads) t.join();
  return errors;
}

dist::net::UniqueFd dial(const std::string& host, uint16_t port) {
  std::string error;
  auto fd = dist::net::try_connect_tcp(host, port,
                                       dist::net::Clock::now() + std::chrono::seconds(5), error);
  EXPECT_TRUE(fd) << error;
  return fd;
}

/// Rank 1 of a 2-rank group played by hand, speaking the wire protocol itself (as a compromised
/// node holding the store token could): the hello, then its cross-memory verdict.
class HandmadeRank {
 public:
  /// `node_record` is what it publishes as "host key|pid|probe address" (hex).
  HandmadeRank(dist::StoreClient& store, const std::function<std::string()>& node_record) {
    const std::string prefix = "dtrain/tcp/";
    secret_ = store.get(prefix + "secret");
    store.set(prefix + "node/1", node_record());
    const auto [host, port] = dist::net::split_host_port(store.get(prefix + "addr/0"), "address");
    fd_ = dial(host, port);
    std::string hello = "dtraint1";
    const int32_t rank_and_size[2] = {1, 2};
    hello.append(reinterpret_cast<const char*>(rank_and_size), sizeof rank_and_size);
    hello += secret_;
    send_bytes(hello);
    send_bytes(std::string(1, '\1'));  // "I can read your memory"
    char theirs = 0;
    EXPECT_FALSE(dist::net::recv_all(fd_.get(), &theirs, 1, deadline()));
  }
  /// A data frame (96 bytes: size, sequence, tag | kind << 32, address, what) for a recv of
  /// `bytes` with tag 0, telling the receiver to copy them from `address`.
  void send_frame(uint32_t kind, uint64_t bytes, const void* address) {
    std::string frame(96, '\0');
    const uint64_t fields[4] = {bytes, 0, uint64_t{kind} << 32,
                                reinterpret_cast<uint64_t>(address)};
    std::memcpy(frame.data(), fields, sizeof fields);
    send_bytes(frame);
  }

 private:
  static dist::net::Clock::time_point deadline() {
    return dist::net::Clock::now() + std::chrono::seconds(10);
  }
  void send_bytes(const std::string& bytes) {
    EXPECT_FALSE(dist::net::send_all(fd_.get(), bytes.data(), bytes.size(), deadline()));
  }
  std::string secret_;
  dist::net::UniqueFd fd_;
};

/// Rank 0 receives 256 KiB from a handmade rank 1 that sends a frame of `kind` pointing at a
/// secret of this process; returns rank 0's error and checks that no byte of the secret arrived.
std::string receive_from_handmade_rank(uint32_t kind, bool publish_rank0_probe) {
  TestStore store;
  const std::string secret_text = "not for the peer";
  std::vector<char> secret(256 << 10);
  for (size_t i = 0; i < secret.size(); ++i) secret[i] = secret_text[i % secret_text.size()];
  std::unique_ptr<HandmadeRank> peer;
  std::thread fake([&] {
    auto client = store.client();
    peer = std::make_unique<HandmadeRank>(*client, [&] {
      // Rank 0's own record names a process (this one) that holds a probe of the group, at an
      // address that holds it: what a forged record copying another rank's would show.
      if (publish_rank0_probe) return client->get("dtrain/tcp/node/0");
      return dist::host_identity() + "|" + std::to_string(::getpid()) + "|1";
    });
  });
  dist::TcpCommunicator rank0(store.client(), 0, 2);
  fake.join();
  EXPECT_EQ(rank0.cross_memory_peers(), 0) << "a forged node record passed the probe";
  Tensor t = zeros({int64_t(secret.size() / sizeof(float))});
  std::string error = "<no error>";
  try {
    dist::WorkPtr w = rank0.recv(t, 1);
    peer->send_frame(kind, t.nbytes(), secret.data());
    w->wait(std::chrono::seconds(10));
  } catch (const DistError& e) {
    error = e.message();
  }
  EXPECT_NE(std::memcmp(t.data_ptr(), secret.data(), 64), 0) << "rank 0 copied the secret";
  return error;
}

TEST(TcpBackend, AByAddressFrameWithoutAnAgreementIsRefused) {
  const std::string error = receive_from_handmade_rank(/*kind=*/1, /*publish_rank0_probe=*/false);
  EXPECT_THAT(error, HasSubstr("did not agree on cross-memory copies"));
  EXPECT_THAT(error, HasSubstr("rank 1 ("));
}

TEST(TcpBackend, ANodeRecordNamingAnotherRanksProcessDoesNotEnableCrossMemory) {
  const std::string error = receive_from_handmade_rank(/*kind=*/1, /*publish_rank0_probe=*/true);
  EXPECT_THAT(error, HasSubstr("did not agree on cross-memory copies"));
}

TEST(TcpBackend, AFrameOfUnknownKindIsRefused) {
  const std::string error = receive_from_handmade_rank(/*kind=*/7, /*publish_rank0_probe=*/false);
  EXPECT_THAT(error, HasSubstr("unknown kind 7"));
}

TEST(TcpBackend, ARankThatNeverJoinsIsNamedAfterTheConnectTimeout) {
  dist::TcpOptions o;
  o.connect_timeout = std::chrono::milliseconds(500);
  std::vector<std::string> errors;
  for_each_tcp_rank(
      3, [](HostCommunicator&) {}, o, &errors, /*absent_rank=*/1);
  EXPECT_THAT(errors[2], HasSubstr("rank 1 to publish its address"));
  // Rank 2 connected to rank 0 before it gave up waiting for rank 1.
  EXPECT_THAT(errors[0], HasSubstr("waited 500 ms for rank(s) 1 to connect"));
}

TEST(TcpBackend, ARankThatLeavesIsNamedInTheCollectiveOfTheOthers) {
  std::vector<std::string> errors;
  for_each_tcp_rank(
      2,
      [](HostCommunicator& c) {
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
  for_each_tcp_rank(3, [](HostCommunicator& c) {
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

TEST(TcpBackend, AllReduceNowThatTimesOutNamesTheCollectiveAndTheRankStillOwingData) {
  std::vector<std::string> errors(3);
  std::latch others_done(2);
  for_each_tcp_rank(3, [&](HostCommunicator& c) {
    Tensor t({8});
    if (c.rank() == 2) {
      // Connected but never calls: it leaves only once the others have given up.
      others_done.wait();
      return;
    }
    try {
      c.all_reduce_now(t, {dist::ReduceOp::kSum, std::chrono::milliseconds(100)});
      errors[c.rank()] = "completed without rank 2";
    } catch (const TimeoutError& e) {
      errors[c.rank()] = e.message();
    }
    others_done.count_down();
  });
  for (int r : {0, 1}) {
    EXPECT_THAT(errors[r], HasSubstr("all_reduce(sum) float32 x 8 did not complete within 100 ms"));
    EXPECT_THAT(errors[r], HasSubstr("receiving from rank 2"));
  }
}

TEST(TcpBackend, DifferentCollectivesAreReportedInsteadOfMixingData) {
  std::vector<std::string> errors(2);
  for_each_tcp_rank(2, [&](HostCommunicator& c) {
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

TEST(TcpBackend, IdleConnectionsDoNotDelayTheRealPeers) {
  dist::TcpOptions options;
  options.connect_timeout = std::chrono::milliseconds(20'000);
  // Longer than the whole set-up may take: the peers must get in while the strangers still wait.
  options.hello_timeout = std::chrono::milliseconds(60'000);
  std::vector<dist::net::UniqueFd> strangers;  // held open until the group has formed
  const auto errors =
      two_ranks_after_stranger(options, [&](const std::string& host, uint16_t port) {
        for (int i = 0; i < 8; ++i) strangers.push_back(dial(host, port));
        strangers.push_back(dial(host, port));
        ASSERT_EQ(::send(strangers.back().get(), "dtraint1", 8, MSG_NOSIGNAL), 8);  // half a hello
      });
  EXPECT_EQ(errors[0], "");
  EXPECT_EQ(errors[1], "");
}

TEST(TcpBackend, AConnectionWithoutAHelloIsClosedAfterTheHelloTimeout) {
  dist::TcpOptions options;
  options.connect_timeout = std::chrono::milliseconds(20'000);
  options.hello_timeout = std::chrono::milliseconds(200);
  bool closed = false;
  const auto errors =
      two_ranks_after_stranger(options, [&](const std::string& host, uint16_t port) {
        auto fd = dial(host, port);
        pollfd p{fd.get(), POLLIN, 0};
        char byte;
        // Rank 0 is still waiting for rank 1 here, so only the hello deadline can close it.
        closed = ::poll(&p, 1, 5'000) == 1 && ::recv(fd.get(), &byte, 1, 0) <= 0;
      });
  EXPECT_TRUE(closed) << "rank 0 kept a silent connection open while it waited for rank 1";
  EXPECT_EQ(errors[0], "");
  EXPECT_EQ(errors[1], "");
}

}  // namespace
}  // namespace dtrain
