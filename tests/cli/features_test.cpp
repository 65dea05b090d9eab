// End to end through the real dtrain executable: sequential YAML models (exact resume, replicas
// against one process, config errors), resume that refuses other settings, per-run directories,
// eval and export from a checkpoint alone, optimizer.no_decay and clip_grad_norm, early stopping,
// and the npy, CIFAR-10 and augmentation data paths. Every run is small and bounded by `timeout`.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "cli/checkpoint_compare.h"
#include "cli/run_util.h"
#include "dtrain/autograd/grad_mode.h"
#include "dtrain/train/checkpoint.h"
#include "dtrain/train/config.h"
#include "dtrain/train/factories.h"
#include "train/python_readers.h"
#include "train/scratch_dir.h"

namespace dtrain {
namespace {

using testutil::expect_same_model;

using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::Not;
using testutil::CommandResult;

constexpr int kRunLimitS = 120;  // no run here needs more than a few seconds

/// A scratch directory that runs use as their working directory.
class RunDir : public testutil::ScratchDir {
 public:
  void write(const std::string& name, const std::string& bytes) const {
    testutil::write_bytes(*this / name, bytes);
  }
  CommandResult dtrain(const std::string& args) const {
    return testutil::run_dtrain_bounded(kRunLimitS, args, path().string());
  }
  bool exists(const std::string& relative) const {
    return std::filesystem::exists(path() / relative);
  }
  /// Names of the checkpoints ckpt-<step>.dtck in `dir` (relative), newest first.
  std::vector<std::string> checkpoints(const std::string& dir = "checkpoints") const {
    std::vector<std::string> names;
    for (const auto& p : train::list_checkpoints(*this / dir)) {
      names.push_back(std::filesystem::path(p).filename().string());
    }
    return names;
  }
  /// The tensor bytes of `checkpoint` (relative) as `dtrain export` writes them.
  std::string exported_tensors(const std::string& checkpoint) const {
    const CommandResult e = dtrain("export '" + checkpoint + "' -o exported.safetensors");
    EXPECT_EQ(e.exit_code, 0) << e.output;
    return testutil::safetensors_data(testutil::read_bytes(*this / "exported.safetensors"));
  }
};

std::string ckpt(int64_t step) { return train::checkpoint_path("checkpoints", step); }

struct FinalLine {
  std::string accuracy, loss;  // as printed (4 decimals)
  int64_t steps = -1;
};

/// The one final line of a run (rank 0's under `dtrain launch`); fails unless there is one.
FinalLine final_line(const std::string& output) {
  static const std::regex re("final: test_accuracy=([0-9.]+) test_loss=([0-9.]+) steps=([0-9]+) ");
  FinalLine f;
  int found = 0;
  std::istringstream lines(output);
  std::string line;
  std::smatch m;
  while (std::getline(lines, line)) {
    if (!std::regex_search(line, m, re)) continue;
    ++found;
    f = {m[1], m[2], std::stoll(m[3])};
  }
  EXPECT_EQ(found, 1) << "final lines in:\n" << output;
  return f;
}

// ---------------------------------------------------------------------------------------------
// Configs. Every one trains in well under a second on one thread.

const std::string kQuietLog = "log: {dir: runs, progress: off, tensorboard: false}\n";

/// A conv net with a residual block on synthetic [1, 8, 8] images: 1024 / 32 = 32 steps per
/// epoch, 64 in all.
std::string residual_config(const std::string& layers) {
  return "model:\n"
         "  type: sequential\n"
         "  layers:\n" +
         layers +
         "data:\n"
         "  name: synthetic\n"
         "  synthetic_train_size: 1024\n"
         "  synthetic_test_size: 256\n"
         "  synthetic_shape: [1, 8, 8]\n"
         "train: {epochs: 2, batch_size: 32, threads: 1, checkpoint_dir: checkpoints}\n" +
         kQuietLog;
}
constexpr int64_t kResidualSteps = 64;

const std::string kResidualWithNormAndDropout =
    "    - conv2d: {out: 8, kernel: 3, padding: 1}\n"
    "    - batch_norm\n"
    "    - relu\n"
    "    - residual:\n"
    "        - conv2d: {out: 8, kernel: 3, padding: 1}\n"
    "        - batch_norm\n"
    "        - relu\n"
    "        - dropout: {p: 0.2}\n"
    "    - flatten\n"
    "    - linear: {out: classes}\n";

// Batch-norm statistics are per replica and dropout masks are drawn per replica, so a model that
// N replicas train like one process holds neither.
const std::string kResidualPlain =
    "    - conv2d: {out: 8, kernel: 3, padding: 1}\n"
    "    - relu\n"
    "    - residual:\n"
    "        - conv2d: {out: 8, kernel: 3, padding: 1}\n"
    "        - relu\n"
    "    - flatten\n"
    "    - linear: {out: classes}\n";

/// About 3.8 KB of words from a fixed list: a corpus a tiny model learns something of.
std::string corpus_text() {
  static const char* const kWords[] = {"the",  "quick", "brown", "fox", "jumps",
                                       "over", "lazy",  "dog",   "and", "cat"};
  std::mt19937 gen(1);
  std::string text;
  for (int i = 0; i < 800; ++i) {
    text += kWords[gen() % 10];
    text += i % 16 == 15 ? '\n' : ' ';
  }
  return text;
}

/// A one-block transformer over the text corpus (context 16): 13 steps per epoch, 26 in all, and 28
/// test examples. An even number: replicas pad a test set that does not divide among them with
/// repeated examples, whose metrics then differ from one process's.
std::string transformer_config(const std::string& block, const std::string& optimizer) {
  return "model:\n"
         "  type: sequential\n"
         "  layers:\n"
         "    - embedding: {vocab: classes, dim: 16}\n"
         "    - positional_embedding: {max_len: 16}\n"
         "    - transformer_block: " +
         block +
         "\n"
         "    - layer_norm\n"
         "    - linear: {out: classes}\n"
         "data: {name: text, path: corpus.txt, context: 16, test_fraction: 0.12}\n"
         "optimizer: " +
         optimizer +
         "\n"
         "train: {epochs: 2, batch_size: 16, threads: 1, checkpoint_dir: checkpoints}\n" +
         kQuietLog;
}
constexpr int64_t kTransformerSteps = 26;

/// An MLP on synthetic [8] vectors: 512 / 32 = 16 steps per epoch.
const std::string kMlpConfig =
    "model: {type: mlp, hidden: [16]}\n"
    "data: {name: synthetic, synthetic_train_size: 512, synthetic_test_size: 128,\n"
    "       synthetic_shape: [8]}\n"
    "optimizer: {lr: 0.05}\n"
    "train: {epochs: 1, batch_size: 32, threads: 1, checkpoint_dir: checkpoints}\n" +
    kQuietLog;
constexpr int64_t kMlpStepsPerEpoch = 16;

// ---------------------------------------------------------------------------------------------
// Exact resume: stopped with train.stop_at_step and resumed, a run ends with the same tensor bytes
// as one that never stopped.

/// `setup` writes the config (run.yaml) and any data into a directory.
void check_exact_resume(const std::function<void(const RunDir&)>& setup, int64_t stop_at,
                        int64_t total_steps) {
  ASSERT_LT(stop_at, total_steps);
  RunDir straight, parts;
  setup(straight);
  setup(parts);
  const CommandResult a = straight.dtrain("train run.yaml");
  ASSERT_EQ(a.exit_code, 0) << a.output;
  const FinalLine fa = final_line(a.output);
  ASSERT_EQ(fa.steps, total_steps) << a.output;

  const CommandResult first =
      parts.dtrain("train run.yaml train.stop_at_step=" + std::to_string(stop_at));
  ASSERT_EQ(first.exit_code, 0) << first.output;
  EXPECT_THAT(first.output, HasSubstr("stopped at step " + std::to_string(stop_at)));
  EXPECT_EQ(final_line(first.output).steps, stop_at);
  const CommandResult second = parts.dtrain("train run.yaml");
  ASSERT_EQ(second.exit_code, 0) << second.output;
  EXPECT_THAT(second.output, HasSubstr("resuming from " + ckpt(stop_at) + ": step " +
                                       std::to_string(stop_at) + ","));
  const FinalLine fb = final_line(second.output);
  EXPECT_EQ(fb.steps, fa.steps);
  EXPECT_EQ(fb.accuracy, fa.accuracy);
  EXPECT_EQ(fb.loss, fa.loss);

  const std::string da = straight.exported_tensors(ckpt(total_steps));
  const std::string db = parts.exported_tensors(ckpt(total_steps));
  ASSERT_FALSE(da.empty());
  EXPECT_TRUE(da == db) << "exported tensor bytes differ (" << da.size() << " vs " << db.size()
                        << " bytes)";
  // The stopped run's weights are not the final ones: the resumed run trained.
  EXPECT_FALSE(parts.exported_tensors(ckpt(stop_at)) == db);
}

TEST(FeaturesSequential, ResidualConvNetWithBatchNormAndDropoutResumesExactly) {
  // Step 45 is 13 batches into the second epoch.
  check_exact_resume(
      [](const RunDir& d) { d.write("run.yaml", residual_config(kResidualWithNormAndDropout)); },
      45, kResidualSteps);
}

TEST(FeaturesSequential, TransformerOnTextResumesExactly) {
  // Step 17 is 4 batches into the second epoch; adamw state and attention dropout must carry.
  check_exact_resume(
      [](const RunDir& d) {
        d.write("corpus.txt", corpus_text());
        d.write("run.yaml", transformer_config("{heads: 2, dropout: 0.1}",
                                               "{type: adamw, lr: 0.01, weight_decay: 0.01}"));
      },
      17, kTransformerSteps);
}

// ---------------------------------------------------------------------------------------------
// N replicas with batch B train like one process with batch N*B.

/// Runs `replicated` (2 replicas of batch `batch`) and a single process of batch 2 * batch in
/// fresh directories set up by `setup`; same final line, same final weights to 1e-5.
void check_replicas_match_one_process(const std::function<void(const RunDir&)>& setup,
                                      const std::string& replicated, int64_t batch,
                                      int64_t total_steps) {
  RunDir many, one;
  setup(many);
  setup(one);
  const CommandResult r = many.dtrain(replicated + " train.batch_size=" + std::to_string(batch));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const CommandResult s =
      one.dtrain("train run.yaml train.batch_size=" + std::to_string(2 * batch));
  ASSERT_EQ(s.exit_code, 0) << s.output;
  const FinalLine a = final_line(r.output), b = final_line(s.output);
  EXPECT_EQ(a.steps, total_steps);
  EXPECT_EQ(b.steps, total_steps);
  EXPECT_EQ(a.accuracy, b.accuracy);
  EXPECT_EQ(a.loss, b.loss);
  ASSERT_TRUE(many.exists(ckpt(total_steps))) << r.output;
  ASSERT_TRUE(one.exists(ckpt(total_steps))) << s.output;
  expect_same_model(many / ckpt(total_steps), one / ckpt(total_steps), 1e-5);
}

void setup_residual_plain(const RunDir& d) { d.write("run.yaml", residual_config(kResidualPlain)); }

// Plain SGD: Adam's division by the root of tiny second moments magnifies float rounding, which
// differs between a sum over one batch and the average of two half-batch sums.
void setup_transformer_sgd(const RunDir& d) {
  d.write("corpus.txt", corpus_text());
  d.write("run.yaml", transformer_config("{heads: 2}", "{type: sgd, lr: 0.1}"));
}

TEST(FeaturesReplicas, TwoMirroredReplicasOfTheResidualNetMatchOneProcess) {
  check_replicas_match_one_process(setup_residual_plain,
                                   "train run.yaml strategy.type=mirrored strategy.devices=2", 16,
                                   kResidualSteps);
}

// With model.sync_batch_norm the batch statistics are the global batch's, so a model with batch
// norm trains on N replicas like one process (dropout masks would still differ: none here).
const std::string kResidualWithNorm =
    "    - conv2d: {out: 8, kernel: 3, padding: 1}\n"
    "    - batch_norm\n"
    "    - relu\n"
    "    - residual:\n"
    "        - conv2d: {out: 8, kernel: 3, padding: 1}\n"
    "        - batch_norm\n"
    "        - relu\n"
    "    - flatten\n"
    "    - linear: {out: classes}\n";

void setup_residual_norm(const RunDir& d) {
  d.write("run.yaml", residual_config(kResidualWithNorm));
}

TEST(FeaturesReplicas, TwoMirroredReplicasWithSyncBatchNormMatchOneProcess) {
  check_replicas_match_one_process(
      setup_residual_norm,
      "train run.yaml strategy.type=mirrored strategy.devices=2 model.sync_batch_norm=true", 16,
      kResidualSteps);
}

TEST(FeaturesReplicas, TwoDdpWorkersWithSyncBatchNormUnderLaunchMatchOneProcess) {
  check_replicas_match_one_process(
      setup_residual_norm,
      "launch --nproc-per-node 2 run.yaml strategy.type=ddp model.sync_batch_norm=true", 16,
      kResidualSteps);
}

TEST(FeaturesReplicas, SyncBatchNormWithoutABatchNormLayerIsRefused) {
  RunDir d;
  setup_residual_plain(d);
  const CommandResult r = d.dtrain(
      "train run.yaml strategy.type=mirrored strategy.devices=2 model.sync_batch_norm=true");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("model.sync_batch_norm"));
  EXPECT_THAT(r.output, HasSubstr("has no BatchNorm layer"));
  EXPECT_FALSE(d.exists(ckpt(kResidualSteps)));
}

TEST(FeaturesReplicas, TwoMirroredReplicasOfTheTransformerMatchOneProcess) {
  check_replicas_match_one_process(setup_transformer_sgd,
                                   "train run.yaml strategy.type=mirrored strategy.devices=2", 8,
                                   kTransformerSteps);
}

TEST(FeaturesReplicas, TwoDdpWorkersOfTheTransformerUnderLaunchMatchOneProcess) {
  check_replicas_match_one_process(setup_transformer_sgd,
                                   "launch --nproc-per-node 2 run.yaml strategy.type=ddp", 8,
                                   kTransformerSteps);
}

TEST(FeaturesReplicas, TwoDdpWorkersOfTheTransformerUnderLaunchMatchMirrored) {
  RunDir ddp, mirrored;
  setup_transformer_sgd(ddp);
  setup_transformer_sgd(mirrored);
  const CommandResult d =
      ddp.dtrain("launch --nproc-per-node 2 run.yaml strategy.type=ddp train.batch_size=8");
  ASSERT_EQ(d.exit_code, 0) << d.output;
  EXPECT_THAT(d.output, HasSubstr("started ranks 0-1 of 2"));
  const CommandResult m = mirrored.dtrain(
      "train run.yaml strategy.type=mirrored strategy.devices=2 train.batch_size=8");
  ASSERT_EQ(m.exit_code, 0) << m.output;
  const FinalLine a = final_line(d.output), b = final_line(m.output);
  EXPECT_EQ(a.steps, kTransformerSteps);
  EXPECT_EQ(a.steps, b.steps);
  EXPECT_EQ(a.accuracy, b.accuracy);
  EXPECT_EQ(a.loss, b.loss);
  expect_same_model(ddp / ckpt(kTransformerSteps), mirrored / ckpt(kTransformerSteps), 1e-5);
}

// ---------------------------------------------------------------------------------------------
// Sequential config errors: exit 2, file:line, what is wrong and how to fix it.

const std::string kConvHead =
    "model:\n"
    "  type: sequential\n"
    "  layers:\n"
    "    - conv2d: {out: 4, kernel: 3}\n"
    "    - relu\n";
const std::string kConvData =
    "data: {name: synthetic, synthetic_train_size: 64, synthetic_test_size: 64,\n"
    "       synthetic_shape: [1, 8, 8]}\n"
    "train: {epochs: 1, batch_size: 32, threads: 1, checkpoint_dir: checkpoints}\n" +
    kQuietLog;

TEST(FeaturesSequentialConfig, MisspeltLayerTypeNamesItsLineAndTheNearestType) {
  RunDir dir;
  dir.write("bad.yaml", kConvHead +
                            "    - flaten\n"  // line 6
                            "    - linear: {out: classes}\n" +
                            kConvData);
  for (const std::string command : {"config check bad.yaml", "train bad.yaml"}) {
    const CommandResult r = dir.dtrain(command);
    EXPECT_EQ(r.exit_code, 2) << command << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr("bad.yaml:6: model.layers[2]: unknown layer type 'flaten' "
                                    "(did you mean 'flatten'?)"))
        << command;
    EXPECT_THAT(r.output, Not(HasSubstr("final:")));
  }
  EXPECT_FALSE(dir.exists("checkpoints"));
}

TEST(FeaturesSequentialConfig, LinearAfterConvWithoutFlattenNamesTheLayerAndBothShapes) {
  RunDir dir;
  dir.write("bad.yaml", kConvHead +
                            "    - max_pool2d: {kernel: 2}\n"
                            "    - linear: {out: classes}\n"  // line 7
                            + kConvData);
  const CommandResult r = dir.dtrain("config check bad.yaml");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  // conv 3x3 on 8x8 gives [4, 6, 6]; the 2x2 pool [4, 3, 3].
  EXPECT_THAT(r.output, HasSubstr("model.layers[3] (linear, bad.yaml:7): gets [4, 3, 3]; "
                                  "needs [F] or [T, F]. Add flatten before it"));
  // With flatten the same model checks.
  dir.write("good.yaml", kConvHead +
                             "    - max_pool2d: {kernel: 2}\n"
                             "    - flatten\n"
                             "    - linear: {out: classes}\n" +
                             kConvData);
  const CommandResult good = dir.dtrain("config check good.yaml");
  EXPECT_EQ(good.exit_code, 0) << good.output;
}

// ---------------------------------------------------------------------------------------------
// train.resume: auto refuses a checkpoint written with other settings; a path given on purpose
// resumes it with a warning.

TEST(FeaturesSafeResume, AutoRefusesACheckpointOfOtherSettingsAndAPathProceeds) {
  RunDir dir;
  dir.write("run.yaml", kMlpConfig);
  const CommandResult first = dir.dtrain("train run.yaml");
  ASSERT_EQ(first.exit_code, 0) << first.output;
  const std::string written = ckpt(kMlpStepsPerEpoch);
  ASSERT_EQ(dir.checkpoints(), (std::vector<std::string>{"ckpt-0000000016.dtck"}));

  const CommandResult refused = dir.dtrain("train run.yaml optimizer.lr=0.1 train.epochs=2");
  EXPECT_EQ(refused.exit_code, 2) << refused.output;
  EXPECT_THAT(refused.output, HasSubstr("train.resume: auto found " + written));
  EXPECT_THAT(refused.output, HasSubstr("optimizer.lr: 0.05 -> 0.1"));
  EXPECT_THAT(refused.output, Not(HasSubstr("train.epochs")));  // not a setting of the run's
  EXPECT_THAT(refused.output, Not(HasSubstr("final:")));
  EXPECT_EQ(dir.checkpoints(), (std::vector<std::string>{"ckpt-0000000016.dtck"}));

  const CommandResult chosen = dir.dtrain("train run.yaml optimizer.lr=0.1 train.epochs=3 " +
                                          std::string("train.resume=") + written);
  ASSERT_EQ(chosen.exit_code, 0) << chosen.output;
  EXPECT_THAT(chosen.output, HasSubstr("warning: resuming " + written +
                                       " with other settings:\n"
                                       "  optimizer.lr: 0.05 -> 0.1"));
  EXPECT_THAT(chosen.output, HasSubstr("resuming from " + written + ": step 16,"));
  EXPECT_EQ(final_line(chosen.output).steps, 3 * kMlpStepsPerEpoch);
}

// ---------------------------------------------------------------------------------------------
// Per-run directories: without train.checkpoint_dir and log.dir a run writes under
// checkpoints/<run id> and runs/<run id>; the id follows the settings that make the run.

/// The run id printed by a run in `output` ("" when none), checking the line's directories.
std::string run_id(const std::string& output, const std::string& stem) {
  static const std::regex re(
      "run ([A-Za-z0-9_.-]+-[0-9a-f]{8}): checkpoints in checkpoints/"
      "([^,]+), logs in runs/([^\\n]+)\\n");
  std::smatch m;
  if (!std::regex_search(output, m, re)) {
    ADD_FAILURE() << "no run line in:\n" << output;
    return "";
  }
  EXPECT_EQ(m[2].str(), m[1].str());
  EXPECT_EQ(m[3].str(), m[1].str());
  EXPECT_TRUE(std::string(m[1]).starts_with(stem + "-")) << m[1];
  return m[1].str();
}

TEST(FeaturesRunDirs, DefaultDirectoriesAreNamedByTheRunIdAndResumeOnlyTheSameSettings) {
  RunDir dir;
  std::string config = kMlpConfig;
  config.replace(config.find(", checkpoint_dir: checkpoints"),
                 std::strlen(", checkpoint_dir: checkpoints"), "");
  config.replace(config.find("dir: runs, "), std::strlen("dir: runs, "), "");
  ASSERT_THAT(config, Not(HasSubstr("dir")));
  dir.write("exp.yaml", config);

  const CommandResult first = dir.dtrain("train exp.yaml");
  ASSERT_EQ(first.exit_code, 0) << first.output;
  const std::string id = run_id(first.output, "exp");
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(dir.checkpoints("checkpoints/" + id),
            (std::vector<std::string>{"ckpt-0000000016.dtck"}));
  EXPECT_TRUE(dir.exists("runs/" + id + "/metrics.jsonl"));
  EXPECT_TRUE(dir.checkpoints().empty()) << "nothing directly in checkpoints/";

  // The same config again: the same directories, and the finished run is found there.
  const CommandResult again = dir.dtrain("train exp.yaml");
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_EQ(run_id(again.output, "exp"), id);
  EXPECT_THAT(again.output, HasSubstr("resuming from checkpoints/" + id + "/ckpt-0000000016.dtck"));
  EXPECT_EQ(final_line(again.output).steps, kMlpStepsPerEpoch);
  // More epochs are not a setting of the run's (not in the id): it continues there.
  const CommandResult longer = dir.dtrain("train exp.yaml train.epochs=2");
  ASSERT_EQ(longer.exit_code, 0) << longer.output;
  EXPECT_EQ(run_id(longer.output, "exp"), id);
  EXPECT_THAT(longer.output,
              HasSubstr("resuming from checkpoints/" + id + "/ckpt-0000000016.dtck"));
  EXPECT_EQ(final_line(longer.output).steps, 2 * kMlpStepsPerEpoch);

  // Another learning rate is another run: its own directories, nothing refused or resumed.
  const CommandResult other = dir.dtrain("train exp.yaml optimizer.lr=0.1");
  ASSERT_EQ(other.exit_code, 0) << other.output;
  const std::string other_id = run_id(other.output, "exp");
  EXPECT_NE(other_id, id);
  EXPECT_THAT(other.output, Not(HasSubstr("resuming")));
  EXPECT_EQ(dir.checkpoints("checkpoints/" + other_id),
            (std::vector<std::string>{"ckpt-0000000016.dtck"}));
  EXPECT_TRUE(dir.exists("runs/" + other_id + "/metrics.jsonl"));
  EXPECT_EQ(dir.checkpoints("checkpoints/" + id),
            (std::vector<std::string>{"ckpt-0000000032.dtck", "ckpt-0000000016.dtck"}));
}

// ---------------------------------------------------------------------------------------------
// `dtrain eval CHECKPOINT` with no config, and what `dtrain export` records.

TEST(FeaturesEval, CheckpointAloneEvaluatesLikeTheRunsFinalLine) {
  RunDir dir;
  dir.write("corpus.txt", corpus_text());
  dir.write("run.yaml", transformer_config("{heads: 2}", "{type: sgd, lr: 0.1}"));
  const CommandResult r = dir.dtrain("train run.yaml");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const FinalLine f = final_line(r.output);
  // The checkpoint carries the resolved config: the file the run came from is not needed.
  std::filesystem::remove(dir / "run.yaml");
  const CommandResult e = dir.dtrain("eval " + ckpt(f.steps));
  ASSERT_EQ(e.exit_code, 0) << e.output;
  EXPECT_THAT(e.output, HasSubstr("eval: test_accuracy=" + f.accuracy + " test_loss=" + f.loss +
                                  " examples=28\n"));

  dir.write("run.yaml", transformer_config("{heads: 2}", "{type: sgd, lr: 0.1}"));
  const CommandResult not_ckpt = dir.dtrain("eval run.yaml");
  EXPECT_EQ(not_ckpt.exit_code, 2) << not_ckpt.output;
  EXPECT_THAT(not_ckpt.output, HasSubstr("dtrain eval: run.yaml is not a checkpoint"));
  EXPECT_THAT(not_ckpt.output, Not(HasSubstr("eval: test_accuracy")));
}

/// The JSON string value of `key` in the safetensors header of `file`, unescaped loosely
/// (\n and \" and \\ only); "" when missing.
std::string safetensors_metadata(const std::string& file, const std::string& key) {
  const std::string data = testutil::safetensors_data(file);
  const std::string header = file.substr(8, file.size() - 8 - data.size());
  const std::string quoted = "\"" + key + "\"";
  size_t at = header.find(quoted);
  if (at == std::string::npos) return "";
  at = header.find('"', at + quoted.size());  // the value's opening quote
  if (at == std::string::npos) return "";
  std::string value;
  for (size_t i = at + 1; i < header.size() && header[i] != '"'; ++i) {
    if (header[i] == '\\' && i + 1 < header.size()) {
      ++i;
      value += header[i] == 'n' ? '\n' : header[i];
    } else {
      value += header[i];
    }
  }
  return value;
}

TEST(FeaturesEval, ExportRecordsTheModelSection) {
  RunDir dir;
  dir.write("run.yaml", residual_config(kResidualPlain));
  const CommandResult r = dir.dtrain("train run.yaml train.epochs=1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const CommandResult e = dir.dtrain("export " + ckpt(32) + " -o model.safetensors");
  ASSERT_EQ(e.exit_code, 0) << e.output;
  const std::string model =
      safetensors_metadata(testutil::read_bytes(dir / "model.safetensors"), "dtrain_model");
  EXPECT_TRUE(model.starts_with("model:\n")) << model;
  EXPECT_THAT(model, HasSubstr("  type: sequential\n"));
  EXPECT_THAT(model, HasSubstr("residual: [{conv2d: {out: 8, kernel: 3, padding: 1}}, relu]"));
  EXPECT_THAT(model, Not(HasSubstr("data:")));
}

/// `dtrain export --format onnx` of the checkpoint at `ckpt`, run by onnxruntime on the first 32
/// test examples, against the model the checkpoint's config builds, in eval mode, in this process.
void expect_onnx_export_matches_dtrain(const RunDir& dir, const std::string& ckpt) {
  std::string why;
  const std::string python = testutil::reader_python(why);
  if (python.empty()) GTEST_SKIP() << why;
  const CommandResult e = dir.dtrain("export " + ckpt + " --format onnx -o model.onnx");
  ASSERT_EQ(e.exit_code, 0) << e.output;
  EXPECT_THAT(e.output, HasSubstr("(opset 17): input 'input'"));

  using namespace dtrain::train;
  const CheckpointData c = load_checkpoint(dir / ckpt);
  const CheckpointModel built =
      model_from_checkpoint(c, parse_config(c.config_yaml, ckpt, {}), ckpt);
  const Datasets& sets = built.sets;
  nn::Module& model = *built.model;
  Shape x_shape{32}, y_shape{32};
  for (int64_t d : sets.test->example_shape()) x_shape.push_back(d);
  for (int64_t d : sets.test->label_shape()) y_shape.push_back(d);
  Tensor x(x_shape, sets.test->example_dtype()), y(y_shape, DType::kInt64);
  std::vector<int64_t> first(32);
  for (int64_t i = 0; i < 32; ++i) first[i] = i;
  sets.test->fill_batch(first, x, y);
  Tensor expected;
  {
    NoGradGuard no_grad;
    expected = model(x);
  }
  std::string report;
  const Tensor got =
      testutil::run_onnxruntime(python, dir / "model.onnx", x, dir.path().string(), report);
  ASSERT_TRUE(got.defined());
  const std::vector<float> want = expected.to_vector<float>(), have = got.to_vector<float>();
  ASSERT_EQ(have.size(), want.size()) << report;
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(have[i], want[i], 1e-5 * std::max(1.0f, std::abs(want[i]))) << "output " << i;
  }
  EXPECT_THAT(report, HasSubstr("\"dtrain_step\": \"" + std::to_string(c.step) + "\""));
}

TEST(FeaturesEval, OnnxExportOfAYamlModelWithBatchNormAndResidualsMatchesOnnxruntime) {
  RunDir dir;
  dir.write("run.yaml", residual_config("    - conv2d: {out: 8, kernel: 3, padding: 1}\n"
                                        "    - batch_norm\n"
                                        "    - relu\n"
                                        "    - residual:\n"
                                        "        - conv2d: {out: 8, kernel: 3, padding: 1}\n"
                                        "        - batch_norm\n"
                                        "    - relu\n"
                                        "    - max_pool2d: {kernel: 2}\n"
                                        "    - global_avg_pool\n"
                                        "    - linear: {out: classes}\n"));
  const CommandResult r = dir.dtrain("train run.yaml train.epochs=1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  expect_onnx_export_matches_dtrain(dir, ckpt(32));
}

TEST(FeaturesEval, OnnxExportOfTheMlpWithDropoutMatchesOnnxruntime) {
  RunDir dir;
  dir.write("run.yaml", kMlpConfig);
  const CommandResult r = dir.dtrain("train run.yaml model.dropout=0.3");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  expect_onnx_export_matches_dtrain(dir, ckpt(kMlpStepsPerEpoch));
}

// ---------------------------------------------------------------------------------------------
// train.init_from: fine-tuning from a safetensors file of weights.

TEST(FeaturesInit, AFreshRunStartsFromExportedWeights) {
  RunDir dir;
  dir.write("run.yaml", kMlpConfig);
  const CommandResult source = dir.dtrain("train run.yaml");
  ASSERT_EQ(source.exit_code, 0) << source.output;
  ASSERT_EQ(dir.dtrain("export " + ckpt(kMlpStepsPerEpoch) + " -o w.safetensors").exit_code, 0);
  // At a learning rate of 1e-30 the updates vanish in float32 rounding: the run keeps the file's
  // weights, and its test results are the source's.
  const CommandResult tuned = dir.dtrain(
      "train run.yaml train.init_from=w.safetensors optimizer.lr=1e-30 train.checkpoint_dir=tuned");
  ASSERT_EQ(tuned.exit_code, 0) << tuned.output;
  EXPECT_THAT(tuned.output,
              HasSubstr("initialised the model's 4 parameters and buffers from w.safetensors"));
  EXPECT_EQ(final_line(tuned.output).accuracy, final_line(source.output).accuracy);
  EXPECT_EQ(final_line(tuned.output).loss, final_line(source.output).loss);
  // Without it, the same run starts from the seed's initialisation.
  const CommandResult fresh =
      dir.dtrain("train run.yaml optimizer.lr=1e-30 train.checkpoint_dir=fresh");
  ASSERT_EQ(fresh.exit_code, 0) << fresh.output;
  EXPECT_NE(final_line(fresh.output).loss, final_line(source.output).loss);
}

TEST(FeaturesInit, WeightsOfAnotherModelAreRefusedListingEveryMismatch) {
  RunDir dir;
  dir.write("run.yaml", kMlpConfig);
  ASSERT_EQ(dir.dtrain("train run.yaml").exit_code, 0);
  ASSERT_EQ(dir.dtrain("export " + ckpt(kMlpStepsPerEpoch) + " -o w.safetensors").exit_code, 0);
  const CommandResult r = dir.dtrain(
      "train run.yaml 'model.hidden=[16, 4]' train.init_from=w.safetensors "
      "train.checkpoint_dir=other");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("train.init_from: w.safetensors does not fit the model"));
  EXPECT_THAT(r.output, HasSubstr("3.weight: [10, 16] in the file, [4, 16] in the model"));
  EXPECT_THAT(r.output, HasSubstr("missing 5.weight [10, 4]"));
  EXPECT_THAT(r.output, Not(HasSubstr("final:")));
  const std::filesystem::path other = dir / "other";
  EXPECT_TRUE(!std::filesystem::exists(other) || std::filesystem::is_empty(other))
      << "a refused start wrote a checkpoint";

  const CommandResult check =
      dir.dtrain("config check run.yaml train.init_from=missing.safetensors");
  EXPECT_EQ(check.exit_code, 2) << check.output;
  EXPECT_THAT(check.output, HasSubstr("train.init_from: safetensors file 'missing.safetensors'"));
}

// ---------------------------------------------------------------------------------------------
// optimizer.no_decay and optimizer.clip_grad_norm.

TEST(FeaturesOptimizer, NoDecayEntryMatchingNoParameterIsNamedWithTheParameters) {
  RunDir dir;
  dir.write("run.yaml", kMlpConfig);
  const CommandResult r =
      dir.dtrain("train run.yaml optimizer.weight_decay=0.01 'optimizer.no_decay=[bias, bogus]'");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("optimizer.no_decay: 'bogus' matches no parameter"));
  EXPECT_THAT(r.output, HasSubstr("1.weight, 1.bias, 3.weight, 3.bias"));
  EXPECT_THAT(r.output, Not(HasSubstr("final:")));
  EXPECT_TRUE(dir.checkpoints().empty());
}

/// The exported tensor bytes of a fresh run of kMlpConfig with `overrides`.
std::string mlp_weights(const std::string& overrides) {
  RunDir dir;
  dir.write("run.yaml", kMlpConfig);
  const CommandResult r = dir.dtrain("train run.yaml " + overrides);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(final_line(r.output).steps, kMlpStepsPerEpoch);
  const std::string tensors = dir.exported_tensors(ckpt(kMlpStepsPerEpoch));
  EXPECT_FALSE(tensors.empty()) << overrides;
  return tensors;
}

TEST(FeaturesOptimizer, NoDecayOnBiasesMattersOnlyWithWeightDecay) {
  const std::string decayed = mlp_weights("optimizer.weight_decay=0.01");
  const std::string masked = mlp_weights("optimizer.weight_decay=0.01 'optimizer.no_decay=[bias]'");
  EXPECT_FALSE(decayed == masked) << "no_decay: [bias] changed nothing";
  EXPECT_FALSE(decayed == mlp_weights("")) << "weight_decay changed nothing";
  EXPECT_TRUE(mlp_weights("optimizer.weight_decay=0") ==
              mlp_weights("optimizer.weight_decay=0 'optimizer.no_decay=[bias]'"))
      << "without weight decay the mask must not change the weights";
}

TEST(FeaturesOptimizer, ClipGradNormTinyChangesTheRunHugeDoesNot) {
  const std::string plain = mlp_weights("");
  EXPECT_FALSE(plain == mlp_weights("optimizer.clip_grad_norm=1e-3"));
  EXPECT_TRUE(plain == mlp_weights("optimizer.clip_grad_norm=1e9"))
      << "a norm bound that is never reached must leave the weights bit-identical";
}

// ---------------------------------------------------------------------------------------------
// Early stopping. With lr 1e-9 the test accuracy after epoch 1 never changes, so patience 1 runs
// out at the evaluation after epoch 2.

const std::string kStall =
    " train.epochs=5 optimizer.lr=1e-9 train.early_stop_patience=1 schedule.type=constant";

TEST(FeaturesEarlyStop, StopsWhenAccuracyStallsAndKeepsTheBestModel) {
  RunDir dir;
  dir.write("run.yaml", kMlpConfig);
  const CommandResult r = dir.dtrain("train run.yaml" + kStall);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("early stop after epoch 2: no better test accuracy for 1 "
                                  "evaluations; the best model is checkpoints/best.dtck"));
  const FinalLine f = final_line(r.output);
  EXPECT_EQ(f.steps, 2 * kMlpStepsPerEpoch);
  EXPECT_LT(f.steps, 5 * kMlpStepsPerEpoch);
  ASSERT_TRUE(dir.exists("checkpoints/best.dtck"));
  EXPECT_EQ(train::load_checkpoint(dir / "checkpoints/best.dtck").step, kMlpStepsPerEpoch);
  const CommandResult e = dir.dtrain("eval checkpoints/best.dtck");
  ASSERT_EQ(e.exit_code, 0) << e.output;
  EXPECT_THAT(e.output, HasSubstr("eval: test_accuracy=" + f.accuracy + " "));

  // Without patience the same run goes all five epochs.
  RunDir full;
  full.write("run.yaml", kMlpConfig);
  const CommandResult all = full.dtrain("train run.yaml" + kStall + " train.early_stop_patience=0");
  ASSERT_EQ(all.exit_code, 0) << all.output;
  EXPECT_EQ(final_line(all.output).steps, 5 * kMlpStepsPerEpoch);
  EXPECT_THAT(all.output, Not(HasSubstr("early stop")));
  EXPECT_FALSE(full.exists("checkpoints/best.dtck"));
}

TEST(FeaturesEarlyStop, RunStoppedAtAnEpochEndResumesToTheSameEarlyStop) {
  RunDir dir;
  dir.write("run.yaml", kMlpConfig);
  const CommandResult first = dir.dtrain("train run.yaml train.stop_at_step=16" + kStall);
  ASSERT_EQ(first.exit_code, 0) << first.output;
  const CommandResult second = dir.dtrain("train run.yaml" + kStall);
  ASSERT_EQ(second.exit_code, 0) << second.output;
  EXPECT_THAT(second.output, HasSubstr("resuming from " + ckpt(16)));
  EXPECT_THAT(second.output, HasSubstr("early stop after epoch 2:"));
  EXPECT_EQ(final_line(second.output).steps, 2 * kMlpStepsPerEpoch);
}

TEST(FeaturesEarlyStop, EarlyStoppedRunLeavesACheckpointOfItsLastStep) {
  RunDir dir;
  dir.write("run.yaml", kMlpConfig);
  const CommandResult r = dir.dtrain("train run.yaml" + kStall);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_EQ(final_line(r.output).steps, 2 * kMlpStepsPerEpoch);
  EXPECT_TRUE(dir.exists(ckpt(2 * kMlpStepsPerEpoch)));
  const CommandResult again = dir.dtrain("train run.yaml" + kStall);
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_THAT(again.output, HasSubstr("resuming from " + ckpt(2 * kMlpStepsPerEpoch)));
  EXPECT_EQ(final_line(again.output).steps, 2 * kMlpStepsPerEpoch);
}

// ---------------------------------------------------------------------------------------------
// Datasets from config: npy arrays, CIFAR-10 binaries, augmentation.

/// A version 1.0 .npy file: magic, version, little-endian header length, the header dict padded
/// with spaces to a multiple of 64 bytes (ending in '\n'), then the raw little-endian data.
std::string npy_file(const std::string& descr, const std::vector<int64_t>& shape,
                     const std::string& raw) {
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < shape.size(); ++i) dict += (i ? ", " : "") + std::to_string(shape[i]);
  dict += shape.size() == 1 ? ",), }" : "), }";
  const size_t fixed = 6 + 2 + 2;  // magic, version, header length
  while ((fixed + dict.size() + 1) % 64 != 0) dict += ' ';
  dict += '\n';
  std::string out = "\x93NUMPY";
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(dict.size() & 0xff);
  out += static_cast<char>(dict.size() >> 8);
  return out + dict + raw;
}

template <class T>
std::string raw_bytes(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

/// x [n, 4] float32 in [-1, 1), y [n] int64: the index of x's largest feature (4 classes).
void write_npy_split(const RunDir& dir, const std::string& prefix, int64_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<float> x(static_cast<size_t>(n * 4));
  std::vector<int64_t> y(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < 4; ++j) {
      x[static_cast<size_t>(i * 4 + j)] = static_cast<float>(gen() % 2000) / 1000.0f - 1.0f;
    }
    int64_t best = 0;
    for (int64_t j = 1; j < 4; ++j) {
      if (x[static_cast<size_t>(i * 4 + j)] > x[static_cast<size_t>(i * 4 + best)]) best = j;
    }
    y[static_cast<size_t>(i)] = best;
  }
  dir.write(prefix + "_x.npy", npy_file("<f4", {n, 4}, raw_bytes(x)));
  dir.write(prefix + "_y.npy", npy_file("<i8", {n}, raw_bytes(y)));
}

const std::string kNpyConfig =
    "model: {type: mlp, hidden: [32]}\n"
    "data:\n"
    "  name: npy\n"
    "  train_x: train_x.npy\n"  // line 4
    "  train_y: train_y.npy\n"
    "  test_x: test_x.npy\n"
    "  test_y: test_y.npy\n"
    "optimizer: {lr: 0.1}\n"
    "train: {epochs: 4, batch_size: 32, threads: 1, checkpoint_dir: checkpoints}\n" +
    kQuietLog;

TEST(FeaturesData, NpyArraysTrainAnMlp) {
  RunDir dir;
  write_npy_split(dir, "train", 1024, 1);
  write_npy_split(dir, "test", 256, 2);
  dir.write("run.yaml", kNpyConfig);
  const CommandResult r = dir.dtrain("train run.yaml");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const FinalLine f = final_line(r.output);
  EXPECT_EQ(f.steps, 4 * 1024 / 32);
  // Four classes: chance is 0.25; the largest of four features is easy to learn.
  EXPECT_GT(std::stod(f.accuracy), 0.6) << r.output;
}

TEST(FeaturesData, MisspeltNpyKeyIsNamedWithTheNearestKey) {
  RunDir dir;
  std::string config = kNpyConfig;
  config.replace(config.find("train_x:"), std::strlen("train_x:"), "trian_x:");
  dir.write("run.yaml", config);
  const CommandResult r = dir.dtrain("train run.yaml");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("run.yaml:4: "));
  EXPECT_THAT(r.output, HasSubstr("unknown key 'data.trian_x' (did you mean 'data.train_x'?)"));
  EXPECT_THAT(r.output, Not(HasSubstr("final:")));
}

/// `records` CIFAR-10 records (a label byte, then 3072 pixel bytes) from a seeded generator.
std::string cifar_records(int records, uint32_t seed) {
  std::mt19937 gen(seed);
  std::string out;
  for (int i = 0; i < records; ++i) {
    const int label = i % 10;
    out += static_cast<char>(label);
    for (int p = 0; p < 3072; ++p) out += static_cast<char>((gen() % 128) + label * 12);
  }
  return out;
}

TEST(FeaturesData, Cifar10BinariesTrainAnMlpForAnEpoch) {
  RunDir dir;
  std::filesystem::create_directories(dir / "cifar");
  for (int i = 1; i <= 5; ++i) {
    dir.write("cifar/data_batch_" + std::to_string(i) + ".bin", cifar_records(16, i));
  }
  dir.write("cifar/test_batch.bin", cifar_records(20, 9));
  dir.write("run.yaml",
            "model: {type: mlp, hidden: [16]}\n"
            "data: {name: cifar10, path: cifar}\n"
            "train: {epochs: 1, batch_size: 8, threads: 1, checkpoint_dir: checkpoints}\n" +
                kQuietLog);
  const CommandResult r = dir.dtrain("train run.yaml");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(final_line(r.output).steps, 5 * 16 / 8);
  const CommandResult e = dir.dtrain("eval " + ckpt(10));
  ASSERT_EQ(e.exit_code, 0) << e.output;
  EXPECT_THAT(e.output, HasSubstr(" examples=20\n"));
}

const std::string kAugment = "  crop_padding: 2\n  horizontal_flip: true\n";

std::string augmented_residual_config() {
  std::string config = residual_config(kResidualPlain);
  config.insert(config.find("train:"), kAugment);
  return config;
}

TEST(FeaturesData, AugmentedRunResumesExactly) {
  check_exact_resume([](const RunDir& d) { d.write("run.yaml", augmented_residual_config()); }, 45,
                     kResidualSteps);
}

TEST(FeaturesData, AugmentationChangesTheRun) {
  RunDir plain, augmented;
  plain.write("run.yaml", residual_config(kResidualPlain));
  augmented.write("run.yaml", augmented_residual_config());
  ASSERT_EQ(plain.dtrain("train run.yaml train.epochs=1").exit_code, 0);
  ASSERT_EQ(augmented.dtrain("train run.yaml train.epochs=1").exit_code, 0);
  EXPECT_FALSE(plain.exported_tensors(ckpt(32)) == augmented.exported_tensors(ckpt(32)));
}

// ---------------------------------------------------------------------------------------------
// A one-process strategy in a job of several processes.

TEST(FeaturesSafety, SingleStrategyInAMultiProcessJobIsRefusedOnEveryRank) {
  RunDir dir;
  dir.write("run.yaml", kMlpConfig);
  // Launched as a program, so the launcher's own check of the config does not step in first.
  const CommandResult r =
      dir.dtrain("launch --nproc-per-node 2 -- '" + std::string(DTRAIN_EXECUTABLE) +
                 "' train run.yaml strategy.type=single");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("strategy.type single trains in one process, but this job has 2 "
                                  "processes"));
  EXPECT_THAT(r.output, HasSubstr("exited with status 2"));
  EXPECT_TRUE(dir.checkpoints().empty()) << "nothing may be written";
}

// ---------------------------------------------------------------------------------------------
// Non-finite values: stop with the step named, or skip the step.

TEST(FeaturesNonFinite, StopNamesTheStepAndSkipStepKeepsTheParametersFinite) {
  // A learning rate this large makes the second step's loss and gradients overflow.
  const std::string diverge = "train run.yaml optimizer.lr=1e30 optimizer.momentum=0";
  RunDir stop;
  stop.write("run.yaml", kMlpConfig);
  const CommandResult stopped = stop.dtrain(diverge);
  EXPECT_EQ(stopped.exit_code, 1) << stopped.output;
  EXPECT_THAT(stopped.output, HasSubstr("train: the loss became"));
  EXPECT_THAT(stopped.output, HasSubstr("train.on_nonfinite: skip_step skips such steps"));

  // Anomaly mode names the step and the op whose backward produced the first NaN or Inf.
  RunDir anomaly;
  anomaly.write("run.yaml", kMlpConfig);
  const CommandResult detected = anomaly.dtrain(diverge + " train.detect_anomaly=true");
  EXPECT_EQ(detected.exit_code, 1) << detected.output;
  EXPECT_THAT(detected.output, ContainsRegex("train: step [0-9]+ \\(train.detect_anomaly\\): "
                                             "anomaly: [A-Za-z]+Backward returned NaN or Inf"));
  EXPECT_THAT(detected.output, HasSubstr("the forward op was"));

  RunDir skip;
  skip.write("run.yaml", kMlpConfig);
  const CommandResult skipped = skip.dtrain(diverge + " train.on_nonfinite=skip_step");
  ASSERT_EQ(skipped.exit_code, 0) << skipped.output;
  EXPECT_THAT(skipped.output, HasSubstr("the step is skipped (train.on_nonfinite: skip_step)"));
  EXPECT_THAT(skipped.output, HasSubstr("final: "));
  // Skipped steps never reach the parameters: the final checkpoint holds only finite values.
  const std::vector<std::string> saved = skip.checkpoints();
  ASSERT_FALSE(saved.empty());
  const train::CheckpointData c =
      train::load_checkpoint((skip.path() / "checkpoints" / saved[0]).string());
  for (const auto& [name, t] : c.model) {
    for (const float v : t.to_vector<float>()) ASSERT_TRUE(std::isfinite(v)) << name;
  }
}

}  // namespace
}  // namespace dtrain
