// docs/cluster.md's promise that the same number of workers trains the same bits however the job
// is started: `dtrain launch` (the tcp backend) and mpirun (the mpi backend) with 2, 3 and 4
// workers. From 3 ranks on this needs the mpi backend's rank-ordered reductions: Open MPI's own
// order (DTRAIN_MPI_REDUCTION_ORDER=native) sums in another order and fails it.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <regex>
#include <string>

#include "cli/launch_util.h"
#include "cli/run_util.h"
#include "dtrain/train/checkpoint.h"
#include "train/scratch_dir.h"

namespace dtrain {
namespace {

using testutil::CommandResult;

// 20 steps of ddp, checkpointed at the last one; one kernel thread per worker everywhere (the
// thread count changes the bits, docs/cluster.md).
constexpr char kConfig[] = R"(model: {type: mlp, hidden: [64]}
data:
  name: synthetic
  synthetic_train_size: 4000
  synthetic_test_size: 500
  synthetic_shape: [1, 28, 28]
  synthetic_classes: 10
optimizer: {type: sgd, lr: 0.05, momentum: 0.9}
train: {epochs: 1, max_steps: 20, batch_size: 32, seed: 3, checkpoint_dir: checkpoints,
        checkpoint_every_steps: 20, resume: never, threads: 1}
strategy: {type: ddp}
log: {progress: off, tensorboard: false}
)";
constexpr int64_t kSteps = 20;

std::string final_fields(const std::string& output) {
  std::smatch m;
  static const std::regex re("final: test_accuracy=[0-9.]+ test_loss=[0-9.]+ steps=[0-9]+");
  return std::regex_search(output, m, re) ? m.str() : "";
}

/// The tensor bytes of the run's last checkpoint, exported to safetensors.
std::string final_weights(const std::filesystem::path& dir) {
  const std::string ckpt = train::checkpoint_path("checkpoints", kSteps);
  const CommandResult e = testutil::run_dtrain("export " + ckpt + " -o model.safetensors", dir);
  EXPECT_EQ(e.exit_code, 0) << e.output;
  return testutil::safetensors_data(testutil::read_file(dir / "model.safetensors"));
}

class SameBits : public ::testing::TestWithParam<int> {};

TEST_P(SameBits, LaunchAndMpirunTrainByteIdenticalWeights) {
  if (!testutil::mpirun_available()) {
    GTEST_SKIP() << "mpirun is not installed (scripts/setup.sh installs openmpi-bin)";
  }
  const int workers = GetParam();
  testutil::ScratchDir root;
  const auto launch = root.path() / "launch", mpirun = root.path() / "mpirun";
  for (const auto& dir : {launch, mpirun}) {
    std::filesystem::create_directories(dir);
    testutil::write_bytes((dir / "run.yaml").string(), kConfig);
  }
  const std::string job = testutil::unique_job("same-bits");
  const CommandResult l =
      testutil::run_shell("DTRAIN_TEST_JOB=" + job + " timeout -s KILL 300 '" + DTRAIN_EXECUTABLE +
                              "' launch --nproc-per-node " + std::to_string(workers) + " run.yaml",
                          launch.string());
  ASSERT_EQ(l.exit_code, 0) << l.output;
  const CommandResult m = testutil::run_dtrain_mpirun(workers, "train run.yaml", mpirun.string());
  ASSERT_EQ(m.exit_code, 0) << m.output;
  EXPECT_THAT(final_fields(l.output), ::testing::EndsWith("steps=" + std::to_string(kSteps)));
  EXPECT_EQ(final_fields(l.output), final_fields(m.output));
  const std::string a = final_weights(launch), b = final_weights(mpirun);
  EXPECT_FALSE(a.empty());
  EXPECT_TRUE(a == b) << "final weights of " << workers
                      << " workers differ between dtrain launch and mpirun";
  testutil::expect_no_process_left(job);
}

INSTANTIATE_TEST_SUITE_P(Workers, SameBits, ::testing::Values(2, 3, 4));

}  // namespace
}  // namespace dtrain
