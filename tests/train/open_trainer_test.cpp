// The open Trainer from C++: TrainerParts (a model factory, data sets and a loss of the caller's)
// through train::fit, with checkpoints and exact resume as for configs; and the registries' rules
// (names, keys, typed option values).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "dtrain/data/synthetic.h"
#include "dtrain/nn/layers.h"
#include "dtrain/train/checkpoint.h"
#include "dtrain/train/registry.h"
#include "dtrain/train/run.h"
#include "train/scratch_dir.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;
using testutil::ScratchDir;

/// A two-layer network that is not a Sequential: what a user's own Module looks like.
class TwoLayers : public nn::Module {
 public:
  TwoLayers(int64_t in, int64_t classes, Generator& gen) {
    fc1_ = register_module("fc1", std::make_shared<nn::Linear>(in, 32, true, gen));
    fc2_ = register_module("fc2", std::make_shared<nn::Linear>(32, classes, true, gen));
  }
  std::string describe() const override { return "TwoLayers"; }
  Tensor forward(const Tensor& x) override { return fc2_->forward(relu(fc1_->forward(x))); }

 private:
  std::shared_ptr<nn::Linear> fc1_, fc2_;
};

train::TrainerParts parts(int* model_calls = nullptr, int* loss_calls = nullptr) {
  auto all = std::make_shared<data::SyntheticDataset>(1280, Shape{16}, 4, /*seed=*/5);
  train::TrainerParts p;
  p.train_set = all;
  p.test_set = std::make_shared<data::SyntheticDataset>(256, Shape{16}, 4, /*seed=*/5);
  p.model = [model_calls](const train::ModelContext& c) -> nn::ModulePtr {
    EXPECT_EQ(c.example_shape, Shape{16});
    EXPECT_EQ(c.num_classes, 4);
    if (model_calls) ++*model_calls;
    Generator gen(c.seed, 0);
    return std::make_shared<TwoLayers>(16, c.num_classes, gen);
  };
  p.loss = [loss_calls](const Tensor& output, const Tensor& target) {
    if (loss_calls) ++*loss_calls;
    return cross_entropy(output, target);
  };
  return p;
}

/// Three epochs of 40 steps; `stop_at_step` > 0 stops there, as if preempted.
train::Config config(const std::filesystem::path& dir, int64_t stop_at_step = 0) {
  return train::parse_config(
      "optimizer: {type: sgd, lr: 0.1, momentum: 0.9}\n"
      "train: {epochs: 3, batch_size: 32, threads: 1, checkpoint_every_steps: 0,\n"
      "        stop_at_step: " +
          std::to_string(stop_at_step) + ", checkpoint_dir: '" + (dir / "ck").string() +
          "'}\n"
          "log: {dir: '" +
          (dir / "logs").string() + "', progress: 'off', tensorboard: false}\n",
      "open_trainer.yaml");
}

TEST(OpenTrainer, FitTrainsTheCallersModelDataAndLossWithCheckpoints) {
  ScratchDir dir;
  int model_calls = 0, loss_calls = 0;
  const train::TrainResult r = train::fit(config(dir.path()), parts(&model_calls, &loss_calls));
  EXPECT_EQ(model_calls, 1);  // one replica
  EXPECT_GT(loss_calls, 3 * 1280 / 32);
  EXPECT_EQ(r.steps, 3 * 1280 / 32);
  EXPECT_EQ(r.test.examples, 256);
  EXPECT_GT(r.test.accuracy, 0.5);  // four classes: chance is 0.25
  const auto saved = train::list_checkpoints((dir.path() / "ck").string());
  ASSERT_EQ(saved.size(), 1u);
  const train::CheckpointData c = train::load_checkpoint(saved[0]);
  ASSERT_EQ(c.model.size(), 4u);
  EXPECT_EQ(c.model[0].first, "fc1.weight");  // the caller's module names
}

// TwoLayers 16-32-4: forward 2 * (16*32 + 32*4) = 1280 FLOPs a sample; backward the two weight
// gradients (1024 + 256) and fc2's input gradient (256), none for the data. The three
// evaluations' forward passes (256 samples each) are not training and must not be counted.
TEST(OpenTrainer, GflopsCountTheTrainingStepsMatrixProductsOnly) {
  ScratchDir dir;
  const train::TrainResult r = train::fit(config(dir.path()), parts());
  ASSERT_GT(r.samples_per_sec, 0);
  EXPECT_NEAR(r.gflops * 1e9 / r.samples_per_sec, 1280 + 1024 + 256 + 256, 1e-6);
  EXPECT_THAT(r.final_line(), HasSubstr(" gflops="));
}

TEST(OpenTrainer, StoppedAndResumedEndsWithTheSameWeights) {
  ScratchDir straight, parts_dir;
  train::fit(config(straight.path()), parts());
  const train::TrainResult stopped = train::fit(config(parts_dir.path(), 50), parts());
  EXPECT_TRUE(stopped.stopped_early);
  EXPECT_EQ(stopped.steps, 50);
  const train::TrainResult resumed = train::fit(config(parts_dir.path()), parts());
  EXPECT_EQ(resumed.steps, 3 * 1280 / 32);
  const auto a =
      train::load_checkpoint(train::list_checkpoints((straight.path() / "ck").string())[0]);
  const auto b =
      train::load_checkpoint(train::list_checkpoints((parts_dir.path() / "ck").string())[0]);
  ASSERT_EQ(a.step, b.step);
  ASSERT_EQ(a.model.size(), b.model.size());
  for (size_t i = 0; i < a.model.size(); ++i) {
    EXPECT_EQ(a.model[i].second.to_vector<float>(), b.model[i].second.to_vector<float>())
        << a.model[i].first;
  }
}

TEST(OpenTrainer, DataSetsComeInPairs) {
  ScratchDir dir;
  train::TrainerParts p = parts();
  p.test_set = nullptr;
  try {
    train::fit(config(dir.path()), p);
    FAIL() << "a training set without a test set was accepted";
  } catch (const ValueError& e) {
    EXPECT_THAT(e.message(), HasSubstr("give both a training and a test set, or neither"));
  }
}

TEST(Registry, NamesAndKeysAreCheckedWhenRegistering) {
  const train::ModelFactory any = [](const train::ModelContext&) -> nn::ModulePtr {
    return nullptr;
  };
  EXPECT_TRUE(train::register_model("open_trainer_test_net", any,
                                    {train::OptionKey::integer("width", 8, "width", 1, 64)}));
  ASSERT_NE(train::find_model("open_trainer_test_net"), nullptr);
  try {
    train::register_model("open_trainer_test_net", any);
    FAIL() << "a name registered twice was accepted";
  } catch (const Error& e) {
    EXPECT_THAT(e.message(), HasSubstr("the name is taken"));
  }
  try {
    train::register_model("open_trainer_test_other", any,
                          {train::OptionKey::integer("hidden", 1, "")});
    FAIL() << "a key that is a built-in model key was accepted";
  } catch (const Error& e) {
    EXPECT_THAT(e.message(), HasSubstr("'hidden' is already model.hidden, a built-in key"));
  }
  // The registered model's keys are read, checked and completed by the config.
  const train::Config c = train::parse_config("model: {type: open_trainer_test_net}\n", "reg.yaml");
  EXPECT_EQ(c.model.options.integer("width"), 8);
  EXPECT_THAT(c.to_yaml(), HasSubstr("  width: 8\n"));
  try {
    train::parse_config("model: {type: open_trainer_test_net, width: 65}\n", "reg.yaml");
    FAIL() << "an out-of-range option was accepted";
  } catch (const train::ConfigError& e) {
    EXPECT_THAT(e.message(), HasSubstr("reg.yaml:1: model.width: 65 is out of range"));
  }
}

TEST(Registry, OptionValuesReadAsTheirKinds) {
  train::Options o("data");
  o.set("n", "12");
  o.set("x", "0.25");
  o.set("on", "true");
  o.set("name", "abc");
  o.set("list", "[1, 2, 3]");
  EXPECT_EQ(o.integer("n"), 12);
  EXPECT_DOUBLE_EQ(o.real("x"), 0.25);
  EXPECT_TRUE(o.boolean("on"));
  EXPECT_EQ(o.string("name"), "abc");
  EXPECT_EQ(o.integers("list"), (std::vector<int64_t>{1, 2, 3}));
  try {
    o.integer("missing");
    FAIL() << "an undeclared key was read";
  } catch (const ValueError& e) {
    EXPECT_THAT(e.message(), HasSubstr("data.missing: not a key of this data entry"));
  }
}

}  // namespace
}  // namespace dtrain
