// train.precision end to end through the real dtrain executable: bf16 and fp16 train the MLP to
// float32's accuracy with other bits; fp16's loss scaler skips and counts overflowing steps,
// writes them to metrics.jsonl and resumes exactly; an unknown precision is refused.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <regex>
#include <sstream>
#include <string>

#include "cli/checkpoint_compare.h"
#include "cli/run_util.h"
#include "dtrain/train/checkpoint.h"
#include "train/scratch_dir.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;
using testutil::CommandResult;

constexpr char kConfig[] =
    "model: {type: mlp, hidden: [64, 32]}\n"
    "data: {name: synthetic, synthetic_train_size: 4096, synthetic_test_size: 1024, "
    "synthetic_shape: [32]}\n"
    "optimizer: {type: adam, lr: 0.003}\n"
    "train: {epochs: 2, batch_size: 32, resume: auto, checkpoint_dir: checkpoints, threads: 1}\n"
    "log: {dir: runs, progress: off, every_steps: 16}\n";
constexpr int64_t kSteps = 256;

class RunDir : public testutil::ScratchDir {
 public:
  RunDir() { testutil::write_bytes(*this / "run.yaml", kConfig); }
  CommandResult train(const std::string& overrides) const {
    return testutil::run_dtrain_bounded(120, "train run.yaml " + overrides, path().string());
  }
  std::string checkpoint(int64_t step) const {
    return (path() / "checkpoints" /
            std::filesystem::path(train::checkpoint_path("c", step)).filename())
        .string();
  }
  std::string read(const std::string& relative) const {
    std::ifstream in(path() / relative);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }
};

double accuracy(const std::string& output) {
  std::smatch m;
  const std::regex final_line("final: test_accuracy=([0-9.]+)");
  EXPECT_TRUE(std::regex_search(output, m, final_line)) << output;
  return m.empty() ? -1 : std::stod(m[1]);
}

TEST(Precision, Bf16AndFp16TrainToFloat32sAccuracyWithOtherBits) {
  RunDir fp32, bf16, fp16;
  const CommandResult a = fp32.train("train.precision=fp32");
  ASSERT_EQ(a.exit_code, 0) << a.output;
  const double reference = accuracy(a.output);
  EXPECT_GT(reference, 0.5) << "the model must learn for the comparison to mean something";
  for (const auto& [dir, name] : {std::pair{&bf16, "bf16"}, std::pair{&fp16, "fp16"}}) {
    const CommandResult r = dir->train(std::string("train.precision=") + name);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_THAT(r.output, HasSubstr(std::string("train.precision ") + name + " on the CPU"));
    EXPECT_NEAR(accuracy(r.output), reference, 0.03) << name;
    // Close to float32's weights, but not the same bits: the operands were rounded.
    testutil::expect_same_model(fp32.checkpoint(kSteps), dir->checkpoint(kSteps), 0.05);
    const train::CheckpointData x = train::load_checkpoint(fp32.checkpoint(kSteps));
    const train::CheckpointData y = train::load_checkpoint(dir->checkpoint(kSteps));
    EXPECT_GT(testutil::max_abs_difference(x.model[0].second, y.model[0].second), 0) << name;
  }
  EXPECT_THAT(fp16.read("runs/metrics.jsonl"), HasSubstr("\"loss_scale\": 65536"));
}

TEST(Precision, Fp16SkipsAndCountsOverflowingStepsThenTrainsAndResumesExactly) {
  RunDir straight, stopped;
  // 2^30 overflows float16 in the first products of backward: the scale halves until it fits.
  const std::string fp16 = "train.precision=fp16 train.loss_scale=1073741824 ";
  const CommandResult a = straight.train(fp16);
  ASSERT_EQ(a.exit_code, 0) << a.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(a.output, m,
                                std::regex("fp16: ([0-9]+) step\\(s\\) skipped for gradient "
                                           "overflow; loss scale now ([0-9.e+]+)")))
      << a.output;
  const int skipped = std::stoi(m[1]);
  EXPECT_GE(skipped, 1);
  EXPECT_LT(skipped, 30);
  EXPECT_LT(std::stod(m[2]), 1073741824.0);
  EXPECT_GT(accuracy(a.output), 0.5);
  EXPECT_THAT(straight.read("runs/metrics.jsonl"),
              HasSubstr("\"skipped_steps\": " + std::to_string(skipped)));
  // Stopped after the skips and resumed: the scaler's state travels in the checkpoint.
  const CommandResult first = stopped.train(fp16 + "train.stop_at_step=100");
  ASSERT_EQ(first.exit_code, 0) << first.output;
  const CommandResult second = stopped.train(fp16);
  ASSERT_EQ(second.exit_code, 0) << second.output;
  EXPECT_THAT(second.output, HasSubstr("fp16: " + std::to_string(skipped) + " step(s) skipped"));
  testutil::expect_same_model(straight.checkpoint(kSteps), stopped.checkpoint(kSteps), 0);
}

TEST(Precision, AnUnknownPrecisionIsRefusedNamingTheKeyAndTheChoices) {
  RunDir d;
  const CommandResult r = d.train("train.precision=fp8");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("train.precision"));
  EXPECT_THAT(r.output, HasSubstr("fp8"));
  EXPECT_THAT(r.output, HasSubstr("bf16"));
}

}  // namespace
}  // namespace dtrain
