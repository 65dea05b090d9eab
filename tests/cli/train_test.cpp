// `dtrain train`, `eval` and `export` end to end on a small synthetic set: the final line,
// summaries, checkpoint pruning, bit-exact resume after a stop mid-epoch, fallback past a corrupt
// checkpoint.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "cli/checkpoint_compare.h"
#include "cli/run_util.h"
#include "dtrain/tensor/cuda/cuda_backend.h"
#include "dtrain/train/checkpoint.h"
#include "train/scratch_dir.h"

namespace dtrain {
namespace {

using testutil::expect_same_model;

using testutil::CommandResult;
using testutil::run_dtrain;
using testutil::ScratchDir;

// 2048 / 32 = 64 steps per epoch, 128 in all; a run takes well under a second.
constexpr char kConfig[] =
    "model:\n"
    "  type: mlp\n"
    "  hidden: [32]\n"
    "data:\n"
    "  name: synthetic\n"
    "  synthetic_train_size: 2048\n"
    "  synthetic_test_size: 512\n"
    "  synthetic_shape: [32]\n"
    "train:\n"
    "  epochs: 2\n"
    "  batch_size: 32\n"
    "  resume: never\n"
    "  checkpoint_dir: checkpoints\n"
    "log:\n"
    "  dir: runs\n"
    "  progress: off\n";
constexpr int64_t kStepsPerEpoch = 64;

/// A scratch directory holding run.yaml; every run uses it as its working directory, so the
/// relative checkpoints/ and runs/ of the config land there.
class RunDir : public ScratchDir {
 public:
  RunDir() { testutil::write_bytes(*this / "run.yaml", kConfig); }
  CommandResult dtrain(const std::string& args) const { return run_dtrain(args, path().string()); }
  CommandResult train(const std::string& overrides = "") const {
    return dtrain("train run.yaml " + overrides);
  }
  std::vector<std::string> checkpoints() const {
    std::vector<std::string> names;
    for (const auto& p : train::list_checkpoints(*this / "checkpoints")) {
      names.push_back(std::filesystem::path(p).filename().string());
    }
    return names;
  }
};

struct FinalLine {
  std::string accuracy, loss;  // as printed (4 decimals)
  int64_t steps = -1;
};

const std::regex kFinalLine(
    "^final: test_accuracy=([0-9.]+) test_loss=([0-9.]+) steps=([0-9]+) "
    "samples_per_sec=[0-9.]+ wall_s=[0-9.]+ gflops=[0-9.]+$");

/// The one line matching kFinalLine; fails the test when there is not exactly one.
FinalLine final_line(const std::string& output) {
  FinalLine f;
  int found = 0;
  std::istringstream lines(output);
  std::string line;
  std::smatch m;
  while (std::getline(lines, line)) {
    if (!std::regex_match(line, m, kFinalLine)) continue;
    ++found;
    f = {m[1], m[2], std::stoll(m[3])};
  }
  EXPECT_EQ(found, 1) << "final lines in:\n" << output;
  return f;
}

std::vector<std::string> lines_containing(const std::string& text, const std::string& part) {
  std::vector<std::string> out;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.find(part) != std::string::npos) out.push_back(line);
  }
  return out;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::string ckpt_name(int64_t step) {
  return std::filesystem::path(train::checkpoint_path("checkpoints", step)).filename().string();
}

TEST(Train, RunPrintsOneFinalLineAndLearns) {
  RunDir dir;
  const auto r = dir.train();
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const FinalLine f = final_line(r.output);
  EXPECT_EQ(f.steps, 2 * kStepsPerEpoch);
  // Ten classes: chance is 0.1; the synthetic target is learnable (this run reaches ~0.76).
  EXPECT_GT(std::stod(f.accuracy), 0.5) << r.output;
  EXPECT_EQ(lines_containing(r.output, "final:").size(), 1u) << r.output;
  EXPECT_FALSE(contains(r.output, "stopped at step")) << r.output;
}

TEST(Train, WritesMetricsAndTensorBoardEvents) {
  RunDir dir;
  const auto r = dir.train("log.every_steps=10");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string metrics = testutil::read_bytes(dir / "runs/metrics.jsonl");
  const auto train_records = lines_containing(metrics, "\"loss\":");
  const auto test_records = lines_containing(metrics, "\"test_accuracy\":");
  // Every 10 steps plus the last step (128), and one test record per epoch.
  EXPECT_EQ(train_records.size(), 13u) << metrics;
  EXPECT_EQ(test_records.size(), 2u) << metrics;
  for (const auto& line : lines_containing(metrics, "")) {
    EXPECT_TRUE(line.starts_with("{") && line.ends_with("}")) << line;
  }
  int events = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir / "runs")) {
    if (entry.path().filename().string().starts_with("events.out.tfevents.")) {
      ++events;
      EXPECT_GT(entry.file_size(), 100u) << entry.path();
    }
  }
  EXPECT_EQ(events, 1);

  RunDir quiet;
  ASSERT_EQ(quiet.train("log.tensorboard=false").exit_code, 0);
  for (const auto& entry : std::filesystem::directory_iterator(quiet / "runs")) {
    EXPECT_FALSE(entry.path().filename().string().starts_with("events.")) << entry.path();
  }
}

// On a GPU the loss stays on the device and is read only every log.every_steps (and at the first
// and last steps); DTRAIN_TEST_DEFER_LOSS=1 takes that path on the CPU. The records must hold the
// same window means (summed in float32 on the device instead of double on the host) and the
// training must not change.
TEST(Train, ALossKeptOnTheDeviceIsRecordedAsWhenReadEveryStep) {
  RunDir every_step, deferred;
  const std::string overrides = "log.every_steps=7 train.grad_accum_steps=2";
  const auto a = every_step.train(overrides);
  ASSERT_EQ(a.exit_code, 0) << a.output;
  ASSERT_EQ(setenv("DTRAIN_TEST_DEFER_LOSS", "1", 1), 0);
  const auto b = deferred.train(overrides);
  unsetenv("DTRAIN_TEST_DEFER_LOSS");
  ASSERT_EQ(b.exit_code, 0) << b.output;
  EXPECT_EQ(final_line(a.output).loss, final_line(b.output).loss);
  EXPECT_EQ(final_line(a.output).accuracy, final_line(b.output).accuracy);
  const std::regex loss_field("\"loss\": *([-+0-9.eE]+)");
  auto losses = [&](const RunDir& dir) {
    std::vector<double> values;
    const std::string metrics = testutil::read_bytes(dir / "runs/metrics.jsonl");
    for (const auto& line : lines_containing(metrics, "\"loss\":")) {
      std::smatch m;
      if (std::regex_search(line, m, loss_field)) values.push_back(std::stod(m[1].str()));
    }
    return values;
  };
  const std::vector<double> expected = losses(every_step), got = losses(deferred);
  ASSERT_EQ(got.size(), expected.size());
  ASSERT_GT(expected.size(), 5u);
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_NEAR(got[i], expected[i], 1e-5 * std::abs(expected[i]) + 1e-7) << "record " << i;
  }
}

TEST(Train, CheckpointsArePrunedToKeepCheckpoints) {
  RunDir dir;
  const auto r = dir.train("train.checkpoint_every_steps=16 train.keep_checkpoints=2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // Written at 16, 32, ..., 128; the two newest stay, and no temp file is left behind.
  EXPECT_EQ(dir.checkpoints(), (std::vector<std::string>{ckpt_name(128), ckpt_name(112)}));
  size_t files = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir / "checkpoints")) {
    ++files;
  }
  EXPECT_EQ(files, 2u);
}

TEST(Train, EvalOfFinalCheckpointMatchesFinalLine) {
  RunDir dir;
  const auto r = dir.train();
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const FinalLine f = final_line(r.output);
  const auto e = dir.dtrain("eval run.yaml --checkpoint checkpoints/" + ckpt_name(f.steps));
  ASSERT_EQ(e.exit_code, 0) << e.output;
  EXPECT_TRUE(contains(
      e.output, "eval: test_accuracy=" + f.accuracy + " test_loss=" + f.loss + " examples=512\n"))
      << "final: " << f.accuracy << " " << f.loss << "\neval: " << e.output;
}

TEST(Train, ExportOfMissingCheckpointFailsNamingIt) {
  RunDir dir;
  const auto r = dir.dtrain("export missing/ckpt-0000000007.dtck -o model.safetensors");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(contains(r.output, "missing/ckpt-0000000007.dtck")) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir / "model.safetensors"));
}

TEST(Train, ResumeFromMissingCheckpointFailsNamingIt) {
  RunDir dir;
  const auto r = dir.train("train.resume=nowhere/ckpt-0000000007.dtck");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(contains(r.output, "nowhere/ckpt-0000000007.dtck")) << r.output;
  EXPECT_FALSE(contains(r.output, "final:")) << r.output;
}

TEST(Train, EmptyDataDirectoryFailsNamingIt) {
  RunDir dir;
  std::filesystem::create_directories(dir / "empty");
  const auto r = dir.train("data.name=fashion_mnist 'data.path=" + (dir / "empty") + "'");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(contains(r.output, "dtrain: error:")) << r.output;
  EXPECT_TRUE(contains(r.output, dir / "empty")) << r.output;
  EXPECT_FALSE(contains(r.output, "final:")) << r.output;
}

TEST(Train, CorruptNewestCheckpointFallsBackToThePreviousOne) {
  RunDir dir;
  const std::string every = " train.checkpoint_every_steps=16 train.keep_checkpoints=3";
  ASSERT_EQ(dir.train("train.epochs=1" + every).exit_code, 0);
  ASSERT_EQ(dir.checkpoints(),
            (std::vector<std::string>{ckpt_name(64), ckpt_name(48), ckpt_name(32)}));
  const std::string newest = dir / ("checkpoints/" + ckpt_name(64));
  std::filesystem::resize_file(newest, std::filesystem::file_size(newest) / 2);

  const auto r = dir.train("train.epochs=2 train.resume=auto" + every);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto warnings = lines_containing(r.output, "warning:");
  ASSERT_EQ(warnings.size(), 1u) << r.output;
  EXPECT_TRUE(contains(warnings[0], "checkpoints/" + ckpt_name(64))) << warnings[0];
  EXPECT_TRUE(contains(warnings[0], "truncated")) << warnings[0];
  EXPECT_TRUE(contains(r.output, "resuming from checkpoints/" + ckpt_name(48) + ": step 48,"))
      << r.output;
  EXPECT_EQ(final_line(r.output).steps, 2 * kStepsPerEpoch);
  EXPECT_EQ(dir.checkpoints(),
            (std::vector<std::string>{ckpt_name(128), ckpt_name(112), ckpt_name(96)}));
}

// Exact resume: a run stopped mid-epoch and resumed ends bit-identical to one that never stopped.

void expect_same_tensor(const std::string& what, const Tensor& a, const Tensor& b) {
  ASSERT_TRUE(a.defined() && b.defined()) << what;
  ASSERT_EQ(a.shape(), b.shape()) << what;
  ASSERT_TRUE(a.dtype() == b.dtype()) << what;
  EXPECT_EQ(std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()), 0) << what << " differs";
}

/// Everything that decides how training continues: model, optimiser state, schedule, sampler
/// position and dropout streams.
void expect_same_checkpoint(const std::string& a_path, const std::string& b_path) {
  const train::CheckpointData a = train::load_checkpoint(a_path);
  const train::CheckpointData b = train::load_checkpoint(b_path);
  EXPECT_EQ(a.step, b.step);
  EXPECT_EQ(a.epoch, b.epoch);
  EXPECT_EQ(a.batch_in_epoch, b.batch_in_epoch);
  ASSERT_EQ(a.model.size(), b.model.size());
  ASSERT_FALSE(a.model.empty());
  for (size_t i = 0; i < a.model.size(); ++i) {
    EXPECT_EQ(a.model[i].first, b.model[i].first);
    expect_same_tensor("model " + a.model[i].first, a.model[i].second, b.model[i].second);
  }
  ASSERT_EQ(a.optimizer_tensors.size(), b.optimizer_tensors.size());
  ASSERT_FALSE(a.optimizer_tensors.empty());
  for (const auto& [name, tensor] : a.optimizer_tensors) {
    ASSERT_TRUE(b.optimizer_tensors.contains(name)) << name;
    expect_same_tensor("optimizer " + name, tensor, b.optimizer_tensors.at(name));
  }
  EXPECT_EQ(a.optimizer_scalars, b.optimizer_scalars);
  EXPECT_EQ(a.schedule_step, b.schedule_step);
  EXPECT_EQ(a.rng_offsets, b.rng_offsets);
}

struct ResumeCase {
  std::string overrides;  // on top of kConfig
  int64_t stop_at;        // the step B stops after: inside an epoch
  int64_t total_steps;
};

/// Runs A (straight through) and B (stopped at stop_at, then resumed with resume=auto) in two
/// directories and compares their final checkpoints and exported tensors bit for bit.
void check_exact_resume(const ResumeCase& c) {
  ScratchDir root;
  std::filesystem::create_directories(root / "a");
  std::filesystem::create_directories(root / "b");
  testutil::write_bytes(root / "a/run.yaml", kConfig);
  testutil::write_bytes(root / "b/run.yaml", kConfig);
  const auto run = [&](const std::string& where, const std::string& args) {
    return run_dtrain(args, root / where);
  };
  const std::string base = "train run.yaml " + c.overrides;

  const auto a = run("a", base);
  ASSERT_EQ(a.exit_code, 0) << a.output;
  const FinalLine fa = final_line(a.output);
  ASSERT_EQ(fa.steps, c.total_steps);

  const auto stopped = run("b", base + " train.stop_at_step=" + std::to_string(c.stop_at));
  ASSERT_EQ(stopped.exit_code, 0) << stopped.output;
  EXPECT_TRUE(contains(stopped.output, "stopped at step " + std::to_string(c.stop_at) +
                                           " (train.stop_at_step); checkpoint checkpoints/" +
                                           ckpt_name(c.stop_at) + "\n"))
      << stopped.output;
  EXPECT_EQ(final_line(stopped.output).steps, c.stop_at);

  const auto resumed = run("b", base + " train.resume=auto");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_TRUE(contains(resumed.output, "resuming from checkpoints/" + ckpt_name(c.stop_at) +
                                           ": step " + std::to_string(c.stop_at) + ","))
      << resumed.output;
  const FinalLine fb = final_line(resumed.output);
  EXPECT_EQ(fb.steps, fa.steps);
  EXPECT_EQ(fb.accuracy, fa.accuracy);
  EXPECT_EQ(fb.loss, fa.loss);

  const std::string final_ckpt = "checkpoints/" + ckpt_name(c.total_steps);
  expect_same_checkpoint(root / ("a/" + final_ckpt), root / ("b/" + final_ckpt));

  // Same relative checkpoint path, so the metadata agrees too and whole files can be compared.
  for (const char* where : {"a", "b"}) {
    const auto e = run(where, "export " + final_ckpt + " -o model.safetensors");
    ASSERT_EQ(e.exit_code, 0) << e.output;
  }
  const std::string sa = testutil::read_bytes(root / "a/model.safetensors");
  const std::string sb = testutil::read_bytes(root / "b/model.safetensors");
  const std::string da = testutil::safetensors_data(sa), db = testutil::safetensors_data(sb);
  EXPECT_FALSE(da.empty());
  EXPECT_TRUE(da == db) << "exported tensor bytes differ (" << da.size() << " vs " << db.size()
                        << " bytes)";
  EXPECT_TRUE(sa == sb) << "exported files differ";

  // B's summaries continue across its two runs: one test record per epoch, as in A.
  const auto test_records = [&](const std::string& where) {
    const std::string metrics = testutil::read_bytes(root / (where + "/runs/metrics.jsonl"));
    return lines_containing(metrics, "\"test_accuracy\":").size();
  };
  EXPECT_EQ(test_records("b"), test_records("a"));
}

// 37 and 45 are not multiples of the steps per epoch: every stop lands inside an epoch.
TEST(ExactResume, SgdMomentum) { check_exact_resume({"", 37, 2 * kStepsPerEpoch}); }

TEST(ExactResume, DropoutWithGradAccum) {
  // 32 optimiser steps per epoch; step 45 is 26 batches into the second epoch.
  check_exact_resume({"model.dropout=0.2 train.grad_accum_steps=2", 45, kStepsPerEpoch});
}

TEST(ExactResume, AdamW) {
  check_exact_resume({"optimizer.type=adamw optimizer.lr=0.01 optimizer.weight_decay=0.01", 37,
                      2 * kStepsPerEpoch});
}

TEST(ExactResume, BatchNormRmspropInWarmupWithShortLastBatch) {
  // 2000 examples keep a short last batch (drop_last=false): 63 steps per epoch. The stop falls
  // inside the warm-up, and batch norm's running statistics are buffers the checkpoint must hold.
  check_exact_resume(
      {"model.batch_norm=true optimizer.type=rmsprop optimizer.lr=0.001 "
       "schedule.warmup_steps=50 data.synthetic_train_size=2000 "
       "train.drop_last=false",
       45, 126});
}

// When an epoch's batches do not divide by grad_accum_steps, the left-over batches must not be run
// at all: forward passes on them would draw dropout masks and move batch-norm statistics, which a
// run resumed at the epoch's last step never does.
TEST(ExactResume, AtEpochEndWithLeftOverBatches) {
  // 2000 / 32 = 63 batches (the last one short), 31 optimiser steps per epoch; stop at step 31.
  check_exact_resume(
      {"model.dropout=0.2 model.batch_norm=true train.grad_accum_steps=2 "
       "data.synthetic_train_size=2000 train.drop_last=false",
       31, 62});
}

}  // namespace
}  // namespace dtrain

namespace dtrain {
namespace {

// log.progress: auto prints plain lines when stdout is not a terminal (a pipe here) and a bar
// redrawn in place (carriage return, clear to end of line) when it is one (a pty from script(1)).
TEST(Progress, PlainLinesOnAPipeAndABarOnATerminal) {
  RunDir dir;
  const CommandResult piped = dir.train("log.progress=auto log.every_steps=32");
  ASSERT_EQ(piped.exit_code, 0) << piped.output;
  EXPECT_THAT(piped.output, ::testing::HasSubstr("epoch 1/2 step 32/128"));
  EXPECT_THAT(piped.output, ::testing::Not(::testing::HasSubstr("\r")));

  if (std::system("command -v script >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "script(1) is not installed; cannot give dtrain a terminal";
  }
  const std::string inner =
      "OMP_NUM_THREADS=1 '" + std::string(DTRAIN_EXECUTABLE) + "' train run.yaml log.progress=auto";
  const CommandResult tty =
      testutil::run_shell("script -qec \"" + inner + "\" /dev/null", dir.path().string());
  ASSERT_EQ(tty.exit_code, 0) << tty.output;
  EXPECT_THAT(tty.output, ::testing::HasSubstr("\r"));
  EXPECT_THAT(tty.output, ::testing::HasSubstr("\033[K"));
  EXPECT_THAT(tty.output, ::testing::HasSubstr("step 128/128 ["));
  EXPECT_THAT(tty.output, ::testing::HasSubstr("final: test_accuracy="));
}

}  // namespace
}  // namespace dtrain

namespace dtrain {
namespace {

// `mpirun -n 2 dtrain train CONFIG strategy.type=ddp` with batch B per replica trains like one
// process with batch 2B: the same samples per step, gradients averaged. Only rank 0 reports.
TEST(DdpUnderMpirun, TwoProcessesMatchOneProcessWithTheGlobalBatch) {
  if (!testutil::mpirun_available()) {
    GTEST_SKIP() << "mpirun is not installed (scripts/setup.sh installs openmpi-bin)";
  }
  RunDir ddp_dir, single_dir;
  const CommandResult ddp =
      testutil::run_dtrain_mpirun(2, "train run.yaml strategy.type=ddp", ddp_dir.path().string());
  ASSERT_EQ(ddp.exit_code, 0) << ddp.output;
  const CommandResult single = single_dir.train("train.batch_size=64");
  ASSERT_EQ(single.exit_code, 0) << single.output;
  const FinalLine a = final_line(ddp.output), b = final_line(single.output);  // one line each
  EXPECT_EQ(a.steps, b.steps);
  EXPECT_EQ(a.accuracy, b.accuracy);
  EXPECT_EQ(a.loss, b.loss);
  // Only the primary replica writes checkpoints.
  EXPECT_FALSE(ddp_dir.checkpoints().empty());
}

}  // namespace
}  // namespace dtrain

namespace dtrain {
namespace {

// strategy.type=mirrored: N replica threads of one process with batch B each train like one
// process with batch N*B.
TEST(MirroredStrategy, ReplicaThreadsMatchOneProcessWithTheGlobalBatch) {
  RunDir mirrored_dir, single_dir;
  const CommandResult m = mirrored_dir.train("strategy.type=mirrored strategy.devices=2");
  ASSERT_EQ(m.exit_code, 0) << m.output;
  const CommandResult s = single_dir.train("train.batch_size=64");
  ASSERT_EQ(s.exit_code, 0) << s.output;
  const FinalLine a = final_line(m.output), b = final_line(s.output);
  EXPECT_EQ(a.steps, b.steps);
  EXPECT_EQ(a.accuracy, b.accuracy);
  EXPECT_EQ(a.loss, b.loss);
}

// multi_worker_mirrored: 2 processes x 2 replica threads x batch 16 == one process with batch 64.
TEST(MultiWorkerMirroredStrategy, ProcessesOfReplicaThreadsMatchOneProcess) {
  if (!testutil::mpirun_available()) {
    GTEST_SKIP() << "mpirun is not installed (scripts/setup.sh installs openmpi-bin)";
  }
  RunDir multi_dir, single_dir;
  const CommandResult m = testutil::run_dtrain_mpirun(
      2,
      "train run.yaml strategy.type=multi_worker_mirrored strategy.devices=2 train.batch_size=16",
      multi_dir.path().string());
  ASSERT_EQ(m.exit_code, 0) << m.output;
  const CommandResult s = single_dir.train("train.batch_size=64");
  ASSERT_EQ(s.exit_code, 0) << s.output;
  const FinalLine a = final_line(m.output), b = final_line(s.output);
  EXPECT_EQ(a.steps, b.steps);
  EXPECT_EQ(a.accuracy, b.accuracy);
  EXPECT_EQ(a.loss, b.loss);
}

}  // namespace
}  // namespace dtrain

namespace dtrain {
namespace {

// Ranks started with different configurations refuse to train and say which keys differ.
TEST(DdpUnderMpirun, RanksWithDifferentConfigsRefuseNamingTheKeys) {
  if (!testutil::mpirun_available()) {
    GTEST_SKIP() << "mpirun is not installed (scripts/setup.sh installs openmpi-bin)";
  }
  RunDir dir;
  const std::string exe =
      "'" + std::string(DTRAIN_EXECUTABLE) + "' train run.yaml strategy.type=ddp";
  // Open MPI's MPMD form: rank 0 and rank 1 run different command lines.
  const CommandResult r = testutil::run_shell(
      testutil::mpirun_prefix(1) + exe + " : -n 1 " + exe + " train.batch_size=16",
      dir.path().string());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(contains(r.output, "replicas run different configurations: replica(s) 1 differ"))
      << r.output;
  EXPECT_TRUE(contains(r.output, "train.batch_size (16 vs 32)")) << r.output;
  EXPECT_FALSE(contains(r.output, "final:"));
}

}  // namespace
}  // namespace dtrain

namespace dtrain {
namespace {

// A run of 2 mirrored replicas stopped mid-epoch and resumed on 1 replica keeps the global batch
// (64 per replica now) and the sampler position, and ends like the uninterrupted 2-replica run.
TEST(ResumeAcrossWorldSizes, TwoReplicasStoppedThenOneReplicaEndsLikeTwo) {
  RunDir straight, changed;
  const CommandResult a =
      straight.train("strategy.type=mirrored strategy.devices=2 train.resume=auto");
  ASSERT_EQ(a.exit_code, 0) << a.output;
  const CommandResult first = changed.train(
      "strategy.type=mirrored strategy.devices=2 train.resume=auto train.stop_at_step=37");
  ASSERT_EQ(first.exit_code, 0) << first.output;
  const CommandResult second = changed.train("train.resume=auto");
  ASSERT_EQ(second.exit_code, 0) << second.output;
  EXPECT_TRUE(contains(second.output, "resuming a run of 2 replicas on 1: global batch 64 kept"))
      << second.output;
  const FinalLine x = final_line(a.output), y = final_line(second.output);
  EXPECT_EQ(x.steps, y.steps);
  EXPECT_EQ(x.accuracy, y.accuracy);
  EXPECT_EQ(x.loss, y.loss);
}

}  // namespace
}  // namespace dtrain

namespace dtrain {
namespace {

// Gradient accumulation across replicas: N replicas x batch 8 x 2 micro-batches per optimiser step
// train like one process with batch N * 2 * 8 (the replicas' samples of a step are the global
// batch's; the micro-batches before the last accumulate locally and the last one's backward
// reduces the sum). The replicas also check every step that their parameters agree, so a drift is
// an error. Compared through the final checkpoints (step 20), tensor by tensor.

constexpr int64_t kAccumBatch = 8, kAccumSteps = 2, kAccumMaxSteps = 20;

/// Runs `replicas` replicas (ddp under mpirun, or mirrored threads) with accumulation and one
/// process with the global batch, then compares their step-20 checkpoints.
void check_accumulation_matches_one_process(int replicas, bool under_mpirun) {
  RunDir replica_dir, single_dir;
  const std::string accum = " train.batch_size=" + std::to_string(kAccumBatch) +
                            " train.grad_accum_steps=" + std::to_string(kAccumSteps) +
                            " train.max_steps=" + std::to_string(kAccumMaxSteps) +
                            " strategy.check_parameters_every_steps=1";
  const CommandResult r =
      under_mpirun
          ? testutil::run_dtrain_mpirun(replicas, "train run.yaml strategy.type=ddp" + accum,
                                        replica_dir.path().string())
          : replica_dir.train(
                "strategy.type=mirrored strategy.devices=" + std::to_string(replicas) + accum);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const int64_t global = replicas * kAccumSteps * kAccumBatch;
  const CommandResult s = single_dir.train("train.batch_size=" + std::to_string(global) +
                                           " train.max_steps=" + std::to_string(kAccumMaxSteps));
  ASSERT_EQ(s.exit_code, 0) << s.output;
  EXPECT_EQ(final_line(r.output).steps, kAccumMaxSteps);
  EXPECT_EQ(final_line(s.output).steps, kAccumMaxSteps);
  const std::string ckpt = "checkpoints/" + ckpt_name(kAccumMaxSteps);
  ASSERT_TRUE(std::filesystem::exists(replica_dir / ckpt)) << r.output;
  ASSERT_TRUE(std::filesystem::exists(single_dir / ckpt)) << s.output;
  expect_same_model(replica_dir / ckpt, single_dir / ckpt, 1e-5);
}

TEST(GradAccumAcrossReplicas, TwoDdpProcessesMatchOneProcessWithTheGlobalBatch) {
  if (!testutil::mpirun_available()) {
    GTEST_SKIP() << "mpirun is not installed (scripts/setup.sh installs openmpi-bin)";
  }
  check_accumulation_matches_one_process(2, /*under_mpirun=*/true);
}

TEST(GradAccumAcrossReplicas, ThreeDdpProcessesMatchOneProcessWithTheGlobalBatch) {
  if (!testutil::mpirun_available()) {
    GTEST_SKIP() << "mpirun is not installed (scripts/setup.sh installs openmpi-bin)";
  }
  check_accumulation_matches_one_process(3, /*under_mpirun=*/true);
}

TEST(GradAccumAcrossReplicas, TwoMirroredReplicasMatchOneProcessWithTheGlobalBatch) {
  check_accumulation_matches_one_process(2, /*under_mpirun=*/false);
}

TEST(GradAccumAcrossReplicas, ThreeMirroredReplicasMatchOneProcessWithTheGlobalBatch) {
  check_accumulation_matches_one_process(3, /*under_mpirun=*/false);
}

}  // namespace
}  // namespace dtrain

namespace dtrain {
namespace {

// A backend that cannot run on this machine stops the run at start-up with exit 2, naming the
// backend and the reason.
TEST(Backend, NcclWithoutAGpuExitsTwoNamingTheBackendAndTheReason) {
#ifndef DTRAIN_HAS_NCCL
  GTEST_SKIP()
      << "this build has no NCCL (Backend.NcclInABuildWithoutItIsAConfigProblem covers it)";
#endif
  if (cuda::available()) GTEST_SKIP() << "this machine has a GPU, so nccl can run here";
  RunDir dir;
  const CommandResult r = dir.train("strategy.backend=nccl");
  const CommandResult check = dir.dtrain("config check run.yaml strategy.backend=nccl");
  EXPECT_EQ(check.exit_code, 0) << "a build with NCCL accepts the value: " << check.output;
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "strategy.backend: backend 'nccl' needs a GPU: ")) << r.output;
  EXPECT_FALSE(contains(r.output, "final:"));
  EXPECT_TRUE(dir.checkpoints().empty()) << "nothing may be written before the check";
}

// strategy.backend documents nccl in every build (docs/config.md is one text); a build without it
// refuses the value as a config problem naming the key, how to get it and what to use instead.
TEST(Backend, NcclInABuildWithoutItIsAConfigProblem) {
#ifdef DTRAIN_HAS_NCCL
  GTEST_SKIP() << "this build has NCCL (Backend.NcclWithoutAGpuExitsTwo... covers the value)";
#endif
  RunDir dir;
  const CommandResult r = dir.train("strategy.backend=nccl");
  const CommandResult check = dir.dtrain("config check run.yaml strategy.backend=nccl");
#ifdef DTRAIN_HAS_CUDA
  const std::string why = "this build has CUDA but no NCCL; install NCCL and rebuild";
#else
  const std::string why = "this build has no CUDA; rebuild with CUDA and NCCL installed";
#endif
  const std::string refusal =
      "strategy.backend: backend 'nccl' is not available in this build: " + why +
      " (-DDTRAIN_CUDA=ON) or use one of local, tcp";
  for (const CommandResult* c : {&check, &r}) {
    EXPECT_EQ(c->exit_code, 2) << c->output;
    EXPECT_TRUE(contains(c->output, refusal)) << c->output;
  }
  EXPECT_FALSE(contains(r.output, "final:"));
  EXPECT_TRUE(dir.checkpoints().empty()) << "nothing may be written before the check";
}

// train.device: cuda where no GPU can be used stops before anything is read or written, naming
// the reason; auto then trains on the CPU exactly as cpu does.
TEST(DeviceGpu, BucketCapAutoIsRefusedOnAGpuNamingTheKey) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  RunDir refused;
  const CommandResult r =
      refused.train("train.device=cuda strategy.type=ddp strategy.bucket_cap_mb=auto");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "strategy.bucket_cap_mb: auto")) << r.output;
  EXPECT_TRUE(refused.checkpoints().empty());
}

TEST(Device, CudaWithoutAGpuExitsTwoNamingTheReasonAndAutoTrainsLikeCpu) {
  if (cuda::available()) GTEST_SKIP() << "this machine has a GPU, so train.device=cuda can run";
  RunDir refused;
  const CommandResult r = refused.train("train.device=cuda");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "train.device: cuda, but no GPU can be used here: ")) << r.output;
  EXPECT_TRUE(contains(r.output, cuda::unavailable_reason())) << r.output;
  EXPECT_FALSE(contains(r.output, "run ")) << "not even the run's directories: " << r.output;
  EXPECT_TRUE(refused.checkpoints().empty());
  EXPECT_FALSE(std::filesystem::exists(refused / "runs"));

  RunDir cpu, automatic;
  const CommandResult on_cpu = cpu.train("train.device=cpu");
  const CommandResult on_auto = automatic.train("train.device=auto");
  ASSERT_EQ(on_cpu.exit_code, 0) << on_cpu.output;
  ASSERT_EQ(on_auto.exit_code, 0) << on_auto.output;
  ASSERT_FALSE(cpu.checkpoints().empty());
  ASSERT_EQ(cpu.checkpoints(), automatic.checkpoints());
  expect_same_model(cpu / ("checkpoints/" + cpu.checkpoints()[0]),
                    automatic / ("checkpoints/" + automatic.checkpoints()[0]), 0.0);
}

}  // namespace
}  // namespace dtrain
