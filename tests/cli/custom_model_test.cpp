// A user's own program (examples/custom_model: its model and dataset registered by name, the
// command line from cli_main) trained with ddp under `dtrain launch -- PROGRAM`, resumed exactly,
// checked like built-in configs; and the launcher running programs that are not dtrain at all.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>

#include "cli/run_util.h"
#include "train/scratch_dir.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;
using testutil::CommandResult;
using testutil::run_dtrain;
using testutil::run_shell;

const std::string kSpirals = DTRAIN_SPIRALS_EXECUTABLE;
const std::string kQuiet = " log.progress=off log.tensorboard=false";

class CustomModel : public testutil::ScratchDir, public ::testing::Test {
 protected:
  void SetUp() override {
    std::filesystem::copy_file(testutil::source_path("examples/custom_model/spirals.yaml"),
                               path() / "spirals.yaml");
  }
  CommandResult spirals(const std::string& args) {
    return run_shell("OMP_NUM_THREADS=1 timeout 300 '" + kSpirals + "' " + args, path());
  }
  CommandResult launch(const std::string& args) {
    return run_dtrain("launch --nproc-per-node 2 -- '" + kSpirals + "' " + args, path());
  }
  std::string file(const std::string& name) {
    std::ifstream in(path() / name, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
};

double final_accuracy(const std::string& output) {
  std::smatch m;
  static const std::regex re("final: test_accuracy=([0-9.]+) ");
  if (!std::regex_search(output, m, re)) {
    ADD_FAILURE() << "no final line in:\n" << output;
    return 0;
  }
  return std::stod(m[1]);
}

TEST_F(CustomModel, LaunchedProgramTrainsItsOwnModelAndDataWithDdp) {
  const CommandResult r = launch("train spirals.yaml train.epochs=4" + kQuiet);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // Two ranks ran the user's program; rank 0 reports for the job.
  EXPECT_THAT(r.output, HasSubstr("started ranks 0-1 of 2"));
  EXPECT_THAT(r.output, HasSubstr("all 2 worker(s) of node 0 finished"));
  EXPECT_GT(final_accuracy(r.output), 0.9) << r.output;
  EXPECT_TRUE(std::filesystem::exists(path() / "spirals_checkpoints"));
}

TEST_F(CustomModel, InterruptedRunResumesToTheSameWeights) {
  const std::string args =
      "train spirals.yaml train.epochs=2 train.checkpoint_every_steps=0" + kQuiet;
  ASSERT_EQ(launch(args + " train.checkpoint_dir=whole").exit_code, 0);
  const CommandResult first = launch(args + " train.checkpoint_dir=parts train.stop_at_step=31");
  ASSERT_EQ(first.exit_code, 0) << first.output;
  EXPECT_THAT(first.output, HasSubstr("stopped at step 31"));
  const CommandResult second = launch(args + " train.checkpoint_dir=parts");
  ASSERT_EQ(second.exit_code, 0) << second.output;
  EXPECT_THAT(second.output, HasSubstr("resuming from"));
  // The final checkpoints of both runs, exported by the user's program: identical bytes.
  for (const std::string dir : {"whole", "parts"}) {
    std::string last;
    for (const auto& e : std::filesystem::directory_iterator(path() / dir)) {
      if (e.path().extension() == ".dtck" && e.path().string() > last) last = e.path().string();
    }
    ASSERT_FALSE(last.empty()) << dir;
    const CommandResult exported = spirals("export '" + last + "' -o " + dir + ".safetensors");
    ASSERT_EQ(exported.exit_code, 0) << exported.output;
  }
  const std::string whole = file("whole.safetensors"), parts = file("parts.safetensors");
  EXPECT_EQ(testutil::safetensors_data(whole), testutil::safetensors_data(parts));
  EXPECT_THAT(whole, HasSubstr("block1.weight"));  // the user's module names
}

TEST_F(CustomModel, OwnKeysAreCheckedLikeBuiltInOnes) {
  const CommandResult typo = spirals("config check spirals.yaml model.widht=32");
  EXPECT_EQ(typo.exit_code, 2);
  EXPECT_THAT(typo.output, HasSubstr("unknown key 'model.widht' (did you mean 'model.width'?)"));
  const CommandResult range = spirals("config check spirals.yaml data.arms=40");
  EXPECT_EQ(range.exit_code, 2);
  EXPECT_THAT(range.output,
              HasSubstr("data.arms: 40 is out of range; allowed: integer in [2, 16]"));
  const CommandResult good = spirals("config check spirals.yaml model.width=32");
  ASSERT_EQ(good.exit_code, 0) << good.output;
  EXPECT_THAT(good.output, HasSubstr("  width: 32\n"));
  EXPECT_THAT(good.output, HasSubstr("  noise: 0.04\n"));  // a default filled in
  // The built-in executable does not know the user's model.
  const CommandResult builtin = run_dtrain("config check spirals.yaml", path());
  EXPECT_EQ(builtin.exit_code, 2);
  EXPECT_THAT(builtin.output,
              HasSubstr("model.type: 'spiral_net' is not one of mlp | cnn | sequential"));
  const CommandResult reference = spirals("config reference");
  EXPECT_THAT(reference.output, HasSubstr("### model `spiral_net`"));
  EXPECT_THAT(reference.output, HasSubstr("| `data.noise` | float | `0.04` |"));
}

TEST_F(CustomModel, ProgramLaunchesItselfThroughItsOwnCommandLine) {
  const CommandResult r = spirals("launch spirals.yaml --nproc-per-node 2 train.epochs=1" + kQuiet);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("final: test_accuracy="));
}

TEST(LaunchProgram, RunsAnyProgramWithTheEnvironmentContract) {
  const CommandResult r = run_dtrain(
      "launch --nproc-per-node 2 -- /bin/sh -c 'echo \"worker $DTRAIN_RANK of "
      "$DTRAIN_WORLD_SIZE local $DTRAIN_LOCAL_RANK\"'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("worker 0 of 2 local 0"));
  EXPECT_THAT(r.output, HasSubstr("worker 1 of 2 local 1"));
}

TEST(LaunchProgram, FailingProgramIsRestartedAndNamedAsTheRootCause) {
  // Rank 1 fails in every attempt; the launcher restarts once, then reports it.
  const CommandResult r = run_dtrain(
      "launch --nproc-per-node 2 --max-restarts 1 -- /bin/sh -c "
      "'echo attempt $DTRAIN_RESTART_COUNT; exit $DTRAIN_RANK'");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("attempt 1"));
  EXPECT_THAT(r.output, HasSubstr("rank 1"));
  EXPECT_THAT(r.output, HasSubstr("exited with status 1"));
}

TEST(LaunchProgram, MissingProgramIsAUsageError) {
  const CommandResult r = run_dtrain("launch --nproc-per-node 2 -- ./no_such_trainer --flag");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("'./no_such_trainer' is not an executable file"));
  const CommandResult nothing = run_dtrain("launch --nproc-per-node 2");
  EXPECT_EQ(nothing.exit_code, 2);
  EXPECT_THAT(nothing.output, HasSubstr("give a config to train"));
  const CommandResult stray = run_dtrain("train x.yaml -- ./prog");
  EXPECT_EQ(stray.exit_code, 2);
}

}  // namespace
}  // namespace dtrain
