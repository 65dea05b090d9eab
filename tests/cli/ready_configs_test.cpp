// The ready configs that train models written as layer lists: each passes `config check` (which
// runs the shape inference of its layers) and trains a few steps as its comment says to start it.
// Their accuracy figures come from full runs (docs/training.md), not from these tests.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "cli/run_util.h"
#include "train/scratch_dir.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;
using testutil::CommandResult;
using testutil::run_dtrain;
using testutil::source_path;

const std::string kQuiet =
    " log.progress=off log.tensorboard=false train.checkpoint_dir=ck log.dir=logs";

bool have(const char* path) { return std::filesystem::exists(path); }

TEST(ReadyConfigs, LayerListConfigsPassTheCheck) {
  for (const char* config :
       {"configs/fashion_mnist_resnet.yaml", "configs/char_transformer.yaml"}) {
    const CommandResult r = run_dtrain("config check '" + source_path(config) + "'");
    ASSERT_EQ(r.exit_code, 0) << config << ":\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr("type: sequential")) << config;
  }
}

TEST(ReadyConfigs, ResnetTrainsAFewSteps) {
  if (!have("/usr/share/datasets/fashion-mnist")) {
    GTEST_SKIP() << "Fashion-MNIST is not installed (scripts/setup.sh installs "
                    "dataset-fashion-mnist)";
  }
  testutil::ScratchDir dir;
  const CommandResult r = run_dtrain(
      "train '" + source_path("configs/fashion_mnist_resnet.yaml") + "' train.max_steps=3" + kQuiet,
      dir.path().string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr(" steps=3 "));
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "ck" / "ckpt-0000000003.dtck"));
}

TEST(ReadyConfigs, CharTransformerTrainsWithDdpUnderTheLauncher) {
  if (!have("/usr/share/games/fortunes/songs-poems")) {
    GTEST_SKIP() << "the corpus is not installed (scripts/setup.sh installs Debian's fortunes)";
  }
  testutil::ScratchDir dir;
  const CommandResult r = run_dtrain("launch '" + source_path("configs/char_transformer.yaml") +
                                         "' train.max_steps=3 data.cache_dir=cache" + kQuiet,
                                     dir.path().string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("started ranks 0-1 of 2"));
  EXPECT_THAT(r.output, HasSubstr(" steps=3 "));
  // The corpus was tokenized into the cache, not copied anywhere else.
  EXPECT_FALSE(std::filesystem::is_empty(dir.path() / "cache"));
}

}  // namespace
}  // namespace dtrain
