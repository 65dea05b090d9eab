// Ranks of a tcp group as threads of the test process, over a real Store on loopback.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "dtrain/distributed/backends/tcp/tcp_communicator.h"
#include "dtrain/distributed/store.h"
#include "dtrain/tensor/check.h"

namespace dtrain {

inline constexpr char kToken[] = "tcp-test-token";

struct TestStore {
  dist::StoreServer server{[] {
    dist::StoreServerOptions o;
    o.token = kToken;
    return o;
  }()};
  std::shared_ptr<dist::StoreClient> client() {
    dist::StoreClientOptions o;
    o.port = server.port();
    o.token = kToken;
    return std::make_shared<dist::StoreClient>(o);
  }
};

/// Runs body(comm) on every rank of a new tcp group of `world` ranks, one thread each. A rank
/// whose constructor throws stores the message in errors[rank].
inline void for_each_tcp_rank(int world, const std::function<void(dist::HostCommunicator&)>& body,
                              dist::TcpOptions options = {},
                              std::vector<std::string>* errors = nullptr, int absent_rank = -1) {
  TestStore store;
  std::vector<std::thread> threads;
  if (errors) errors->assign(world, "");
  for (int r = 0; r < world; ++r) {
    if (r == absent_rank) continue;
    threads.emplace_back([&, r] {
      try {
        dist::TcpCommunicator comm(store.client(), r, world, options);
        body(comm);
      } catch (const Error& e) {
        if (!errors) throw;
        (*errors)[r] = e.message();
      }
    });
  }
  for (auto& t : threads) t.join();
}

}  // namespace dtrain
