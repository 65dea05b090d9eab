// strategy.bucket_cap_mb: auto over thread-ranks: every replica runs the same trials, agrees on
// the cap with the least exposed communication, and trains bit-identically to a fixed cap (the
// buckets group the same per-element sums differently, nothing more).
#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "dtrain/distributed/backends/local/local_communicator.h"
#include "dtrain/nn/layers.h"
#include "dtrain/nn/optim.h"
#include "dtrain/strategies/data_parallel.h"
#include "strategies/thread_ranks.h"
#include "testutil.h"

namespace dtrain {
namespace {

constexpr int64_t kIn = 16, kWide = 640, kClasses = 4;

/// About 3.3 MiB of parameters: the trial caps group them differently.
std::shared_ptr<nn::Sequential> make_model() {
  Generator gen(9);
  return std::make_shared<nn::Sequential>(std::initializer_list<nn::ModulePtr>{
      std::make_shared<nn::Linear>(kIn, kWide, true, gen), std::make_shared<nn::Tanh>(),
      std::make_shared<nn::Linear>(kWide, kWide, true, gen), std::make_shared<nn::Tanh>(),
      std::make_shared<nn::Linear>(kWide, kWide, true, gen), std::make_shared<nn::Tanh>(),
      std::make_shared<nn::Linear>(kWide, kClasses, true, gen)});
}

struct ReplicaResult {
  nn::NamedTensors params;
  std::vector<BucketCapTrial> trials;
  double cap = 0;
  std::vector<std::vector<std::string>> layout;
  std::string message;
};

std::vector<ReplicaResult> train(int world, bool tune, int steps) {
  std::vector<ReplicaResult> out(world);
  testutil::for_each_rank(world, [&](std::shared_ptr<dist::Communicator> comm) {
    const int r = comm->rank();
    StrategyOptions o;
    o.bucket_cap_auto = tune;
    DataParallelStrategy strategy("ddp", o, comm);
    auto model = make_model();
    strategy.prepare(*model);
    nn::SGD opt(model->parameters(), {0.05, 0.9});
    Generator gen(100 + r, 1);
    for (int s = 0; s < steps; ++s) {
      opt.zero_grad();
      cross_entropy(strategy.forward(*model, randn({8, kIn}, gen)), randint(0, kClasses, {8}, gen))
          .backward();
      strategy.synchronize_gradients(*model);
      strategy.step_optimizer(opt);
      const std::string m = strategy.take_message();
      if (!m.empty()) out[r].message = m;
    }
    out[r].params = model->state_dict();
    out[r].trials = strategy.bucket_cap_trials();
    out[r].cap = strategy.bucket_cap_mb();
  });
  return out;
}

TEST(BucketCapAuto, ReplicasRunTheSameTrialsKeepTheBestAndTrainLikeAFixedCap) {
  constexpr size_t kTrials = std::size(DataParallelStrategy::kBucketCapTrials);
  const int steps = DataParallelStrategy::kWarmupSteps +
                    static_cast<int>(kTrials) * DataParallelStrategy::kStepsPerTrial + 3;
  const auto tuned = train(2, true, steps);
  const auto fixed = train(2, false, steps);
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(tuned[r].trials.size(), kTrials) << "replica " << r;
    double best = tuned[r].trials[0].exposed_ms;
    for (size_t i = 0; i < kTrials; ++i) {
      EXPECT_EQ(tuned[r].trials[i].cap_mb, DataParallelStrategy::kBucketCapTrials[i]);
      // The agreed (averaged) times are the same on every replica.
      EXPECT_EQ(tuned[r].trials[i].exposed_ms, tuned[0].trials[i].exposed_ms);
      EXPECT_GE(tuned[r].trials[i].exposed_ms, 0);
      best = std::min(best, tuned[r].trials[i].exposed_ms);
    }
    bool kept_best = false;
    for (const BucketCapTrial& t : tuned[r].trials)
      kept_best = kept_best || (t.cap_mb == tuned[r].cap && t.exposed_ms == best);
    EXPECT_TRUE(kept_best) << "replica " << r << " kept " << tuned[r].cap << " MiB";
    EXPECT_EQ(tuned[r].cap, tuned[0].cap);
    for (size_t i = 0; i < fixed[0].params.size(); ++i) {
      EXPECT_TRUE(testutil::bit_equal(tuned[r].params[i].second, fixed[0].params[i].second))
          << "replica " << r << " " << fixed[0].params[i].first;
    }
  }
  EXPECT_NE(tuned[0].message.find("keeping"), std::string::npos) << tuned[0].message;
  EXPECT_TRUE(tuned[1].message.empty()) << "only the primary reports";
  EXPECT_TRUE(fixed[0].trials.empty());
}

}  // namespace
}  // namespace dtrain
