// `dtrain train` next to checkpoints that must not be trusted: a corrupt file at a higher step than
// the valid ones does not make pruning delete them, and a CRC-valid checkpoint whose optimizer
// state names no parameter is refused by name when given, and skipped by resume: auto.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "cli/run_util.h"
#include "dtrain/train/checkpoint.h"
#include "train/scratch_dir.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testutil::CommandResult;
using testutil::ScratchDir;

// 2048 / 32 = 64 steps per epoch; adam, so the optimizer state has per-parameter buffers
// ("<index>.exp_avg") and scalars ("<index>.step").
constexpr char kConfig[] =
    "model:\n"
    "  type: mlp\n"
    "  hidden: [32]\n"
    "data:\n"
    "  name: synthetic\n"
    "  synthetic_train_size: 2048\n"
    "  synthetic_test_size: 512\n"
    "  synthetic_shape: [32]\n"
    "optimizer: {type: adam, lr: 0.001}\n"
    "train:\n"
    "  epochs: 2\n"
    "  batch_size: 32\n"
    "  resume: auto\n"
    "  checkpoint_dir: checkpoints\n"
    "  checkpoint_every_steps: 4\n"
    "  keep_checkpoints: 3\n"
    "log:\n"
    "  dir: runs\n"
    "  progress: off\n";

constexpr int kRunLimitS = 120;

/// A scratch directory holding run.yaml; runs use it as their working directory.
class RunDir : public ScratchDir {
 public:
  RunDir() { testutil::write_bytes(*this / "run.yaml", kConfig); }
  CommandResult train(const std::string& overrides = "") const {
    return testutil::run_dtrain_bounded(kRunLimitS, "train run.yaml " + overrides, path().string());
  }
  std::vector<std::string> checkpoints() const {
    std::vector<std::string> names;
    for (const auto& p : train::list_checkpoints(*this / "checkpoints")) {
      names.push_back(std::filesystem::path(p).filename().string());
    }
    return names;
  }
  /// Absolute path of the checkpoint of `step` in checkpoints/.
  std::string ckpt(int64_t step) const {
    return train::checkpoint_path(*this / "checkpoints", step);
  }
};

std::string ckpt_name(int64_t step) {
  return std::filesystem::path(train::checkpoint_path("checkpoints", step)).filename().string();
}

std::string ckpt_rel(int64_t step) { return "checkpoints/" + ckpt_name(step); }

std::vector<std::string> lines_containing(const std::string& text, const std::string& part) {
  std::vector<std::string> out;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.find(part) != std::string::npos) out.push_back(line);
  }
  return out;
}

/// Trains the first 8 steps: valid checkpoints at steps 4 and 8 (step 4 removed, so 8 is the only
/// valid one).
void train_to_step_8(const RunDir& dir) {
  const CommandResult r = dir.train("train.max_steps=8");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::filesystem::remove(dir.ckpt(4));
  ASSERT_EQ(dir.checkpoints(), (std::vector<std::string>{ckpt_name(8)}));
}

// ---- C5: pruning next to a file that does not load ----------------------------------------------

TEST(CheckpointSafety, CorruptHigherStepFileDoesNotMakePruningDeleteTheNewCheckpoint) {
  RunDir dir;
  ASSERT_NO_FATAL_FAILURE(train_to_step_8(dir));
  std::string bytes = testutil::read_bytes(dir.ckpt(8));
  bytes[bytes.size() / 2] ^= 0x01;
  testutil::write_bytes(dir.ckpt(100), bytes);

  const CommandResult r = dir.train("train.keep_checkpoints=1 train.max_steps=20");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("skipping invalid checkpoint " + ckpt_rel(100))) << r.output;
  EXPECT_THAT(r.output, HasSubstr("resuming from " + ckpt_rel(8) + ": step 8,")) << r.output;
  EXPECT_EQ(dir.checkpoints(), (std::vector<std::string>{ckpt_name(100), ckpt_name(20)}));
  EXPECT_EQ(train::load_checkpoint(dir.ckpt(20)).step, 20);
  EXPECT_EQ(testutil::read_bytes(dir.ckpt(100)), bytes);

  // Run again: it continues from step 20 (nothing left to train), not from step 0.
  const CommandResult again = dir.train("train.keep_checkpoints=1 train.max_steps=20");
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_THAT(again.output, HasSubstr("resuming from " + ckpt_rel(20) + ": step 20,"))
      << again.output;
  EXPECT_THAT(again.output, HasSubstr("steps=20 ")) << again.output;
  EXPECT_EQ(dir.checkpoints(), (std::vector<std::string>{ckpt_name(100), ckpt_name(20)}));
}

TEST(CheckpointSafety, ValidCheckpointOfAnotherRunAtAHigherStepDoesNotMakePruningDeleteTheNewOne) {
  RunDir dir;
  ASSERT_NO_FATAL_FAILURE(train_to_step_8(dir));
  // A checkpoint another run (a narrower model) left in the same directory, at step 100.
  const CommandResult other = dir.train(
      "train.max_steps=4 train.resume=never train.checkpoint_dir=other 'model.hidden=[16]'");
  ASSERT_EQ(other.exit_code, 0) << other.output;
  train::CheckpointData foreign = train::load_checkpoint(dir / "other/ckpt-0000000004.dtck");
  foreign.step = 100;
  train::save_checkpoint(dir.ckpt(100), foreign);

  // Continued on purpose from step 8: the checkpoint it writes at step 20 must survive.
  const CommandResult r =
      dir.train("train.keep_checkpoints=1 train.max_steps=20 train.resume=" + ckpt_rel(8));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("resuming from " + ckpt_rel(8) + ": step 8,")) << r.output;
  EXPECT_TRUE(std::filesystem::exists(dir.ckpt(20)))
      << "left in checkpoints/: " << testing::PrintToString(dir.checkpoints()) << "\n"
      << r.output;
}

// ---- C11: a CRC-valid checkpoint whose optimizer state names no parameter -----------------------

/// Writes checkpoints/ckpt-<step>: the valid checkpoint of step 8 with one more optimizer entry
/// under `key`, as a tensor or a scalar. CRC-valid: it loads.
void write_with_optimizer_key(const RunDir& dir, int64_t step, const std::string& key,
                              bool as_scalar) {
  train::CheckpointData data = train::load_checkpoint(dir.ckpt(8));
  ASSERT_EQ(data.optimizer_tensors.count("0.exp_avg"), 1u);
  data.step = step;
  if (as_scalar) {
    data.optimizer_scalars[key] = 8.0;
  } else {
    data.optimizer_tensors[key] = data.optimizer_tensors.at("0.exp_avg");
  }
  train::save_checkpoint(dir.ckpt(step), data);
  ASSERT_EQ(train::load_checkpoint(dir.ckpt(step)).step, step);
}

TEST(CheckpointSafety, CheckpointThatResumeAutoSkipsDoesNotMakePruningDeleteTheNewOne) {
  RunDir dir;
  ASSERT_NO_FATAL_FAILURE(train_to_step_8(dir));
  ASSERT_NO_FATAL_FAILURE(write_with_optimizer_key(dir, 100, "abc.exp_avg", false));

  const CommandResult r = dir.train("train.keep_checkpoints=1 train.max_steps=20");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("skipping checkpoint " + ckpt_rel(100))) << r.output;
  EXPECT_THAT(r.output, HasSubstr("resuming from " + ckpt_rel(8) + ": step 8,")) << r.output;
  EXPECT_TRUE(std::filesystem::exists(dir.ckpt(20)))
      << "left in checkpoints/: " << testing::PrintToString(dir.checkpoints()) << "\n"
      << r.output;
  const CommandResult again = dir.train("train.keep_checkpoints=1 train.max_steps=20");
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_THAT(again.output, HasSubstr("resuming from " + ckpt_rel(20) + ": step 20,"))
      << again.output;
}

TEST(CheckpointSafety, ExplicitResumeOfACheckpointWithANonNumericOptimizerKeyNamesTheKey) {
  RunDir dir;
  ASSERT_NO_FATAL_FAILURE(train_to_step_8(dir));
  ASSERT_NO_FATAL_FAILURE(write_with_optimizer_key(dir, 12, "abc.exp_avg", false));

  const CommandResult r = dir.train("train.max_steps=20 train.resume=" + ckpt_rel(12));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.exit_code, 124) << "timed out:\n" << r.output;
  EXPECT_THAT(r.output, HasSubstr("dtrain: error:")) << r.output;
  EXPECT_THAT(r.output, HasSubstr("'abc.exp_avg'")) << r.output;
  EXPECT_THAT(r.output, Not(HasSubstr("stoul"))) << r.output;
  EXPECT_THAT(r.output, Not(HasSubstr("final:"))) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir.ckpt(20)));
}

TEST(CheckpointSafety, ExplicitResumeOfACheckpointWithANonNumericOptimizerKeyNamesTheFile) {
  RunDir dir;
  ASSERT_NO_FATAL_FAILURE(train_to_step_8(dir));
  ASSERT_NO_FATAL_FAILURE(write_with_optimizer_key(dir, 12, "abc.exp_avg", false));

  const CommandResult r = dir.train("train.max_steps=20 train.resume=" + ckpt_rel(12));
  EXPECT_NE(r.exit_code, 0) << r.output;
  const auto errors = lines_containing(r.output, "'abc.exp_avg'");
  ASSERT_FALSE(errors.empty()) << r.output;
  EXPECT_THAT(errors[0], HasSubstr(ckpt_rel(12))) << r.output;
}

TEST(CheckpointSafety, ResumeAutoSkipsANewerCheckpointWithANonNumericOptimizerKey) {
  RunDir dir;
  ASSERT_NO_FATAL_FAILURE(train_to_step_8(dir));
  ASSERT_NO_FATAL_FAILURE(write_with_optimizer_key(dir, 12, "abc.exp_avg", false));

  const CommandResult r = dir.train("train.max_steps=20");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto warnings = lines_containing(r.output, "warning:");
  ASSERT_EQ(warnings.size(), 1u) << r.output;
  EXPECT_THAT(warnings[0], HasSubstr(ckpt_rel(12)));
  EXPECT_THAT(warnings[0], HasSubstr("'abc.exp_avg'"));
  EXPECT_THAT(r.output, HasSubstr("resuming from " + ckpt_rel(8) + ": step 8,")) << r.output;
  EXPECT_THAT(r.output, HasSubstr("steps=20 ")) << r.output;
  EXPECT_THAT(r.output, Not(HasSubstr("stoul"))) << r.output;
  EXPECT_EQ(train::load_checkpoint(dir.ckpt(20)).step, 20);
}

TEST(CheckpointSafety, ResumeAutoSkipsANewerCheckpointWithANonNumericOptimizerScalarKey) {
  RunDir dir;
  ASSERT_NO_FATAL_FAILURE(train_to_step_8(dir));
  ASSERT_NO_FATAL_FAILURE(write_with_optimizer_key(dir, 12, "abc.step", true));

  const CommandResult r = dir.train("train.max_steps=20");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto warnings = lines_containing(r.output, "warning:");
  ASSERT_EQ(warnings.size(), 1u) << r.output;
  EXPECT_THAT(warnings[0], HasSubstr(ckpt_rel(12)));
  EXPECT_THAT(warnings[0], HasSubstr("'abc.step'"));
  EXPECT_THAT(r.output, HasSubstr("resuming from " + ckpt_rel(8) + ": step 8,")) << r.output;
}

TEST(CheckpointSafety, ResumeAutoSkipsANewerCheckpointWithAMisshapedOptimizerBuffer) {
  RunDir dir;
  ASSERT_NO_FATAL_FAILURE(train_to_step_8(dir));
  train::CheckpointData data = train::load_checkpoint(dir.ckpt(8));
  ASSERT_EQ(data.optimizer_tensors.count("0.exp_avg"), 1u);
  data.step = 12;
  data.optimizer_tensors["0.exp_avg"] = zeros({3});
  train::save_checkpoint(dir.ckpt(12), data);

  const CommandResult r = dir.train("train.max_steps=20");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto warnings = lines_containing(r.output, "warning:");
  ASSERT_EQ(warnings.size(), 1u) << r.output;
  EXPECT_THAT(warnings[0], HasSubstr(ckpt_rel(12)));
  EXPECT_THAT(warnings[0], HasSubstr("0.exp_avg"));
  EXPECT_THAT(r.output, HasSubstr("resuming from " + ckpt_rel(8) + ": step 8,")) << r.output;
}

}  // namespace
}  // namespace dtrain
