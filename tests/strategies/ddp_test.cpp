// DistributedDataParallel over thread-ranks (local backend): N replicas x batch B must train like
// one process with batch N*B, also without synchronize_gradients (backward finishes the
// reduction); no_sync, unused parameters, ranks on different branches, mismatched models, bucket
// rebuilds and compression hooks.
#include "dtrain/strategies/ddp.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "distributed/tcp_ranks.h"
#include "dtrain/distributed/backends/local/local_communicator.h"
#include "dtrain/distributed/job.h"
#include "dtrain/distributed/registry.h"
#include "dtrain/nn/layers.h"
#include "dtrain/nn/optim.h"
#include "dtrain/strategies/data_parallel.h"
#include "dtrain/tensor/cuda/cuda_backend.h"
#include "strategies/thread_ranks.h"
#include "testutil.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kIn = 10, kClasses = 3;

std::shared_ptr<nn::Sequential> make_model(uint64_t seed, int64_t hidden = 8) {
  Generator gen(seed);
  return std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::Linear>(kIn, hidden, true, gen), std::make_shared<nn::Tanh>(),
      std::make_shared<nn::Linear>(hidden, kClasses, true, gen)});
}

/// The data of the whole run: step s uses rows [s * global, (s + 1) * global).
struct Data : testutil::RunData {
  Data(int64_t rows, uint64_t seed) : RunData(rows, kIn, kClasses, seed) {}
};

using testutil::for_each_rank;

nn::NamedTensors train_single(int64_t batch, int steps, const Data& data) {
  auto model = make_model(0);
  nn::SGD opt(model->parameters(), {0.1, 0.9});
  for (int s = 0; s < steps; ++s) {
    auto [x, y] = data.rows(s * batch, batch);
    opt.zero_grad();
    cross_entropy(model->forward(x), y).backward();
    opt.step();
  }
  return model->state_dict();
}

/// Every replica's parameters after `steps`; replica r starts from seed r (DDP broadcasts rank
/// 0's). Without `synchronize`, the loop never calls synchronize_gradients(): backward() alone
/// must leave averaged gradients.
std::vector<nn::NamedTensors> train_ddp(int world, int64_t batch, int steps, const Data& data,
                                        DdpOptions options = {}, bool synchronize = true) {
  std::vector<nn::NamedTensors> out(world);
  for_each_rank(world, [&](std::shared_ptr<dist::Communicator> comm) {
    auto model = make_model(comm->rank());
    DistributedDataParallel ddp(*model, comm, options);
    nn::SGD opt(model->parameters(), {0.1, 0.9});
    for (int s = 0; s < steps; ++s) {
      auto [x, y] = data.rows(s * batch * world + comm->rank() * batch, batch);
      opt.zero_grad();
      cross_entropy(ddp.forward(x), y).backward();
      if (synchronize) ddp.synchronize_gradients();
      opt.step();
    }
    out[comm->rank()] = model->state_dict();
  });
  return out;
}

class DdpMatchesOneProcess : public ::testing::TestWithParam<int> {};

TEST_P(DdpMatchesOneProcess, TwentyStepsOfNReplicasEqualOneBigBatch) {
  const int world = GetParam();
  const int64_t batch = 4;
  const int steps = 20;
  Data data(world * batch * steps, 7);
  const auto single = train_single(world * batch, steps, data);
  const auto replicas = train_ddp(world, batch, steps, data);
  for (int r = 0; r < world; ++r) {
    for (size_t i = 0; i < single.size(); ++i) {
      EXPECT_TRUE(testutil::all_close(replicas[r][i].second, single[i].second, 1e-5, 1e-6))
          << "rank " << r << " " << single[i].first;
      // Replicas stay bit-identical to each other.
      EXPECT_TRUE(testutil::bit_equal(replicas[r][i].second, replicas[0][i].second))
          << "rank " << r << " " << single[i].first;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(World, DdpMatchesOneProcess, ::testing::Values(2, 3, 4),
                         [](const auto& info) { return std::to_string(info.param) + "replicas"; });

TEST(Ddp, BucketsInSharedMemoryTrainBitIdenticallyToTheLocalBackend) {
  // tcp ranks on one host reduce DDP's buckets in shared memory (rank order, like local), across
  // the bucket rebuild after the first step.
  const int world = 3, steps = 10;
  const int64_t batch = 4;
  Data data(world * batch * steps, 12);
  const auto local = train_ddp(world, batch, steps, data);
  std::vector<nn::NamedTensors> shared(world);
  for_each_tcp_rank(world, [&](dist::HostCommunicator& comm) {
    const std::shared_ptr<dist::Communicator> borrowed(&comm, [](dist::Communicator*) {});
    auto model = make_model(comm.rank());
    DistributedDataParallel ddp(*model, borrowed);
    nn::SGD opt(model->parameters(), {0.1, 0.9});
    for (int s = 0; s < steps; ++s) {
      auto [x, y] = data.rows(s * batch * world + comm.rank() * batch, batch);
      opt.zero_grad();
      cross_entropy(ddp.forward(x), y).backward();
      for (const Tensor& p : model->parameters()) {
        EXPECT_TRUE(comm.in_shared_memory(p.grad())) << "step " << s;
      }
      ddp.synchronize_gradients();
      opt.step();
    }
    shared[comm.rank()] = model->state_dict();
  });
  for (int r = 0; r < world; ++r) {
    for (size_t i = 0; i < local[0].size(); ++i) {
      EXPECT_TRUE(testutil::bit_equal(shared[r][i].second, local[0][i].second))
          << "rank " << r << " " << local[0][i].first;
    }
  }
}

TEST(DdpGpu, AGpuJobTrainsLikeTheSameModelWithoutDdp) {
  // One process: the job's communicator is a one-rank group, so DDP's buckets go through NCCL
  // and must leave the gradients exactly as they were.
  if (!cuda::available()) {
    try {
      dist::Job::from_env("nccl").world();
      ADD_FAILURE() << "a GPU job started without a GPU";
    } catch (const UnsupportedError& e) {
      EXPECT_THAT(e.message(), HasSubstr("backend 'nccl'"));
    }
    GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  }
  const Data data(5 * 8, 9);
  dist::Job gpu_job = dist::Job::from_env("nccl");
  struct {
    dist::CommunicatorPtr comm;
    Device device;
  } job{gpu_job.world(), gpu_job.device()};
  auto reference = make_model(0);
  auto model = make_model(0);
  reference->to(job.device);
  model->to(job.device);
  DistributedDataParallel ddp(*model, job.comm);
  nn::SGD ref_opt(reference->parameters(), {0.1, 0.9}), opt(model->parameters(), {0.1, 0.9});
  for (int s = 0; s < 5; ++s) {
    auto [x, y] = data.rows(s * 8, 8);
    x = to_device(x, job.device);
    y = to_device(y, job.device);
    ref_opt.zero_grad();
    cross_entropy(reference->forward(x), y).backward();
    ref_opt.step();
    opt.zero_grad();
    cross_entropy(ddp.forward(x), y).backward();
    ddp.synchronize_gradients();
    opt.step();
  }
  reference->to(Device::cpu());
  model->to(Device::cpu());
  const auto want = reference->state_dict(), got = model->state_dict();
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_TRUE(testutil::bit_equal(got[i].second, want[i].second)) << want[i].first;
  }
}

TEST(Ddp, TwoIdenticalRunsAreBitIdentical) {
  Data data(2 * 4 * 10, 8);
  const auto a = train_ddp(2, 4, 10, data), b = train_ddp(2, 4, 10, data);
  for (size_t i = 0; i < a[0].size(); ++i)
    EXPECT_TRUE(testutil::bit_equal(a[0][i].second, b[0][i].second));
}

TEST(Ddp, NoSyncMicroBatchesEqualOneLargerBatch) {
  // k = 3 micro-batches of 2 per replica, 2 replicas == one process with batch 12, per step.
  const int world = 2, k = 3, steps = 5;
  const int64_t micro = 2;
  Data data(world * k * micro * steps, 9);
  // Reference: one process, rows of step s in the same order the replicas use them.
  std::vector<nn::NamedTensors> out(world);
  for_each_rank(world, [&](std::shared_ptr<dist::Communicator> comm) {
    auto model = make_model(0);
    DistributedDataParallel ddp(*model, comm);
    nn::SGD opt(model->parameters(), {0.1, 0.9});
    for (int s = 0; s < steps; ++s) {
      opt.zero_grad();
      for (int m = 0; m < k; ++m) {
        const int64_t begin = (s * world + comm->rank()) * k * micro + m * micro;
        auto [x, y] = data.rows(begin, micro);
        if (m + 1 < k) {
          auto guard = ddp.no_sync();
          (cross_entropy(ddp.forward(x), y) * (1.0 / k)).backward();
        } else {
          (cross_entropy(ddp.forward(x), y) * (1.0 / k)).backward();
        }
      }
      ddp.synchronize_gradients();
      opt.step();
    }
    out[comm->rank()] = model->state_dict();
  });
  const auto single = train_single(world * k * micro, steps, data);
  for (size_t i = 0; i < single.size(); ++i) {
    EXPECT_TRUE(testutil::all_close(out[0][i].second, single[i].second, 1e-5, 1e-6))
        << single[i].first;
  }
}

/// fc1 and fc2 are used; `spare` is not.
class WithSpare : public nn::Module {
 public:
  WithSpare() {
    Generator gen(1);
    fc1 = register_module("fc1", std::make_shared<nn::Linear>(kIn, 4, true, gen));
    spare = register_module("spare", std::make_shared<nn::Linear>(4, 4, true, gen));
    fc2 = register_module("fc2", std::make_shared<nn::Linear>(4, kClasses, true, gen));
  }
  std::string describe() const override { return "WithSpare"; }
  Tensor forward(const Tensor& x) override { return fc2->forward(tanh(fc1->forward(x))); }
  std::shared_ptr<nn::Linear> fc1, spare, fc2;
};

TEST(Ddp, AParameterWithoutGradientIsNamed) {
  std::vector<std::string> errors(2);
  Data data(8, 10);
  for_each_rank(2, [&](std::shared_ptr<dist::Communicator> comm) {
    WithSpare model;
    DistributedDataParallel ddp(model, comm, {.timeout = std::chrono::milliseconds(2000)});
    auto [x, y] = data.rows(comm->rank() * 4, 4);
    try {
      // The reduction ends with backward (an end-of-backward callback), so backward reports it.
      cross_entropy(ddp.forward(x), y).backward();
      ddp.synchronize_gradients();
    } catch (const Error& e) {
      errors[comm->rank()] = e.message();
    }
  });
  for (const auto& e : errors) {
    EXPECT_THAT(e, HasSubstr("spare.weight, spare.bias"));
    EXPECT_THAT(e, HasSubstr("find_unused_parameters"));
  }
}

TEST(Ddp, FindUnusedParametersReducesTheRest) {
  Data data(8, 10);
  for_each_rank(2, [&](std::shared_ptr<dist::Communicator> comm) {
    WithSpare model;
    DistributedDataParallel ddp(model, comm, {.find_unused_parameters = true});
    model.zero_grad();
    auto [x, y] = data.rows(comm->rank() * 4, 4);
    cross_entropy(ddp.forward(x), y).backward();
    ddp.synchronize_gradients();
    EXPECT_EQ(ops::sum(ops::unary(kernels::Unary::kAbs, model.spare->weight.grad())).item<float>(),
              0.f);
    EXPECT_GT(ops::sum(ops::unary(kernels::Unary::kAbs, model.fc1->weight.grad())).item<float>(),
              0.f);
  });
}

TEST(Ddp, AMismatchedModelIsCaughtAtConstructionWithTheParametersName) {
  std::vector<std::string> errors(3);
  for_each_rank(3, [&](std::shared_ptr<dist::Communicator> comm) {
    auto model = make_model(0, comm->rank() == 2 ? 9 : 8);  // rank 2's hidden layer is wider
    try {
      DistributedDataParallel ddp(*model, comm);
    } catch (const Error& e) {
      errors[comm->rank()] = e.message();
    }
  });
  for (const auto& e : errors) {
    EXPECT_THAT(e, HasSubstr("differ at '0.weight'"));
    EXPECT_THAT(e, HasSubstr("rank(s) 2"));
  }
}

TEST(Ddp, BucketsFollowTheCapAndAreRebuiltInTheOrderGradientsBecameReady) {
  for_each_rank(2, [&](std::shared_ptr<dist::Communicator> comm) {
    auto model = make_model(0);
    // Caps of one byte: every parameter gets its own bucket.
    DistributedDataParallel ddp(*model, comm, {.bucket_cap_mb = 1e-9, .bucket_first_cap_mb = 1e-9});
    const auto before = ddp.bucket_layout();
    ASSERT_EQ(before.size(), 4u);
    EXPECT_EQ(before.front(), std::vector<std::string>{"2.bias"});  // reverse registration order
    Data data(8, 11);
    auto [x, y] = data.rows(comm->rank() * 4, 4);
    cross_entropy(ddp.forward(x), y).backward();
    ddp.synchronize_gradients();
    const auto after = ddp.bucket_layout();
    ASSERT_EQ(after.size(), 4u);
    // The engine finishes the last layer's weight and bias before the first layer's.
    EXPECT_THAT(after[0][0], HasSubstr("2."));
    EXPECT_THAT(after[3][0], HasSubstr("0."));
  });
}

// A forgotten synchronize_gradients: DDP finishes the reduction at the end of backward() (an
// autograd end-of-backward callback), as PyTorch does, so `loss.backward(); opt.step();` trains
// like one process.
TEST(DdpWithoutSynchronize, BackwardAloneTrainsLikeOneProcessWithTheGlobalBatch) {
  const int64_t batch = 4;
  const int steps = 20;
  for (int world : {2, 3}) {
    for (bool overlap : {true, false}) {
      SCOPED_TRACE(std::to_string(world) + " replicas, overlap " + (overlap ? "on" : "off"));
      Data data(world * batch * steps, 15);
      const auto single = train_single(world * batch, steps, data);
      const auto replicas =
          train_ddp(world, batch, steps, data, {.overlap = overlap}, /*synchronize=*/false);
      for (int r = 0; r < world; ++r) {
        ASSERT_EQ(replicas[r].size(), single.size());
        for (size_t i = 0; i < single.size(); ++i) {
          EXPECT_TRUE(testutil::all_close(replicas[r][i].second, single[i].second, 1e-5, 1e-6))
              << "rank " << r << " " << single[i].first;
          EXPECT_TRUE(testutil::bit_equal(replicas[r][i].second, replicas[0][i].second))
              << "rank " << r << " " << single[i].first;
        }
      }
    }
  }
}

TEST(DdpWithoutSynchronize, SynchronizeAfterBackwardIsValidAndChangesNothing) {
  const int world = 3, steps = 10;
  const int64_t batch = 4;
  Data data(world * batch * steps, 16);
  const auto with = train_ddp(world, batch, steps, data, {}, /*synchronize=*/true);
  const auto without = train_ddp(world, batch, steps, data, {}, /*synchronize=*/false);
  for (int r = 0; r < world; ++r) {
    ASSERT_EQ(with[r].size(), without[r].size());
    for (size_t i = 0; i < with[r].size(); ++i) {
      EXPECT_TRUE(testutil::bit_equal(with[r][i].second, without[r][i].second))
          << "rank " << r << " " << with[r][i].first;
    }
  }

  // Directly: the gradients backward() leaves are already the average (the same bits on every
  // rank), and synchronize_gradients() after it leaves them as they are. (A second call in the
  // same step would reduce again: without a backward since the last call, synchronize is how a
  // replica with no data for the step joins the others' all-reduces.) Three steps cover
  // the bucket rebuild after the first.
  const int check_steps = 3;
  // [rank][step][parameter]: after backward, after synchronize.
  using Snapshots = std::vector<std::vector<std::vector<Tensor>>>;
  Snapshots after_backward(world), after_sync(world);
  for_each_rank(world, [&](std::shared_ptr<dist::Communicator> comm) {
    const int r = comm->rank();
    auto model = make_model(r);
    // One bucket per parameter: most all-reduces run while backward continues.
    DistributedDataParallel ddp(*model, comm, {.bucket_cap_mb = 1e-9, .bucket_first_cap_mb = 1e-9});
    nn::SGD opt(model->parameters(), {0.1, 0.9});
    const auto grads = [&] {
      std::vector<Tensor> g;
      for (const Tensor& p : model->parameters()) g.push_back(p.grad().clone());
      return g;
    };
    for (int s = 0; s < check_steps; ++s) {
      auto [x, y] = data.rows((s * world + r) * batch, batch);
      opt.zero_grad();
      cross_entropy(ddp.forward(x), y).backward();
      after_backward[r].push_back(grads());
      ddp.synchronize_gradients();
      after_sync[r].push_back(grads());
      opt.step();
    }
  });
  for (int r = 0; r < world; ++r) {
    ASSERT_EQ(after_backward[r].size(), static_cast<size_t>(check_steps));
    for (int s = 0; s < check_steps; ++s) {
      for (size_t i = 0; i < after_backward[r][s].size(); ++i) {
        const std::string where = "rank " + std::to_string(r) + " step " + std::to_string(s) +
                                  " parameter " + std::to_string(i);
        EXPECT_TRUE(testutil::bit_equal(after_backward[r][s][i], after_backward[0][s][i]))
            << where << ": not averaged by backward";
        EXPECT_TRUE(testutil::bit_equal(after_sync[r][s][i], after_backward[r][s][i])) << where;
      }
    }
  }
}

/// fc1 -> branch_a or branch_b -> fc2; which branch is a per-instance choice (per rank).
class TwoBranches : public nn::Module {
 public:
  explicit TwoBranches(bool use_a) : use_a_(use_a) {
    Generator gen(3);
    fc1 = register_module("fc1", std::make_shared<nn::Linear>(kIn, 6, true, gen));
    branch_a = register_module("branch_a", std::make_shared<nn::Linear>(6, 6, true, gen));
    branch_b = register_module("branch_b", std::make_shared<nn::Linear>(6, 6, true, gen));
    fc2 = register_module("fc2", std::make_shared<nn::Linear>(6, kClasses, true, gen));
  }
  std::string describe() const override { return "TwoBranches"; }
  Tensor forward(const Tensor& x) override {
    const Tensor h = tanh(fc1->forward(x));
    return fc2->forward(tanh((use_a_ ? branch_a : branch_b)->forward(h)));
  }
  std::shared_ptr<nn::Linear> fc1, branch_a, branch_b, fc2;

 private:
  bool use_a_;
};

/// The bucket index holding parameter `name` (-1 when none does).
int bucket_of(const std::vector<std::vector<std::string>>& layout, const std::string& name) {
  for (size_t b = 0; b < layout.size(); ++b) {
    for (const auto& n : layout[b]) {
      if (n == name) return static_cast<int>(b);
    }
  }
  return -1;
}

// Rank 0 goes through branch_a, the others through branch_b, so the ranks see their gradients
// become ready in different orders. The buckets rebuilt after the first step follow rank 0's order
// on every rank, and every step's gradients are the average of the ranks' local gradients (an
// unused branch contributing zeros), with or without synchronize_gradients().
TEST(Ddp, RanksTakingDifferentBranchesShareBucketsAndAverageTheirGradients) {
  const int world = 3, steps = 4;
  const int64_t batch = 4;
  Data data(world * batch * steps, 17);
  const nn::NamedTensors names = TwoBranches(true).named_parameters();
  const size_t n_params = names.size();
  ASSERT_EQ(n_params, 8u);
  struct RankStep {
    std::vector<std::vector<std::string>> layout;             // after the step's reduction
    std::vector<std::vector<double>> ddp_grads, local_grads;  // by parameter
    nn::NamedTensors params;                                  // after the optimiser step
  };
  for (bool synchronize : {true, false}) {
    SCOPED_TRACE(synchronize ? "calling synchronize_gradients" : "backward alone");
    std::vector<std::vector<RankStep>> seen(world, std::vector<RankStep>(steps));
    std::vector<std::string> errors(world);
    for_each_rank(world, [&](std::shared_ptr<dist::Communicator> comm) {
      const int r = comm->rank();
      try {
        TwoBranches model(/*use_a=*/r == 0);
        TwoBranches reference(/*use_a=*/r == 0);  // the same network without DDP
        // Caps of one byte: every parameter gets its own bucket.
        DistributedDataParallel ddp(model, comm,
                                    {.bucket_cap_mb = 1e-9,
                                     .bucket_first_cap_mb = 1e-9,
                                     .find_unused_parameters = true,
                                     .timeout = std::chrono::milliseconds(60'000)});
        nn::SGD opt(model.parameters(), {0.1, 0.9});
        for (int s = 0; s < steps; ++s) {
          auto [x, y] = data.rows((s * world + r) * batch, batch);
          RankStep& out = seen[r][s];
          // This rank's own gradient at the current parameters.
          reference.load_state_dict(model.state_dict());
          reference.zero_grad();
          cross_entropy(reference.forward(x), y).backward();
          for (const Tensor& p : reference.parameters()) {
            out.local_grads.push_back(p.grad().defined()
                                          ? p.grad().to_vector<double>()
                                          : std::vector<double>(static_cast<size_t>(p.numel())));
          }
          opt.zero_grad();
          cross_entropy(ddp.forward(x), y).backward();
          if (synchronize) ddp.synchronize_gradients();
          for (const Tensor& p : model.parameters()) {
            out.ddp_grads.push_back(p.grad().defined() ? p.grad().to_vector<double>()
                                                       : std::vector<double>());
          }
          out.layout = ddp.bucket_layout();
          opt.step();
          out.params = model.state_dict();
        }
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
    for (int r = 0; r < world; ++r) ASSERT_EQ(errors[r], "") << "rank " << r;

    // Rank 0's ready order: branch_a's gradients are final before fc1's (on the other ranks
    // branch_a gets none, so their own order would not put it there).
    const auto& first = seen[0][0].layout;
    ASSERT_EQ(first.size(), n_params) << "one bucket per parameter";
    EXPECT_LT(bucket_of(first, "branch_a.weight"), bucket_of(first, "fc1.weight"));
    EXPECT_LT(bucket_of(first, "branch_a.bias"), bucket_of(first, "fc1.bias"));
    EXPECT_LT(bucket_of(first, "fc2.weight"), bucket_of(first, "branch_a.weight"));

    for (int s = 0; s < steps; ++s) {
      for (int r = 1; r < world; ++r) {
        EXPECT_EQ(seen[r][s].layout, seen[0][s].layout) << "rank " << r << " after step " << s + 1;
        ASSERT_EQ(seen[r][s].params.size(), n_params);
        for (size_t i = 0; i < n_params; ++i) {
          EXPECT_TRUE(testutil::bit_equal(seen[r][s].params[i].second, seen[0][s].params[i].second))
              << "rank " << r << " step " << s + 1 << " " << names[i].first << " drifted";
        }
      }
      for (size_t i = 0; i < n_params; ++i) {
        const size_t numel = static_cast<size_t>(names[i].second.numel());
        std::vector<double> average(numel, 0.0);
        for (int r = 0; r < world; ++r) {
          ASSERT_EQ(seen[r][s].local_grads[i].size(), numel);
          for (size_t k = 0; k < numel; ++k) average[k] += seen[r][s].local_grads[i][k] / world;
        }
        for (int r = 0; r < world; ++r) {
          const std::vector<double>& got = seen[r][s].ddp_grads[i];
          ASSERT_EQ(got.size(), numel)
              << "rank " << r << " step " << s + 1 << " " << names[i].first << " has no gradient";
          double worst = 0;
          for (size_t k = 0; k < numel; ++k)
            worst = std::max(worst, std::fabs(got[k] - average[k]));
          EXPECT_LE(worst, 1e-6) << "rank " << r << " step " << s + 1 << " " << names[i].first;
        }
      }
    }
    // Rank 0 did not use branch_b, yet its averaged gradient there is not zero: the others' share
    // arrived (without it the comparison above could pass on zeros).
    for (size_t i = 0; i < n_params; ++i) {
      if (names[i].first.rfind("branch_b.", 0) != 0) continue;
      double total = 0;
      for (double v : seen[0][0].ddp_grads[i]) total += std::fabs(v);
      EXPECT_GT(total, 0) << names[i].first;
    }
  }
}

TEST(Ddp, StatsSplitAllReduceTimeIntoHiddenAndExposed) {
  Data data(2 * 4 * 3, 14);
  for (bool overlap : {false, true}) {
    for_each_rank(2, [&](std::shared_ptr<dist::Communicator> comm) {
      auto model = make_model(0);
      // One bucket per parameter, so buckets launch while backward continues.
      DistributedDataParallel ddp(*model, comm,
                                  {.bucket_cap_mb = 1e-9,
                                   .bucket_first_cap_mb = 1e-9,
                                   .overlap = overlap,
                                   .collect_stats = true});
      for (int s = 0; s < 3; ++s) {
        auto [x, y] = data.rows(s * 8 + comm->rank() * 4, 4);
        model->zero_grad();
        cross_entropy(ddp.forward(x), y).backward();
        ddp.synchronize_gradients();
      }
      const DdpStats st = ddp.stats();
      EXPECT_EQ(st.steps, 3);
      EXPECT_GT(st.all_reduce_s, 0);
      EXPECT_LE(st.exposed_s, st.all_reduce_s);
      EXPECT_LE(st.exposed_s, st.synchronize_s);
      if (overlap) {
        // Every bucket but the last was issued from a hook, before backward returned.
        EXPECT_GT(st.hidden_fraction(), 0);
      } else {
        // All buckets start in synchronize_gradients: nothing is hidden.
        EXPECT_EQ(st.hidden_fraction(), 0);
      }
      ddp.reset_stats();
      EXPECT_EQ(ddp.stats().steps, 0);
      EXPECT_EQ(ddp.stats().all_reduce_s, 0);
    });
  }
}

TEST(Ddp, Fp16CompressionStaysCloseToFullPrecision) {
  Data data(2 * 4 * 5, 12);
  const auto full = train_ddp(2, 4, 5, data);
  const auto half = train_ddp(2, 4, 5, data, {.comm_hook = "fp16"});
  for (size_t i = 0; i < full[0].size(); ++i) {
    EXPECT_TRUE(testutil::all_close(half[0][i].second, full[0][i].second, 1e-2, 1e-3))
        << full[0][i].first;
  }
}

}  // namespace
}  // namespace dtrain

namespace dtrain {
namespace {

TEST(StrategyRegistry, EveryKindIsFoundByNameAndUnknownNamesListThem) {
  for (const StrategyKind& kind : strategy_kinds()) {
    EXPECT_EQ(&find_strategy(kind.name), &kind);
    StrategyOptions o;
    o.type = std::string(kind.name);
    o.devices = 3;
    EXPECT_EQ(kind.replicas_per_process(o), kind.threads ? 3 : 1) << kind.name;
    auto comm = dist::make_local_group(1)[0];
    EXPECT_EQ(kind.make(o, comm)->name(), kind.name) << "name() is the configured type";
  }
  EXPECT_TRUE(find_strategy("ddp").spans_processes);
  EXPECT_FALSE(find_strategy("mirrored").spans_processes);
  try {
    find_strategy("horovod");
    ADD_FAILURE() << "an unknown strategy was found";
  } catch (const ValueError& e) {
    EXPECT_THAT(e.message(), HasSubstr("unknown strategy 'horovod'; available: single, ddp"));
  }
}

TEST(DataParallelStrategy, ParameterDriftIsReportedNamingTheReplica) {
  std::vector<std::string> errors(3);
  auto comms = dist::make_local_group(3);
  std::vector<std::thread> threads;
  for (int r = 0; r < 3; ++r) {
    threads.emplace_back([&, r] {
      StrategyOptions o;
      o.type = "mirrored";
      DataParallelStrategy strategy(o.type, o, comms[r]);
      EXPECT_EQ(strategy.name(), "mirrored");
      auto model = make_model(0);
      strategy.prepare(*model);
      strategy.check_parameters_in_sync(*model, 10);  // in sync after the broadcast
      if (r == 2) model->named_parameters()[0].second.data<float>()[0] += 1e-3f;
      try {
        strategy.check_parameters_in_sync(*model, 20);
      } catch (const Error& e) {
        errors[r] = e.message();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& e : errors) EXPECT_THAT(e, HasSubstr("drifted apart by step 20: replica(s) 2"));
}

// The per-step agreement carries a digest of every replica's collectives: replicas that issued
// the same calls agree; one that reduced with another op is caught at the next step too, for
// transports that pair whatever the ranks issue (mpi with Open MPI's own reduction order).
TEST(DataParallelStrategy, TheStepAgreementCatchesReplicasThatIssuedDifferentCollectives) {
  for (const bool other_op : {false, true}) {
    std::vector<Strategy::StepAgreement> seen(2);
    // The local backend, tcp's messages and shared memory compare each call themselves (shared
    // memory fails it at entry); the digest still differs at the next step's agreement.
    for_each_tcp_rank(2, [&](dist::HostCommunicator& host) {
      const std::shared_ptr<dist::Communicator> comm(&host, [](dist::Communicator*) {});
      DataParallelStrategy strategy("ddp", StrategyOptions{}, comm);
      EXPECT_TRUE(strategy.start_step_agreement(0)().same_calls);
      // In the ranks' shared memory, where no message carries the call to compare.
      Tensor t = host.allocate_symmetric(4, DType::kFloat32);
      const bool odd = comm->rank() == 1;
      // With other_op, replica 1 reduces with max where replica 0 sums.
      try {
        comm->all_reduce(t, {other_op && odd ? dist::ReduceOp::kMax : dist::ReduceOp::kSum})
            ->wait();
        EXPECT_FALSE(other_op) << "replica " << comm->rank() << " reduced unlike calls";
      } catch (const DistError& e) {
        EXPECT_TRUE(other_op) << e.message();
        EXPECT_THAT(e.message(), HasSubstr("rank 0: sum of 4 float32"));
        EXPECT_THAT(e.message(), HasSubstr("rank 1: max of 4 float32"));
      }
      seen[comm->rank()] = strategy.start_step_agreement(odd ? 1000 : 0)();
    });
    for (int r = 0; r < 2; ++r) {
      EXPECT_EQ(seen[r].same_calls, !other_op) << "replica " << r;
      EXPECT_EQ(seen[r].stop_vote, 1000) << "the largest vote, on every replica";
    }
  }
}

}  // namespace
}  // namespace dtrain
