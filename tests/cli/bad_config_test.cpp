// Bad configs and overrides through the real `dtrain` executable: each exits 2 with one message
// that names the file and line (or the override), the key, what is allowed and the nearest name.
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "cli/run_util.h"
#include "train/scratch_dir.h"

namespace dtrain {
namespace {

using testutil::run_dtrain;

struct BadConfig {
  std::string name;                    // the test's name
  std::string yaml;                    // written to bad.yaml in an empty directory
  std::vector<std::string> overrides;  // section.key=value arguments after the file
  std::string expected;                // a fragment of the one problem reported
  bool write_file = true;              // false: bad.yaml does not exist
};

std::ostream& operator<<(std::ostream& os, const BadConfig& c) { return os << c.name; }

const std::vector<BadConfig>& cases() {
  static const std::vector<BadConfig> all = {
      // Names: unknown keys and sections get the nearest valid name.
      {"UnknownKeySuggestsNearest",
       "train:\n  epoch: 3\n",
       {},
       "bad.yaml:2: unknown key 'train.epoch' (did you mean 'train.epochs'?)"},
      {"UnknownSectionSuggestsNearest",
       "model:\n  type: mlp\ntrian:\n  epochs: 3\n",
       {},
       "bad.yaml:3: unknown section 'trian' (did you mean 'train'?)"},
      {"ModelTypeSuggestsNearest",
       "model:\n  type: mpl\n",
       {},
       "bad.yaml:2: model.type: 'mpl' is not one of mlp | cnn | sequential (did you mean 'mlp'?)"},
      {"OptimizerTypeSuggestsNearest",
       "optimizer:\n  lr: 0.1\n  type: sgdd\n",
       {},
       "bad.yaml:3: optimizer.type: 'sgdd' is not one of sgd | adam | adamw | rmsprop "
       "(did you mean 'sgd'?)"},
      {"ProgressModeSuggestsNearest",
       "log:\n  progress: bra\n",
       {},
       "bad.yaml:2: log.progress: 'bra' is not one of auto | bar | lines | off "
       "(did you mean 'bar'?)"},
      // Types.
      {"IntGivenWord",
       "train:\n  epochs: abc\n",
       {},
       "bad.yaml:2: train.epochs: expected an integer >= 1, got 'abc'"},
      {"IntGivenFraction",
       "train:\n  batch_size: 2.5\n",
       {},
       "bad.yaml:2: train.batch_size: expected an integer >= 1, got '2.5'"},
      {"IntTooLargeForInt64",
       "train:\n  epochs: 99999999999999999999\n",
       {},
       "bad.yaml:2: train.epochs: expected an integer >= 1, got '99999999999999999999'"},
      {"IntMissingValue",
       "train:\n  epochs:\n",
       {},
       "bad.yaml:2: train.epochs: expected an integer >= 1, got nothing"},
      {"FloatGivenWord",
       "optimizer:\n  lr: fast\n",
       {},
       "bad.yaml:2: optimizer.lr: expected a number > 0, got 'fast'"},
      {"BoolGivenWord",
       "model:\n  batch_norm: maybe\n",
       {},
       "bad.yaml:2: model.batch_norm: expected true or false, got 'maybe'"},
      {"StringGivenList",
       "model:\n  type: [mlp]\n",
       {},
       "bad.yaml:2: model.type: expected a string (a registered model: mlp | cnn | ...), got a "
       "list"},
      {"StringEmpty", "data:\n  path: \"\"\n", {}, "bad.yaml:2: data.path: must not be empty"},
      {"ListGivenScalar",
       "model:\n  hidden: 256\n",
       {},
       "bad.yaml:2: model.hidden: expected a list of integers >= 1 like [256, 128], got '256'"},
      {"ListGivenMapping",
       "model:\n  hidden: {a: 1}\n",
       {},
       "bad.yaml:2: model.hidden: expected a list of integers >= 1 like [256, 128], got a "
       "mapping"},
      {"ListElementWrongType",
       "model:\n  hidden: [256, abc]\n",
       {},
       "bad.yaml:2: model.hidden: element 1: expected an integer, got 'abc'"},
      {"ListElementOutOfRange",
       "model:\n  hidden: [256, 0]\n",
       {},
       "bad.yaml:2: model.hidden: element 1 is 0; allowed: list of integers >= 1"},
      {"ListEmptyWhereRequired",
       "data:\n  synthetic_shape: []\n",
       {},
       "bad.yaml:2: data.synthetic_shape: must not be empty"},
      {"ShapeWhoseProductOverflows",  // 3 * 6148914691236517206 wraps to 2 in int64
       "data:\n  synthetic_shape: [3, 6148914691236517206]\n",
       {},
       "bad.yaml:2: data.synthetic_shape: [3, 6148914691236517206]: the product of the "
       "dimensions overflows int64; allowed: at most 2147483648 elements in all"},
      // Ranges.
      {"BatchSizeZero",
       "train:\n  batch_size: 0\n",
       {},
       "bad.yaml:2: train.batch_size: 0 is out of range; allowed: integer >= 1"},
      {"ThreadsAboveMaximum",
       "train:\n  threads: 2000\n",
       {},
       "bad.yaml:2: train.threads: 2000 is out of range; allowed: integer in [0, 1024]"},
      {"LearningRateZero",
       "optimizer:\n  lr: 0\n",
       {},
       "bad.yaml:2: optimizer.lr: 0.0 is out of range; allowed: number > 0"},
      {"LearningRateNegative",
       "optimizer:\n  lr: -1\n",
       {},
       "bad.yaml:2: optimizer.lr: -1.0 is out of range; allowed: number > 0"},
      {"LearningRateNaN",
       "optimizer:\n  lr: .nan\n",
       {},
       "bad.yaml:2: optimizer.lr: nan is out of range"},
      {"DropoutAboveMaximum",
       "model:\n  dropout: 1.5\n",
       {},
       "bad.yaml:2: model.dropout: 1.5 is out of range; allowed: number >= 0 and <= 0.99"},
      {"MomentumAboveOne",
       "optimizer:\n  momentum: 2\n",
       {},
       "bad.yaml:2: optimizer.momentum: 2.0 is out of range; allowed: number >= 0 and <= 1"},
      // Structure.
      {"YamlSyntaxError",
       "model:\n  type: mlp\n\thidden: [64]\ntrain:\n  epochs: 3\n",
       {},
       "bad.yaml:3: YAML syntax error:"},
      {"YamlUnclosedList",
       "model:\n  hidden: [256, 128\ntrain:\n  epochs: 3\n",
       {},
       "bad.yaml:3: YAML syntax error: end of sequence flow not found"},
      {"TopLevelList",
       "- model\n- train\n",
       {},
       "bad.yaml:1: the config must be a mapping of sections (model, data, ...)"},
      {"TopLevelScalar",
       "just some text\n",
       {},
       "bad.yaml:1: the config must be a mapping of sections (model, data, ...)"},
      {"SectionNotMapping",
       "model:\n  type: mlp\ntrain: 5\n",
       {},
       "bad.yaml:3: section 'train' must be a mapping of keys"},
      {"SectionIsList",
       "train:\n  - epochs\n",
       {},
       "bad.yaml:2: section 'train' must be a mapping of keys"},
      {"SectionNameIsList",
       "[a, b]: 1\n",
       {},
       "bad.yaml:1: a section name must be a word (model, data, ...), got a list"},
      {"KeyIsList",
       "train:\n  [a, b]: 1\n",
       {},
       "bad.yaml:2: a key in section 'train' must be a word, got a list"},
      {"DuplicateKey",
       "train:\n  epochs: 1\n  epochs: 2\n",
       {},
       "bad.yaml:3: train.epochs: appears twice"},
      {"DuplicateSection",
       "train:\n  epochs: 1\nmodel:\n  type: mlp\ntrain:\n  batch_size: 8\n",
       {},
       "bad.yaml:5: section 'train' appears twice"},
      // Rules over several keys point at the line that set the key they name.
      {"CnnThreeChannels",
       "model:\n  type: cnn\n  channels: [8, 16, 32]\n",
       {},
       "bad.yaml:3: model.channels: cnn needs exactly two values (conv1 and conv2 output "
       "channels); got 3"},
      {"NesterovWithoutMomentum",
       "optimizer:\n  momentum: 0\n  nesterov: true\n",
       {},
       "bad.yaml:3: optimizer.nesterov: needs optimizer.momentum > 0 and optimizer.dampening = 0"},
      {"MultistepDecreasingMilestones",
       "schedule:\n  type: multistep\n  milestones: [300, 100]\n",
       {},
       "bad.yaml:3: schedule.milestones: must be increasing for multistep"},
      {"MultistepWithoutMilestones",
       "schedule:\n  type: multistep\n",
       {},
       "bad.yaml:2: schedule.milestones: multistep needs at least one milestone"},
      {"StopAtStepAfterMaxSteps",
       "train:\n  max_steps: 10\n  stop_at_step: 20\n",
       {},
       "bad.yaml:3: train.stop_at_step (20) is after train.max_steps (10)"},
      // Overrides.
      {"OverrideWithoutEquals",
       "train:\n  epochs: 1\n",
       {"train.epochs"},
       "override 'train.epochs': expected section.key=value, e.g. train.epochs=3"},
      {"OverrideWithoutSection",
       "train:\n  epochs: 1\n",
       {"epochs=3"},
       "override 'epochs=3': expected section.key=value, e.g. train.epochs=3"},
      {"OverrideUnknownKey",
       "train:\n  epochs: 1\n",
       {"train.epoch=3"},
       "override 'train.epoch=3': unknown key 'train.epoch' (did you mean 'train.epochs'?)"},
      {"OverrideUnknownSection",
       "train:\n  epochs: 1\n",
       {"trian.epochs=3"},
       "override 'trian.epochs=3': unknown section 'trian' (did you mean 'train'?)"},
      {"OverrideWrongType",
       "train:\n  epochs: 1\n",
       {"train.epochs=abc"},
       "override 'train.epochs=abc': train.epochs: expected an integer >= 1, got 'abc'"},
      {"OverrideOutOfRange",
       "train:\n  epochs: 1\n",
       {"model.dropout=1"},
       "override 'model.dropout=1': model.dropout: 1.0 is out of range"},
      {"OverrideInvalidYaml",
       "train:\n  epochs: 1\n",
       {"model.hidden=[1"},
       "override 'model.hidden=[1': the value is not valid YAML"},
      {"OverrideEmptyValue",
       "train:\n  epochs: 1\n",
       {"data.path="},
       "override 'data.path=': data.path: must not be empty"},
      {"OverrideBreaksRuleOverSeveralKeys",
       "model:\n  type: cnn\n",
       {"model.channels=[8,16,32]"},
       "override 'model.channels=[8,16,32]': model.channels: cnn needs exactly two values"},
      // Files.
      {"MissingFile",
       "",
       {},
       "bad.yaml: cannot read the config file (does it exist?)",
       /*write_file=*/false},
  };
  return all;
}

std::string quoted_overrides(const std::vector<std::string>& overrides) {
  std::string s;
  for (const auto& o : overrides) s += " '" + o + "'";
  return s;
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

/// Every case gets its own directory under one scratch directory for the suite (a parameterised
/// test's name holds '/', so ScratchDir's per-test name would nest).
class CaseDirs : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { root_ = std::make_unique<testutil::ScratchDir>(); }
  static void TearDownTestSuite() { root_.reset(); }

  /// A fresh directory holding bad.yaml (unless the case has no file).
  std::string case_dir(const BadConfig& c, const std::string& tag) {
    const std::filesystem::path dir = root_->path() / (c.name + "-" + tag);
    std::filesystem::create_directories(dir);
    if (c.write_file) testutil::write_bytes((dir / "bad.yaml").string(), c.yaml);
    return dir.string();
  }

  static std::unique_ptr<testutil::ScratchDir> root_;
};

std::unique_ptr<testutil::ScratchDir> CaseDirs::root_;

class BadConfigTest : public CaseDirs, public ::testing::WithParamInterface<BadConfig> {};

TEST_P(BadConfigTest, ConfigCheckExitsTwoWithOneProblem) {
  const BadConfig& c = GetParam();
  const auto r =
      run_dtrain("config check bad.yaml" + quoted_overrides(c.overrides), case_dir(c, "check"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("dtrain: 1 config problem:\n  "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(c.expected), std::string::npos)
      << "expected: " << c.expected << "\noutput: " << r.output;
  EXPECT_EQ(r.output.find("is valid"), std::string::npos) << r.output;
  if (c.overrides.empty()) {
    EXPECT_NE(r.output.find("bad.yaml"), std::string::npos) << r.output;
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, BadConfigTest, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

const BadConfig& find_case(const std::string& name) {
  for (const auto& c : cases()) {
    if (c.name == name) return c;
  }
  throw std::runtime_error("no bad-config case " + name);
}

/// `dtrain train` and `dtrain eval` validate before building anything: same exit code and message,
/// no training, nothing written.
class BadConfigTrain : public CaseDirs {};
class BadConfigReport : public CaseDirs {};

TEST_F(BadConfigTrain, TrainAndEvalRejectBeforeTraining) {
  for (const char* name : {"UnknownKeySuggestsNearest", "ModelTypeSuggestsNearest",
                           "YamlSyntaxError", "CnnThreeChannels", "OverrideWrongType",
                           "OverrideWithoutEquals", "StopAtStepAfterMaxSteps"}) {
    SCOPED_TRACE(name);
    const BadConfig& c = find_case(name);
    const std::string dir = case_dir(c, "train");
    // The synthetic set would make a real run fast; it must not start at all.
    const std::string synthetic = " data.name=synthetic log.progress=off";
    auto r = run_dtrain("train bad.yaml" + quoted_overrides(c.overrides) + synthetic, dir);
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find(c.expected), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("final:"), std::string::npos) << r.output;
    EXPECT_FALSE(std::filesystem::exists(std::filesystem::path(dir) / "checkpoints"));
    EXPECT_FALSE(std::filesystem::exists(std::filesystem::path(dir) / "runs"));

    r = run_dtrain(
        "eval bad.yaml" + quoted_overrides(c.overrides) + synthetic + " --checkpoint missing.dtck",
        dir);
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find(c.expected), std::string::npos) << r.output;
  }
}

TEST_F(BadConfigTrain, MissingConfigFileIsAUsageError) {
  const BadConfig& c = find_case("MissingFile");
  const auto r = run_dtrain("train bad.yaml log.progress=off", case_dir(c, "train"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  // CLI11's ExistingFile check names the file before anything else runs.
  EXPECT_NE(r.output.find("bad.yaml"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("does not exist"), std::string::npos) << r.output;
}

TEST_F(BadConfigReport, EveryProblemTogetherInOrder) {
  const BadConfig c{"SeveralProblems",
                    "model:\n"
                    "  name: x\n"               // 2: unknown key
                    "data:\n"                   //
                    "  nam: synthetic\n"        // 4: unknown key
                    "train:\n"                  //
                    "  batch_size: -3\n"        // 6: out of range
                    "  epochs: 0\n"             // 7: out of range
                    "  drop_last: sometimes\n"  // 8: not a bool
                    "optimizer:\n"
                    "  lr: 0.1\n",
                    {"train.seed=abc", "log.progres=off"},
                    /*expected=*/"see below"};
  const auto r =
      run_dtrain("config check bad.yaml" + quoted_overrides(c.overrides), case_dir(c, "check"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("dtrain: 7 config problems:\n"), std::string::npos) << r.output;
  // In file order, then the overrides in command-line order, one indented line each.
  const std::vector<std::string> lines = {
      "  bad.yaml:2: unknown key 'model.name' (did you mean 'model.type'?)",
      "  bad.yaml:4: unknown key 'data.nam' (did you mean 'data.name'?)",
      "  bad.yaml:6: train.batch_size: -3 is out of range; allowed: integer >= 1",
      "  bad.yaml:7: train.epochs: 0 is out of range; allowed: integer >= 1",
      "  bad.yaml:8: train.drop_last: expected true or false, got 'sometimes'",
      "  override 'train.seed=abc': train.seed: expected an integer >= 0, got 'abc'",
      "  override 'log.progres=off': unknown key 'log.progres' (did you mean 'log.progress'?)",
  };
  size_t previous = 0;
  for (const auto& line : lines) {
    const size_t at = r.output.find(line + "\n");
    ASSERT_NE(at, std::string::npos) << "missing: " << line << "\noutput: " << r.output;
    EXPECT_GT(at, previous) << "out of order: " << line;
    previous = at;
  }
  EXPECT_EQ(count(r.output, "\n  "), lines.size()) << r.output;
}

}  // namespace
}  // namespace dtrain
