// MirroredStrategy: replica threads over a local group.
#include "strategies/mirrored.h"

#include <algorithm>
#include <exception>

#include "distributed/backends/local/local_communicator.h"

namespace dtrain {

MirroredStrategy::MirroredStrategy(nn::Module& model, int replicas, DdpOptions options) {
  DTRAIN_CHECK(replicas >= 1, "MirroredStrategy: replicas must be >= 1; got ", replicas);
  models_.push_back(&model);
  for (int r = 1; r < replicas; ++r) {
    clones_.push_back(model.clone());
    models_.push_back(clones_.back().get());
  }
  // Constructing DistributedDataParallel is collective: every replica's on its own thread.
  auto comms = dist::make_local_group(replicas);
  ddps_.resize(replicas);
  std::vector<std::exception_ptr> errors(replicas);
  std::vector<std::thread> threads;
  for (int r = 0; r < replicas; ++r) {
    threads.emplace_back([&, r] {
      try {
        ddps_[r] = std::make_unique<DistributedDataParallel>(*models_[r], comms[r], options);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

MirroredStrategy::~MirroredStrategy() = default;

void MirroredStrategy::run_each(const std::function<void(ReplicaContext&)>& step_fn) {
  const int n = num_replicas_in_sync();
  std::vector<std::exception_ptr> errors(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      ReplicaContext ctx{r, n, *models_[r], *ddps_[r]};
      try {
        step_fn(ctx);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

double MirroredStrategy::reduce(dist::ReduceOp op, const std::vector<double>& v) {
  DTRAIN_CHECK(!v.empty(), "MirroredStrategy::reduce: no values");
  double acc = v[0];
  for (size_t i = 1; i < v.size(); ++i) {
    switch (op) {
      case dist::ReduceOp::kSum:
      case dist::ReduceOp::kAvg:
        acc += v[i];
        break;
      case dist::ReduceOp::kMin:
        acc = std::min(acc, v[i]);
        break;
      case dist::ReduceOp::kMax:
        acc = std::max(acc, v[i]);
        break;
      case dist::ReduceOp::kProduct:
        acc *= v[i];
        break;
    }
  }
  return op == dist::ReduceOp::kAvg ? acc / static_cast<double>(v.size()) : acc;
}

}  // namespace dtrain
