// strategy.shard_optimizer (ZeRO-1) end to end through the real dtrain executable: 3 replicas
// sharded train like 3 unsharded ones and checkpoint the whole optimiser state; a sharded run
// stopped on 3 replicas resumes on 2 (sharded or not) like the uninterrupted run; 3 mpirun ranks
// match 3 mirrored threads; single refuses the key. Every run is small and bounded by `timeout`.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "cli/checkpoint_compare.h"
#include "cli/run_util.h"
#include "dtrain/train/checkpoint.h"
#include "train/scratch_dir.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;
using testutil::CommandResult;

constexpr int kRunLimitS = 120;
constexpr int64_t kSteps = 40;  // 3 replicas x 16 = 48 rows a step; 2 replicas x 24 on resume

// AdamW with weight decay: two state buffers per parameter and a per-parameter step count.
constexpr char kConfig[] =
    "model:\n"
    "  type: mlp\n"
    "  hidden: [37, 19]\n"
    "data:\n"
    "  name: synthetic\n"
    "  synthetic_train_size: 3072\n"
    "  synthetic_test_size: 256\n"
    "  synthetic_shape: [23]\n"
    "optimizer:\n"
    "  type: adamw\n"
    "  lr: 0.003\n"
    "  weight_decay: 0.05\n"
    "train:\n"
    "  max_steps: 40\n"
    "  batch_size: 16\n"
    "  resume: auto\n"
    "  checkpoint_dir: checkpoints\n"
    "log:\n"
    "  dir: runs\n"
    "  progress: off\n"
    "strategy:\n"
    "  bucket_cap_mb: 0.002\n";  // several buckets, parameters split across the chunks

class RunDir : public testutil::ScratchDir {
 public:
  RunDir() { testutil::write_bytes(*this / "run.yaml", kConfig); }
  CommandResult train(const std::string& overrides) const {
    return testutil::run_dtrain_bounded(kRunLimitS, "train run.yaml " + overrides, path().string());
  }
  std::string checkpoint(int64_t step) const {
    return (path() / "checkpoints" /
            std::filesystem::path(train::checkpoint_path("checkpoints", step)).filename())
        .string();
  }
};

/// The model and the whole optimiser state of two checkpoints agree within `tolerance`.
void expect_same_model_and_optimizer(const std::string& a_path, const std::string& b_path,
                                     double tolerance) {
  testutil::expect_same_model(a_path, b_path, tolerance);
  const train::CheckpointData a = train::load_checkpoint(a_path);
  const train::CheckpointData b = train::load_checkpoint(b_path);
  ASSERT_EQ(a.optimizer_tensors.size(), b.optimizer_tensors.size());
  ASSERT_FALSE(a.optimizer_tensors.empty());
  for (const auto& [key, t] : a.optimizer_tensors) {
    ASSERT_TRUE(b.optimizer_tensors.count(key)) << key;
    EXPECT_LE(testutil::max_abs_difference(t, b.optimizer_tensors.at(key)), tolerance) << key;
  }
  EXPECT_EQ(a.optimizer_scalars, b.optimizer_scalars);
}

constexpr char kMirrored3[] = "strategy.type=mirrored strategy.devices=3 ";

TEST(ShardOptimizer, ThreeMirroredReplicasTrainLikeUnshardedAndCheckpointTheWholeState) {
  RunDir plain, sharded;
  const CommandResult p = plain.train(std::string(kMirrored3) + "strategy.shard_optimizer=false");
  ASSERT_EQ(p.exit_code, 0) << p.output;
  const CommandResult s = sharded.train(std::string(kMirrored3) + "strategy.shard_optimizer=true");
  ASSERT_EQ(s.exit_code, 0) << s.output;
  expect_same_model_and_optimizer(plain.checkpoint(kSteps), sharded.checkpoint(kSteps), 1e-5);
}

TEST(ShardOptimizer, AShardedRunStoppedOnThreeReplicasResumesOnTwoLikeTheUninterruptedRun) {
  RunDir straight, to_sharded, to_plain;
  const std::string sharded3 = std::string(kMirrored3) + "strategy.shard_optimizer=true ";
  const CommandResult a = straight.train(sharded3);
  ASSERT_EQ(a.exit_code, 0) << a.output;
  for (const RunDir* d : {&to_sharded, &to_plain}) {
    const CommandResult first = d->train(sharded3 + "train.stop_at_step=17");
    ASSERT_EQ(first.exit_code, 0) << first.output;
  }
  const CommandResult b =
      to_sharded.train("strategy.type=mirrored strategy.devices=2 strategy.shard_optimizer=true");
  ASSERT_EQ(b.exit_code, 0) << b.output;
  EXPECT_THAT(b.output, HasSubstr("resuming a run of 3 replicas on 2: global batch 48 kept"));
  expect_same_model_and_optimizer(straight.checkpoint(kSteps), to_sharded.checkpoint(kSteps), 1e-5);
  // The whole layout also resumes unsharded.
  const CommandResult c =
      to_plain.train("strategy.type=mirrored strategy.devices=2 strategy.shard_optimizer=false");
  ASSERT_EQ(c.exit_code, 0) << c.output;
  expect_same_model_and_optimizer(straight.checkpoint(kSteps), to_plain.checkpoint(kSteps), 1e-5);
}

TEST(ShardOptimizer, ThreeMpirunRanksMatchThreeMirroredReplicas) {
  if (!testutil::mpirun_available()) {
    GTEST_SKIP() << "mpirun is not installed (scripts/setup.sh installs openmpi-bin)";
  }
  RunDir mirrored, mpi;
  const CommandResult m = mirrored.train(std::string(kMirrored3) + "strategy.shard_optimizer=true");
  ASSERT_EQ(m.exit_code, 0) << m.output;
  const CommandResult r = testutil::run_dtrain_mpirun(
      3, "train run.yaml strategy.type=ddp strategy.shard_optimizer=true", mpi.path().string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  expect_same_model_and_optimizer(mirrored.checkpoint(kSteps), mpi.checkpoint(kSteps), 1e-5);
}

TEST(ShardOptimizer, OneReplicaRefusesTheKeyNamingIt) {
  RunDir d;
  const CommandResult r = d.train("strategy.shard_optimizer=true");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("strategy.shard_optimizer"));
  EXPECT_THAT(r.output, HasSubstr("strategy.type single has one replica"));
  EXPECT_FALSE(std::filesystem::exists(
      d.path() / "checkpoints" /
      std::filesystem::path(train::checkpoint_path("c", kSteps)).filename()));
}

}  // namespace
}  // namespace dtrain
