// ZeRO-1 (ShardedOptimizer over DDP with reduce_scatter) against plain DDP over thread-ranks: the
// same parameters after 20 steps for N = 2, 3, 4 with SGD-momentum and AdamW, optimiser state of
// about 1/N per replica, the whole state for checkpoints, resume on another number of replicas,
// gradient norms and clipping over the shards.
#include "dtrain/strategies/sharded_optimizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "dtrain/distributed/backends/local/local_communicator.h"
#include "dtrain/nn/clip_grad.h"
#include "dtrain/nn/layers.h"
#include "dtrain/nn/optim.h"
#include "strategies/thread_ranks.h"
#include "testutil.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kIn = 13, kHidden = 17, kClasses = 5;

/// Odd sizes, so buckets split parameters across chunk boundaries and need padding.
std::shared_ptr<nn::Sequential> make_model(uint64_t seed) {
  Generator gen(seed);
  return std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::Linear>(kIn, kHidden, true, gen), std::make_shared<nn::Tanh>(),
      std::make_shared<nn::Linear>(kHidden, kHidden, true, gen), std::make_shared<nn::Tanh>(),
      std::make_shared<nn::Linear>(kHidden, kClasses, true, gen)});
}

/// The data of the whole run: step s uses rows [s * global, (s + 1) * global).
struct Data : testutil::RunData {
  Data(int64_t rows, uint64_t seed) : RunData(rows, kIn, kClasses, seed) {}
};

using testutil::for_each_rank;

std::unique_ptr<nn::Optimizer> make_optimizer(const std::string& kind, nn::Module& model) {
  if (kind == "sgd") return std::make_unique<nn::SGD>(model.parameters(), nn::SgdOptions{0.1, 0.9});
  nn::AdamOptions o;
  o.lr = 0.01;
  o.weight_decay = 0.05;
  return std::make_unique<nn::AdamW>(model.parameters(), o);
}

/// What a replica ends with: parameters, the optimiser's whole state (state_dict of the sharded
/// optimiser when sharded), the elements of state it kept, and the gradient norm of each step.
struct Replica {
  nn::NamedTensors params;
  nn::OptimizerState state;
  int64_t state_elements = 0;
  std::vector<double> norms;
};

struct TrainRun {
  int world = 2;
  int64_t global_batch = 12;
  int first_step = 0, steps = 20;
  bool sharded = true;
  std::string optimizer = "sgd";
  double clip = 0;                                  // clip_grad_norm when > 0
  const nn::NamedTensors* start_params = nullptr;   // else rank 0's seed
  const nn::OptimizerState* start_state = nullptr;  // whole layout
};

std::vector<Replica> train(const TrainRun& run, const Data& data) {
  std::vector<Replica> out(run.world);
  const int64_t batch = run.global_batch / run.world;
  for_each_rank(run.world, [&](std::shared_ptr<dist::Communicator> comm) {
    const int rank = comm->rank();
    auto model = make_model(rank);
    if (run.start_params) model->load_state_dict(*run.start_params);
    DdpOptions options;
    options.reduce_scatter = run.sharded;
    options.bucket_cap_mb = 600.0 / (1024 * 1024);  // several buckets of a few parameters
    options.bucket_first_cap_mb = 300.0 / (1024 * 1024);
    DistributedDataParallel ddp(*model, comm, options);
    auto opt = make_optimizer(run.optimizer, *model);
    std::unique_ptr<ShardedOptimizer> sharded;
    if (run.sharded) sharded = std::make_unique<ShardedOptimizer>(ddp, *opt);
    if (run.start_state) {
      if (sharded)
        sharded->load_state_dict(*run.start_state);
      else
        opt->load_state_dict(*run.start_state);
    }
    Replica& mine = out[rank];
    for (int s = run.first_step; s < run.first_step + run.steps; ++s) {
      auto [x, y] = data.rows(s * run.global_batch + rank * batch, batch);
      opt->zero_grad();
      cross_entropy(ddp.forward(x), y).backward();
      if (sharded) {
        mine.norms.push_back(run.clip > 0 ? sharded->clip_grad_norm_(run.clip)
                                          : sharded->grad_norm());
        sharded->step();
      } else {
        mine.norms.push_back(run.clip > 0 ? nn::clip_grad_norm_(model->parameters(), run.clip)
                                          : nn::grad_norm(model->parameters()));
        opt->step();
      }
    }
    mine.params = model->state_dict();
    for (const auto& [key, t] : opt->state_dict().tensors) mine.state_elements += t.numel();
    mine.state = sharded ? sharded->state_dict() : opt->state_dict();
  });
  return out;
}

int64_t parameter_elements() {
  int64_t n = 0;
  for (const Tensor& p : make_model(0)->parameters()) n += p.numel();
  return n;
}

void expect_params_close(const nn::NamedTensors& actual, const nn::NamedTensors& expected,
                         const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_TRUE(testutil::all_close(actual[i].second, expected[i].second, 1e-5, 1e-6))
        << what << ": " << expected[i].first;
  }
}

void expect_state_close(const nn::OptimizerState& actual, const nn::OptimizerState& expected,
                        const std::string& what) {
  ASSERT_EQ(actual.tensors.size(), expected.tensors.size()) << what;
  for (const auto& [key, t] : expected.tensors) {
    ASSERT_TRUE(actual.tensors.count(key)) << what << ": no " << key;
    EXPECT_TRUE(testutil::all_close(actual.tensors.at(key), t, 1e-5, 1e-6)) << what << ": " << key;
  }
  EXPECT_EQ(actual.scalars, expected.scalars) << what;
}

class ShardedMatchesDdp : public ::testing::TestWithParam<std::tuple<int, std::string>> {};

TEST_P(ShardedMatchesDdp, TwentyStepsGiveTheSameParametersAndWholeState) {
  const auto [world, optimizer] = GetParam();
  Data data(12 * 20, 7);
  TrainRun run;
  run.world = world;
  run.optimizer = optimizer;
  run.sharded = false;
  const std::vector<Replica> plain = train(run, data);
  run.sharded = true;
  const std::vector<Replica> sharded = train(run, data);
  const int64_t elements = parameter_elements();
  const int64_t per_param_buffers = optimizer == "sgd" ? 1 : 2;
  int64_t kept = 0;
  for (int r = 0; r < world; ++r) {
    const std::string who = "rank " + std::to_string(r);
    expect_params_close(sharded[r].params, plain[0].params, who);
    // Replicas hold the same bits after the all-gather.
    for (size_t i = 0; i < sharded[0].params.size(); ++i) {
      EXPECT_TRUE(testutil::bit_equal(sharded[r].params[i].second, sharded[0].params[i].second))
          << who << " " << sharded[0].params[i].first;
    }
    // The whole state, in the unsharded layout, on every replica.
    expect_state_close(sharded[r].state, plain[0].state, who);
    // Each replica kept about 1/N of the state: its chunk of each bucket (padding aside).
    EXPECT_LE(sharded[r].state_elements,
              per_param_buffers * (elements / world + 2 * 5 /*buckets' padding*/))
        << who;
    EXPECT_EQ(plain[r].state_elements, per_param_buffers * elements);
    kept += sharded[r].state_elements;
  }
  EXPECT_EQ(kept, per_param_buffers * elements) << "every element's state is kept exactly once";
}

INSTANTIATE_TEST_SUITE_P(WorldAndOptimizer, ShardedMatchesDdp,
                         ::testing::Combine(::testing::Values(2, 3, 4),
                                            ::testing::Values("sgd", "adamw")),
                         [](const auto& info) {
                           return std::to_string(std::get<0>(info.param)) + "replicas_" +
                                  std::get<1>(info.param);
                         });

class ShardedResume : public ::testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(ShardedResume, OnAnotherNumberOfReplicasContinuesLikeTheUninterruptedRun) {
  const auto [before, after] = GetParam();
  Data data(12 * 20, 11);
  TrainRun whole;
  whole.world = before;
  whole.optimizer = "adamw";
  const std::vector<Replica> uninterrupted = train(whole, data);

  TrainRun first = whole;
  first.steps = 10;
  const std::vector<Replica> stopped = train(first, data);
  TrainRun second = whole;
  second.world = after;
  second.first_step = 10;
  second.steps = 10;
  second.start_params = &stopped[0].params;
  second.start_state = &stopped[0].state;
  const std::vector<Replica> resumed = train(second, data);
  for (int r = 0; r < after; ++r) {
    expect_params_close(resumed[r].params, uninterrupted[0].params,
                        "resumed rank " + std::to_string(r));
    expect_state_close(resumed[r].state, uninterrupted[0].state,
                       "resumed rank " + std::to_string(r));
  }
}

INSTANTIATE_TEST_SUITE_P(Worlds, ShardedResume,
                         ::testing::Values(std::make_tuple(2, 3), std::make_tuple(3, 2)),
                         [](const auto& info) {
                           return std::to_string(std::get<0>(info.param)) + "to" +
                                  std::to_string(std::get<1>(info.param));
                         });

TEST(ShardedOptimizer, GradientNormAndClippingAreComputedOverTheShards) {
  Data data(12 * 20, 5);
  TrainRun run;
  run.world = 3;
  run.clip = 0.2;  // below the early norms, so clipping changes the updates
  run.sharded = false;
  const std::vector<Replica> plain = train(run, data);
  run.sharded = true;
  const std::vector<Replica> sharded = train(run, data);
  ASSERT_EQ(plain[0].norms.size(), 20u);
  EXPECT_GT(plain[0].norms[0], run.clip);
  for (int r = 0; r < run.world; ++r) {
    for (size_t s = 0; s < plain[0].norms.size(); ++s) {
      EXPECT_NEAR(sharded[r].norms[s], plain[0].norms[s], 1e-6 * plain[0].norms[s])
          << "rank " << r << " step " << s;
    }
    expect_params_close(sharded[r].params, plain[0].params, "rank " + std::to_string(r));
  }
}

TEST(ShardedOptimizer, NeedsAReduceScatteringDdpAndEveryParameter) {
  auto comm = dist::make_local_group(1)[0];
  auto model = make_model(0);
  DistributedDataParallel plain(*model, comm);
  nn::SGD opt(model->parameters(), {0.1});
  EXPECT_THROW(
      {
        try {
          ShardedOptimizer s(plain, opt);
        } catch (const Error& e) {
          EXPECT_THAT(e.message(), HasSubstr("reduce_scatter"));
          throw;
        }
      },
      Error);
  auto other = make_model(1);
  DdpOptions o;
  o.reduce_scatter = true;
  DistributedDataParallel ddp(*model, comm, o);
  nn::SGD part({model->parameters()[0]}, {0.1});
  EXPECT_THROW(ShardedOptimizer(ddp, part), Error);
  nn::SGD foreign(other->parameters(), {0.1});
  EXPECT_THROW(ShardedOptimizer(ddp, foreign), Error);
  // A step before any gradient was reduced says what to do first.
  ShardedOptimizer sharded(ddp, opt);
  try {
    sharded.step();
    FAIL() << "a step before any backward must throw";
  } catch (const Error& e) {
    EXPECT_THAT(e.message(), HasSubstr("backward"));
  }
}

TEST(OptimizerShard, StateIsCutToTheOwnedElementsAndUpdatesOnlyThem) {
  Tensor w = zeros({2, 3});
  w.set_requires_grad(true);
  nn::SGD opt({w}, {1.0, 0.5});
  w.set_grad(full({2, 3}, 1.0));
  opt.step();  // momentum buffer: all ones
  opt.shard({{2, 5}});
  const auto state = opt.state_dict();
  ASSERT_EQ(state.tensors.at("0.momentum_buffer").shape(), (Shape{3}));
  w.set_grad(full({2, 3}, 1.0));
  opt.step();
  // Elements 2..4 moved by lr * (0.5 * 1 + 1); the others only by the first step.
  EXPECT_EQ(w.to_vector<float>(), (std::vector<float>{-1, -1, -2.5, -2.5, -2.5, -1}));
  EXPECT_THROW(opt.shard({{0, 6}}), Error);  // already sharded differently
  EXPECT_NO_THROW(opt.shard({{2, 5}}));      // the same ranges again
  nn::SGD bad({w}, {1.0});
  EXPECT_THROW(bad.shard({{4, 7}}), Error);          // past the parameter's end
  EXPECT_THROW(bad.shard({{0, 1}, {1, 2}}), Error);  // one range per parameter
}

}  // namespace
}  // namespace dtrain
