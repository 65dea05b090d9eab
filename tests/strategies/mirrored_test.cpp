// MirroredStrategy's TensorFlow-shaped API with a DistributedDataset: run(step_fn) on N replica
// threads, each with its share of the global batch, trains like one process with the global batch,
// including the short last batch of every epoch (uneven shares, empty shares run or skipped).
#include "dtrain/strategies/mirrored.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "dtrain/data/distributed_dataset.h"
#include "dtrain/data/synthetic.h"
#include "dtrain/nn/layers.h"
#include "dtrain/nn/optim.h"
#include "dtrain/tensor/cuda/cuda_backend.h"
#include "testutil.h"

namespace dtrain {
namespace {

constexpr int64_t kFeatures = 6, kClasses = 3, kPerReplica = 4;
constexpr int kSteps = 20;
constexpr uint64_t kSeed = 21;

std::shared_ptr<nn::Sequential> make_classifier() {
  Generator gen(5);
  auto model = std::make_shared<nn::Sequential>();
  model->add(std::make_shared<nn::Linear>(kFeatures, 8, true, gen));
  model->add(std::make_shared<nn::Tanh>());
  model->add(std::make_shared<nn::Linear>(8, kClasses, true, gen));
  return model;
}

/// How the epoch's last global batch looks, and what a replica with an empty share does.
enum class Tail {
  kUneven,              // global / 2 + 1 rows: shares differ by one row
  kEmptyShares,         // replicas - 1 rows: the last replica's share is empty; it runs the step
  kEmptySharesSkipped,  // the same, but it skips forward and backward (find_unused_parameters)
};

struct Case {
  int replicas;
  Tail tail;
};

/// A data set the global batch does not divide: four full global batches, then the tail.
data::DatasetPtr make_dataset(const Case& c) {
  const int64_t global = kPerReplica * c.replicas;
  const int64_t tail = c.tail == Tail::kUneven ? global / 2 + 1 : c.replicas - 1;
  return std::make_shared<data::SyntheticDataset>(4 * global + tail, Shape{kFeatures}, kClasses, 3);
}

struct Trained {
  nn::NamedTensors parameters;
  std::vector<double> losses;  // the global batch's mean loss per step
};

/// The reference: one process with the global batch, as the Trainer's data path gives it.
Trained train_one_process(const data::DatasetPtr& dataset, int64_t global,
                          Device device = Device::cpu()) {
  auto model = make_classifier();
  model->to(device);
  nn::SGD opt(model->parameters(), {0.1, 0.9});
  data::DataLoader loader(dataset,
                          data::DistributedSampler(dataset->size(), 1, 0, true, kSeed, false),
                          global, /*drop_last=*/false);
  Trained out;
  for (int64_t epoch = 0; static_cast<int>(out.losses.size()) < kSteps; ++epoch) {
    loader.start_epoch(epoch);
    data::Batch b;
    while (static_cast<int>(out.losses.size()) < kSteps && loader.next(b)) {
      opt.zero_grad();
      Tensor loss = cross_entropy(model->forward(to_device(b.x, device)), to_device(b.y, device));
      loss.backward();
      opt.step();
      out.losses.push_back(loss.item<double>());
    }
  }
  model->to(Device::cpu());
  out.parameters = model->state_dict();
  return out;
}

/// Calls step(batch, s) for the first kSteps global batches, epoch after epoch.
template <class Step>
void for_each_step(data::DistributedDataset& batches, Step&& step) {
  int s = 0;
  for (int64_t epoch = 0; s < kSteps; ++epoch) {
    batches.start_epoch(epoch);
    data::DistributedBatch batch;
    while (s < kSteps && batches.next(batch)) step(batch, s++);
  }
}

/// One SGD optimiser per replica, as the one-process reference uses.
std::vector<std::unique_ptr<nn::SGD>> sgd_per_replica(MirroredStrategy& strategy) {
  std::vector<std::unique_ptr<nn::SGD>> optimizers;
  for (int r = 0; r < strategy.num_replicas_in_sync(); ++r) {
    optimizers.push_back(std::make_unique<nn::SGD>(strategy.replica_model(r).parameters(),
                                                   nn::SgdOptions{0.1, 0.9}));
  }
  return optimizers;
}

/// Replica 0 ends where one process with the global batch does (rtol 1e-5), and every other
/// replica holds replica 0's parameters bit for bit.
void expect_replicas_match(MirroredStrategy& strategy, const Trained& single) {
  const auto trained = strategy.replica_model(0).state_dict();
  for (size_t i = 0; i < single.parameters.size(); ++i) {
    EXPECT_TRUE(testutil::all_close(trained[i].second, single.parameters[i].second, 1e-5, 1e-6))
        << single.parameters[i].first;
    for (int r = 1; r < strategy.num_replicas_in_sync(); ++r) {
      EXPECT_TRUE(
          testutil::bit_equal(strategy.replica_model(r).state_dict()[i].second, trained[i].second))
          << "replica " << r << " " << single.parameters[i].first;
    }
  }
}

class MirroredDistributedData : public ::testing::TestWithParam<Case> {};

TEST_P(MirroredDistributedData, TwentyStepsMatchOneProcessWithTheGlobalBatch) {
  const Case c = GetParam();
  const bool skip_empty = c.tail == Tail::kEmptySharesSkipped;
  const data::DatasetPtr dataset = make_dataset(c);
  const int64_t global = kPerReplica * c.replicas;
  const Trained single = train_one_process(dataset, global);

  auto model = make_classifier();
  DdpOptions ddp_options;
  if (skip_empty) {
    ddp_options.find_unused_parameters = true;  // a skipping replica's zeroed gradients count
    ddp_options.broadcast_buffers = false;      // its forward would not broadcast
  }
  MirroredStrategy strategy(*model, c.replicas, ddp_options);
  auto optimizers = sgd_per_replica(strategy);
  data::DistributedDataset batches(dataset, strategy.num_replicas_in_sync(),
                                   {.global_batch_size = global, .shuffle = true, .seed = kSeed});
  for_each_step(batches, [&](const data::DistributedBatch& batch, int step) {
    const std::vector<double> losses = strategy.run<double>([&](ReplicaContext& ctx) {
      const data::Batch& b = batch.per_replica[ctx.replica];
      const double scale = batch.loss_scale(ctx.replica);
      optimizers[ctx.replica]->zero_grad();
      double weighted = 0;
      if (!(skip_empty && b.y.size(0) == 0)) {
        Tensor loss = cross_entropy(ctx.ddp.forward(b.x), b.y);
        (loss * scale).backward();
        weighted = loss.item<double>() * scale;
      }
      ctx.ddp.synchronize_gradients();
      optimizers[ctx.replica]->step();
      return weighted;
    });
    ASSERT_EQ(static_cast<int>(losses.size()), c.replicas);
    EXPECT_NEAR(MirroredStrategy::reduce(dist::ReduceOp::kAvg, losses), single.losses[step],
                1e-5 * single.losses[step])
        << "step " << step << " (" << batch.global_size << " rows)";
  });
  expect_replicas_match(strategy, single);
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const char* tail = info.param.tail == Tail::kUneven        ? "UnevenTail"
                     : info.param.tail == Tail::kEmptyShares ? "EmptySharesRun"
                                                             : "EmptySharesSkipped";
  return std::to_string(info.param.replicas) + "Replicas" + tail;
}

INSTANTIATE_TEST_SUITE_P(Replicas, MirroredDistributedData,
                         ::testing::Values(Case{2, Tail::kUneven}, Case{3, Tail::kUneven},
                                           Case{4, Tail::kUneven}, Case{2, Tail::kEmptyShares},
                                           Case{3, Tail::kEmptyShares}, Case{4, Tail::kEmptyShares},
                                           Case{3, Tail::kEmptySharesSkipped},
                                           Case{4, Tail::kEmptySharesSkipped}),
                         case_name);

TEST(MirroredDevices, MixedOrRepeatedDevicesAreRefusedByName) {
  auto model = make_classifier();
  try {
    MirroredStrategy strategy(*model, {Device::cpu(), Device::cuda(0)});
    FAIL() << "cpu and cuda:0 were accepted together";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("mix cpu and cuda"), std::string::npos) << e.what();
  }
  try {
    MirroredStrategy strategy(*model, {Device::cuda(0), Device::cuda(1), Device::cuda(0)});
    FAIL() << "cuda:0 was accepted twice";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("cuda:0 twice"), std::string::npos) << e.what();
  }
  EXPECT_EQ(model->device(), Device::cpu()) << "a refused strategy must leave the model alone";
}

TEST(MirroredDevices, GpusThisProcessCannotUseAreRefusedWithTheReason) {
  if (cuda::available() && cuda::device_count() >= 2) {
    GTEST_SKIP() << "this machine has " << cuda::device_count()
                 << " GPUs; the refusal is for builds or machines without them";
  }
  auto model = make_classifier();
  try {
    MirroredStrategy strategy(*model, {Device::cuda(0), Device::cuda(1)});
    FAIL() << "cuda:0 and cuda:1 were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda:1"), std::string::npos) << e.what();
  }
  EXPECT_EQ(model->device(), Device::cpu()) << "a refused strategy must leave the model alone";
}

// On one GPU this still runs DDP through NCCL (a group of one); on two it is the real comparison.
TEST(MirroredDevices, GpusTrainLikeOneGpuWithTheGlobalBatch) {
#if !defined(DTRAIN_HAS_NCCL)
  GTEST_SKIP() << "this build has no nccl backend (configure with CUDA and NCCL present)";
#endif
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  const Case c{std::min(2, cuda::device_count()), Tail::kUneven};
  std::vector<Device> devices;
  for (int r = 0; r < c.replicas; ++r) devices.push_back(Device::cuda(r));
  const data::DatasetPtr dataset = make_dataset(c);
  const int64_t global = kPerReplica * c.replicas;
  const Trained single = train_one_process(dataset, global, Device::cuda(0));

  auto model = make_classifier();
  MirroredStrategy strategy(*model, devices);
  auto optimizers = sgd_per_replica(strategy);
  data::DistributedDataset batches(dataset, c.replicas,
                                   {.global_batch_size = global, .shuffle = true, .seed = kSeed});
  for_each_step(batches, [&](const data::DistributedBatch& batch, int) {
    strategy.run([&](ReplicaContext& ctx) {
      const data::Batch& b = batch.per_replica[ctx.replica];
      optimizers[ctx.replica]->zero_grad();
      Tensor loss =
          cross_entropy(ctx.ddp.forward(to_device(b.x, ctx.device)), to_device(b.y, ctx.device));
      (loss * batch.loss_scale(ctx.replica)).backward();
      ctx.ddp.synchronize_gradients();
      optimizers[ctx.replica]->step();
    });
  });
  for (int r = 0; r < c.replicas; ++r) {
    EXPECT_EQ(strategy.replica_device(r), Device::cuda(r));
    strategy.replica_model(r).to(Device::cpu());
  }
  expect_replicas_match(strategy, single);
}

}  // namespace
}  // namespace dtrain
