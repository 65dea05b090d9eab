// DistributedDataParallel over thread-ranks (local backend): N replicas x batch B must train like
// one process with batch N*B; no_sync, unused parameters, mismatched models, bucket rebuilds and
// compression hooks.
#include "strategies/ddp.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>
#include <thread>

#include "distributed/backends/local/local_communicator.h"
#include "distributed/registry.h"
#include "distributed/tcp_ranks.h"
#include "nn/layers.h"
#include "nn/optim.h"
#include "strategies/ddp_strategy.h"
#include "tensor/cuda/cuda_backend.h"
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
struct Data {
  Tensor x, y;
  Data(int64_t rows, uint64_t seed) {
    Generator gen(seed, 3);
    x = randn({rows, kIn}, gen);
    y = randint(0, kClasses, {rows}, gen);
  }
  std::pair<Tensor, Tensor> rows(int64_t begin, int64_t count) const {
    return {ops::slice(x, 0, begin, begin + count).clone(),
            ops::slice(y, 0, begin, begin + count).clone()};
  }
};

void for_each_rank(int world,
                   const std::function<void(std::shared_ptr<dist::Communicator>)>& body) {
  auto comms = dist::make_local_group(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) threads.emplace_back([&, r] { body(comms[r]); });
  for (auto& t : threads) t.join();
}

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
/// 0's).
std::vector<nn::NamedTensors> train_ddp(int world, int64_t batch, int steps, const Data& data,
                                        DdpOptions options = {}) {
  std::vector<nn::NamedTensors> out(world);
  for_each_rank(world, [&](std::shared_ptr<dist::Communicator> comm) {
    auto model = make_model(comm->rank());
    DistributedDataParallel ddp(*model, comm, options);
    nn::SGD opt(model->parameters(), {0.1, 0.9});
    for (int s = 0; s < steps; ++s) {
      auto [x, y] = data.rows(s * batch * world + comm->rank() * batch, batch);
      opt.zero_grad();
      cross_entropy(ddp.forward(x), y).backward();
      ddp.synchronize_gradients();
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
  for_each_tcp_rank(world, [&](dist::AsyncCommunicator& comm) {
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
      dist::init_gpu_job_from_env();
      ADD_FAILURE() << "a GPU job started without a GPU";
    } catch (const UnsupportedError& e) {
      EXPECT_THAT(e.message(), HasSubstr("a GPU job needs"));
    }
    GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  }
  const Data data(5 * 8, 9);
  dist::GpuJob job = dist::init_gpu_job_from_env();
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
    cross_entropy(ddp.forward(x), y).backward();
    try {
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

TEST(DdpStrategy, ParameterDriftIsReportedNamingTheReplica) {
  std::vector<std::string> errors(3);
  auto comms = dist::make_local_group(3);
  std::vector<std::thread> threads;
  for (int r = 0; r < 3; ++r) {
    threads.emplace_back([&, r] {
      StrategyOptions o;
      o.type = "mirrored";
      DdpStrategy strategy(o, comms[r]);
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

}  // namespace
}  // namespace dtrain
