// Slow end to end: the committed Fashion-MNIST MLP config trains to its published accuracy through
// the real dtrain command (ctest label `slow`; about 10-20 s on two threads).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <regex>
#include <string>

#include "cli/run_util.h"
#include "train/scratch_dir.h"

namespace dtrain {
namespace {

constexpr char kFashionMnistDir[] = "/usr/share/datasets/fashion-mnist";

/// The test accuracy of a run's final line (the test fails when there is none).
double final_accuracy(const testutil::CommandResult& r) {
  std::smatch m;
  const std::regex final_line("(^|\n)final: test_accuracy=([0-9.]+) ");
  if (!std::regex_search(r.output, m, final_line)) {
    ADD_FAILURE() << "no final line in:\n" << r.output;
    return 0;
  }
  return std::stod(m[2]);
}

std::string mlp_config() {
  std::string quoted = "'";
  quoted += testutil::source_path("configs/fashion_mnist_mlp.yaml");
  quoted += "'";
  return quoted;
}

TEST(SlowEndToEnd, FashionMnistMlpReachesPublishedAccuracy) {
  if (!std::filesystem::exists(kFashionMnistDir)) {
    GTEST_SKIP() << kFashionMnistDir << " is missing (apt-get install dataset-fashion-mnist)";
  }
  testutil::ScratchDir dir;
  const auto r = testutil::run_dtrain(
      "train " + mlp_config() + " log.progress=off train.resume=never train.threads=2",
      dir.path().string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // The published MLP baseline is 0.883; the config's 10 epochs reach about 0.89.
  EXPECT_GE(final_accuracy(r), 0.885);
}

// Two replicas (global batch 128) reach the same target: as two mpirun processes (ddp) and as two
// threads of one process (mirrored), with identical results.
TEST(SlowEndToEnd, FashionMnistMlpWithTwoReplicasReachesTheTargetToo) {
  if (!std::filesystem::exists(kFashionMnistDir)) {
    GTEST_SKIP() << kFashionMnistDir << " is missing (apt-get install dataset-fashion-mnist)";
  }
  if (!testutil::mpirun_available()) {
    GTEST_SKIP() << "mpirun is not installed (scripts/setup.sh installs openmpi-bin)";
  }
  testutil::ScratchDir ddp_dir, mirrored_dir;
  const auto ddp = testutil::run_dtrain_mpirun(
      2,
      "train " + mlp_config() +
          " strategy.type=ddp log.progress=off train.resume=never train.threads=1",
      ddp_dir.path().string());
  ASSERT_EQ(ddp.exit_code, 0) << ddp.output;
  const auto mirrored = testutil::run_dtrain(
      "train " + mlp_config() +
          " strategy.type=mirrored strategy.devices=2 log.progress=off train.resume=never "
          "train.threads=1",
      mirrored_dir.path().string());
  ASSERT_EQ(mirrored.exit_code, 0) << mirrored.output;
  EXPECT_GE(final_accuracy(ddp), 0.885);
  EXPECT_EQ(final_accuracy(ddp), final_accuracy(mirrored));
}

}  // namespace
}  // namespace dtrain
