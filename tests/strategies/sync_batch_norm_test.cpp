// SyncBatchNorm over thread-ranks (local backend): N replicas, each with its slice of a batch,
// against one BatchNorm over the whole batch — outputs, input and parameter gradients and running
// statistics to 1e-5 — for N = 2, 3, 4, [N, C] and [N, C, H, W]; then DDP with SyncBatchNorm
// against one process training on the global batch.
#include "dtrain/strategies/sync_batch_norm.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "dtrain/distributed/backends/local/local_communicator.h"
#include "dtrain/nn/optim.h"
#include "dtrain/strategies/ddp.h"
#include "strategies/thread_ranks.h"
#include "testutil.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;

using testutil::for_each_rank;

/// What one BatchNorm forward/backward leaves: the output, the input's gradient, the
/// parameters' gradients and the running statistics after two training steps.
struct Pass {
  Tensor y, dx, dweight, dbias, running_mean, running_var;
};

/// Two training forwards (the running statistics move twice) and one backward of
/// sum(y * probe), on `bn` over `x`.
Pass run_pass(nn::BatchNorm& bn, const Tensor& x_values, const Tensor& probe) {
  Tensor x = x_values.clone();
  x.set_requires_grad(true);
  bn.forward(x_values);  // first step: statistics only
  Tensor y = bn.forward(x);
  sum(y * probe).backward();
  return {y.detach(),
          x.grad(),
          bn.weight.grad(),
          bn.bias.grad(),
          bn.running_mean.clone(),
          bn.running_var.clone()};
}

class SyncBatchNormMatchesOneBatch : public ::testing::TestWithParam<std::tuple<int, int>> {
};  // replicas, spatial dims

TEST_P(SyncBatchNormMatchesOneBatch, ForwardGradientsAndRunningStatistics) {
  // Plain variables: lambdas below capture them (clang refuses captured structured bindings).
  const int world = std::get<0>(GetParam()), spatial = std::get<1>(GetParam());
  const int64_t channels = 3, rows = 4;  // per replica
  Shape shape = {rows * world, channels};
  if (spatial == 2) shape = {rows * world, channels, 5, 3};
  Generator gen(17);
  // An offset mean, so a variance taken around the wrong mean shows.
  const Tensor x = randn(shape, gen) * 2.0 + 3.0;
  const Tensor probe = randn(shape, gen);
  Generator wgen(5);
  auto make_bn = [&] {
    auto bn = std::make_shared<nn::BatchNorm>(channels, spatial);
    bn->weight.detach().copy_(randn({channels}, wgen));
    bn->bias.detach().copy_(randn({channels}, wgen));
    return bn;
  };
  auto whole_bn = make_bn();
  const Pass whole = run_pass(*whole_bn, x, probe);
  std::vector<Pass> parts(world);
  for_each_rank(world, [&](std::shared_ptr<dist::Communicator> comm) {
    const int r = comm->rank();
    Generator same(5);
    auto bn = std::make_shared<nn::SyncBatchNorm>(channels, spatial, comm);
    bn->weight.detach().copy_(randn({channels}, same));
    bn->bias.detach().copy_(randn({channels}, same));
    parts[r] = run_pass(*bn, ops::slice(x, 0, r * rows, (r + 1) * rows).clone(),
                        ops::slice(probe, 0, r * rows, (r + 1) * rows).clone());
  });
  Tensor dweight = zeros({channels}), dbias = zeros({channels});
  for (int r = 0; r < world; ++r) {
    const std::string who = "replica " + std::to_string(r);
    EXPECT_TRUE(testutil::all_close(parts[r].y, ops::slice(whole.y, 0, r * rows, (r + 1) * rows),
                                    1e-5, 1e-5))
        << who;
    EXPECT_TRUE(testutil::all_close(parts[r].dx, ops::slice(whole.dx, 0, r * rows, (r + 1) * rows),
                                    1e-5, 1e-5))
        << who;
    // The running statistics follow the global batch, identically on every replica.
    EXPECT_TRUE(testutil::all_close(parts[r].running_mean, whole.running_mean, 1e-5, 1e-6)) << who;
    EXPECT_TRUE(testutil::all_close(parts[r].running_var, whole.running_var, 1e-5, 1e-6)) << who;
    EXPECT_TRUE(testutil::bit_equal(parts[r].running_var, parts[0].running_var)) << who;
    dweight = dweight + parts[r].dweight;
    dbias = dbias + parts[r].dbias;
  }
  // Each replica's parameter gradient is its own part; their sum is the whole batch's.
  EXPECT_TRUE(testutil::all_close(dweight, whole.dweight, 1e-5, 1e-5));
  EXPECT_TRUE(testutil::all_close(dbias, whole.dbias, 1e-5, 1e-5));
  // A plain BatchNorm per replica would differ: the test can tell.
  auto plain = make_bn();
  Generator again(5);
  plain->weight.detach().copy_(randn({channels}, again));
  plain->bias.detach().copy_(randn({channels}, again));
  const Pass alone =
      run_pass(*plain, ops::slice(x, 0, 0, rows).clone(), ops::slice(probe, 0, 0, rows).clone());
  EXPECT_FALSE(testutil::all_close(alone.y, ops::slice(whole.y, 0, 0, rows), 1e-5, 1e-5));
}

INSTANTIATE_TEST_SUITE_P(ReplicasAndShape, SyncBatchNormMatchesOneBatch,
                         ::testing::Combine(::testing::Values(2, 3, 4), ::testing::Values(0, 2)),
                         [](const auto& info) {
                           return std::to_string(std::get<0>(info.param)) + "replicas_" +
                                  (std::get<1>(info.param) == 2 ? "NCHW" : "NC");
                         });

std::shared_ptr<nn::Sequential> make_bn_model(uint64_t seed) {
  Generator gen(seed);
  return std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::Linear>(6, 8, true, gen), std::make_shared<nn::BatchNorm1d>(8),
      std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(8, 3, true, gen)});
}

TEST(SyncBatchNorm, DdpReplicasTrainLikeOneProcessOnTheGlobalBatch) {
  const int world = 3, steps = 10;
  const int64_t batch = 4;
  Generator gen(3, 1);
  const Tensor x = randn({world * batch * steps, 6}, gen);
  const Tensor y = randint(0, 3, {world * batch * steps}, gen);
  auto rows = [&](const Tensor& t, int64_t begin, int64_t n) {
    return ops::slice(t, 0, begin, begin + n).clone();
  };
  auto single = make_bn_model(0);
  nn::SGD single_opt(single->parameters(), {0.1, 0.9});
  for (int s = 0; s < steps; ++s) {
    single_opt.zero_grad();
    cross_entropy(single->forward(rows(x, s * world * batch, world * batch)),
                  rows(y, s * world * batch, world * batch))
        .backward();
    single_opt.step();
  }
  std::vector<nn::NamedTensors> states(world);
  for_each_rank(world, [&](std::shared_ptr<dist::Communicator> comm) {
    auto model = make_bn_model(comm->rank());
    EXPECT_EQ(nn::convert_sync_batch_norm(*model, comm), 1);
    DistributedDataParallel ddp(*model, comm);
    nn::SGD opt(model->parameters(), {0.1, 0.9});
    for (int s = 0; s < steps; ++s) {
      const int64_t at = s * world * batch + comm->rank() * batch;
      opt.zero_grad();
      cross_entropy(ddp.forward(rows(x, at, batch)), rows(y, at, batch)).backward();
      opt.step();
    }
    states[comm->rank()] = model->state_dict();
  });
  const nn::NamedTensors expected = single->state_dict();
  for (int r = 0; r < world; ++r) {
    for (size_t i = 0; i < expected.size(); ++i) {
      if (expected[i].second.dtype() != DType::kFloat32) continue;  // num_batches_tracked
      EXPECT_TRUE(testutil::all_close(states[r][i].second, expected[i].second, 1e-5, 1e-5))
          << "replica " << r << " " << expected[i].first;
    }
  }
}

TEST(SyncBatchNorm, OneValuePerChannelInTheGlobalBatchIsAnErrorNamingTheLayer) {
  for_each_rank(1, [&](std::shared_ptr<dist::Communicator> comm) {
    nn::SyncBatchNorm bn(2, 0, comm);
    try {
      bn.forward(ones({1, 2}));
      ADD_FAILURE() << "one row cannot give batch statistics";
    } catch (const Error& e) {
      EXPECT_THAT(e.message(), HasSubstr("SyncBatchNorm1d(2)"));
      EXPECT_THAT(e.message(), HasSubstr("more than one"));
    }
  });
}

}  // namespace
}  // namespace dtrain
