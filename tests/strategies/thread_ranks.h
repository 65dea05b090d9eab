// Thread-ranks for the strategy tests: a body run on every rank of a local-backend group, and a
// run's data drawn once, so that N replicas and one process see the same rows.
#pragma once

#include <functional>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "dtrain/distributed/backends/local/local_communicator.h"
#include "dtrain/tensor/ops.h"
#include "dtrain/tensor/tensor.h"

namespace dtrain::testutil {

/// Runs `body` on `world` threads, each with its rank's communicator, and joins them.
inline void for_each_rank(int world,
                          const std::function<void(std::shared_ptr<dist::Communicator>)>& body) {
  auto comms = dist::make_local_group(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) threads.emplace_back([&, r] { body(comms[r]); });
  for (auto& t : threads) t.join();
}

/// Classification data of a whole run: step s of a global batch G uses rows [s G, (s + 1) G).
struct RunData {
  Tensor x, y;
  RunData(int64_t rows, int64_t features, int64_t classes, uint64_t seed) {
    Generator gen(seed, 3);
    x = randn({rows, features}, gen);
    y = randint(0, classes, {rows}, gen);
  }
  std::pair<Tensor, Tensor> rows(int64_t begin, int64_t count) const {
    return {ops::slice(x, 0, begin, begin + count).clone(),
            ops::slice(y, 0, begin, begin + count).clone()};
  }
};

}  // namespace dtrain::testutil
