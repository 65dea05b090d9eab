// YAML that yaml-cpp itself refuses, as the config loader reports it: the file (or override) and
// line at fault and what is wrong, in words that point at the cause.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "dtrain/train/config.h"
#include "train/scratch_dir.h"

namespace dtrain::train {
namespace {

using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::Not;

std::string config_error(const std::function<void()>& load) {
  try {
    load();
  } catch (const ConfigError& e) {
    return e.message();
  }
  return "(no ConfigError)";
}

TEST(ConfigYaml, NestingPastYamlCppsLimitNamesTheFileAndTheLimit) {
  testutil::ScratchDir dir;
  const std::string flow = dir / "deep.yaml";
  testutil::write_bytes(flow, "model: " + std::string(5000, '[') + std::string(5000, ']') + "\n");
  std::string block = "model:\n";
  for (int i = 0; i < 3000; ++i) block += std::string(2 * (i + 1), ' ') + "a:\n";
  const std::string blocks = dir / "deep_blocks.yaml";
  testutil::write_bytes(blocks, block);
  for (const std::string& path : {flow, blocks}) {
    SCOPED_TRACE(path);
    const std::string error = config_error([&] { load_config(path); });
    EXPECT_THAT(error, ContainsRegex(path + ":[0-9]+: YAML syntax error: nested deeper than "
                                            "yaml-cpp's limit of [0-9]+ levels"));
    EXPECT_THAT(error, Not(HasSubstr("bad file")));
  }
  const std::string override_error = config_error([] {
    parse_config("model: {type: mlp}\n", "x.yaml", {"model.hidden=" + std::string(5000, '[')});
  });
  EXPECT_THAT(override_error, HasSubstr("the value is not valid YAML: nested deeper than"));
}

TEST(ConfigYaml, AMissingFileIsStillNamedAsOne) {
  testutil::ScratchDir dir;
  const std::string path = dir / "absent.yaml";
  EXPECT_THAT(config_error([&] { load_config(path); }),
              HasSubstr(path + ": cannot read the config file (does it exist?)"));
}

}  // namespace
}  // namespace dtrain::train
