// The dtrain command line: version, help, usage errors, `config check` on every committed config,
// `config reference` against the committed docs/config.md, and overrides in the resolved config.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "cli/run_util.h"
#include "dtrain/train/config.h"
#include "train/scratch_dir.h"

namespace dtrain {
namespace {

using ::testing::HasSubstr;
using testutil::run_dtrain;
using testutil::source_path;

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

/// The text after the first line ("# CONFIG is valid (config hash H)"): the resolved YAML.
std::string resolved_yaml(const std::string& check_output) {
  return check_output.substr(check_output.find('\n') + 1);
}

/// A repository file's path in single quotes, for the shell.
std::string quoted_source(const std::string& relative) {
  std::string q = "'";
  q += source_path(relative);
  q += "'";
  return q;
}

std::string config_hash(const std::string& check_output) {
  const std::string marker = "(config hash ";
  const size_t at = check_output.find(marker);
  if (at == std::string::npos) return "";
  return check_output.substr(at + marker.size(), 16);
}

TEST(Cli, VersionPrintsProjectVersion) {
  const auto r = run_dtrain("--version");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "dtrain 0.1.0\n");
}

TEST(Cli, HelpListsSubcommands) {
  const auto r = run_dtrain("--help");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  for (const char* part : {"train", "config", "eval", "export", "predict", "--version", "--help"}) {
    EXPECT_TRUE(contains(r.output, part)) << part << " missing from:\n" << r.output;
  }
}

TEST(Cli, EverySubcommandHasHelp) {
  const std::vector<std::pair<std::string, std::vector<std::string>>> commands = {
      {"train", {"config", "overrides", "train.epochs=3"}},
      {"config", {"check", "reference"}},
      {"config check", {"config", "overrides"}},
      {"config reference", {"Markdown"}},
      {"eval", {"config", "overrides", "--checkpoint"}},
      {"export", {"checkpoint", "--format", "safetensors", "-o,--output"}},
      {"predict", {"checkpoint", "--input", "--labels", "--top", "--limit", "--format"}},
  };
  for (const auto& [command, parts] : commands) {
    const auto r = run_dtrain(command + " --help");
    EXPECT_EQ(r.exit_code, 0) << command << ":\n" << r.output;
    EXPECT_TRUE(contains(r.output, "Usage:")) << command << ":\n" << r.output;
    for (const auto& part : parts) {
      EXPECT_TRUE(contains(r.output, part)) << command << ": " << part << " missing from:\n"
                                            << r.output;
    }
  }
}

TEST(Cli, UsageErrorsExitTwo) {
  const std::vector<std::string> usage_errors = {
      "",                                                       // no subcommand
      "config",                                                 // no config subcommand
      "trian configs/x.yaml",                                   // unknown subcommand
      "train",                                                  // no config file
      "eval " + source_path("configs/fashion_mnist_mlp.yaml"),  // no --checkpoint
      "export model.dtck",                                      // no -o
      "export model.dtck -o m.tflite --format tflite",          // unknown format
      "--no-such-flag",
  };
  testutil::ScratchDir dir;
  for (const auto& args : usage_errors) {
    const auto r = run_dtrain(args, dir.path().string());
    EXPECT_EQ(r.exit_code, 2) << "dtrain " << args << ":\n" << r.output;
    EXPECT_FALSE(r.output.empty()) << "dtrain " << args;
  }
  EXPECT_TRUE(dir.entries().empty()) << "a usage error wrote files";
}

TEST(Cli, AnOverrideWrittenAsAnOptionIsNamedWithoutItsDashes) {
  testutil::ScratchDir dir;
  const auto r =
      run_dtrain("train " + source_path("configs/synthetic_mlp.yaml") + " --train.epochs=3",
                 dir.path().string());
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("overrides are written without dashes: train.epochs=3"));
  EXPECT_TRUE(dir.entries().empty()) << "a usage error wrote files";
}

TEST(Cli, ConfigCheckReportsAMissingDataPathAndResumeCheckpoint) {
  testutil::ScratchDir dir;
  const std::string config = source_path("configs/fashion_mnist_mlp.yaml");
  auto r = run_dtrain("config check " + config + " data.path=" + (dir / "no-such-dir"),
                      dir.path().string());
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("data.path: Fashion-MNIST directory '" + (dir / "no-such-dir") +
                                  "' does not exist"));
  r = run_dtrain("config check " + config + " train.resume=" + (dir / "ckpt-9.dtck"),
                 dir.path().string());
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("train.resume: '" + (dir / "ckpt-9.dtck") + "' does not exist"));
  EXPECT_TRUE(dir.entries().empty()) << "config check wrote files";
}

TEST(Cli, NoSubcommandSaysOneIsRequired) {
  const auto r = run_dtrain("");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(contains(r.output, "A subcommand is required")) << r.output;
}

TEST(Cli, EveryCommittedConfigIsValid) {
  std::vector<std::filesystem::path> configs;
  for (const auto& entry : std::filesystem::directory_iterator(source_path("configs"))) {
    const auto ext = entry.path().extension();
    if (ext == ".yaml" || ext == ".yml") configs.push_back(entry.path());
  }
  ASSERT_FALSE(configs.empty()) << "no configs in " << source_path("configs");
  std::sort(configs.begin(), configs.end());
  testutil::ScratchDir dir;
  for (const auto& config : configs) {
    const auto r = run_dtrain("config check '" + config.string() + "'", dir.path().string());
    EXPECT_EQ(r.exit_code, 0) << config << ":\n" << r.output;
    EXPECT_TRUE(contains(r.output, "# " + config.string() + " is valid (config hash "))
        << config << ":\n"
        << r.output;
  }
}

TEST(Cli, ResolvedConfigIsAValidConfigWithTheSameHash) {
  testutil::ScratchDir dir;
  const auto first = run_dtrain(
      "config check " + quoted_source("configs/fashion_mnist_mlp.yaml") + " train.epochs=3",
      dir.path().string());
  ASSERT_EQ(first.exit_code, 0) << first.output;
  testutil::write_bytes(dir / "resolved.yaml", first.output);  // the "# ..." line is a comment
  const auto second = run_dtrain("config check resolved.yaml", dir.path().string());
  ASSERT_EQ(second.exit_code, 0) << second.output;
  EXPECT_EQ(resolved_yaml(second.output), resolved_yaml(first.output));
  EXPECT_EQ(config_hash(second.output), config_hash(first.output));
  EXPECT_EQ(config_hash(first.output).size(), 16u) << first.output;
}

TEST(Cli, OverridesChangeTheResolvedConfig) {
  const std::string config = quoted_source("configs/fashion_mnist_mlp.yaml");
  const auto plain = run_dtrain("config check " + config);
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  EXPECT_TRUE(contains(plain.output, "\ntrain:\n  epochs: 10\n")) << plain.output;
  EXPECT_TRUE(contains(plain.output, "  hidden: [256, 128]\n")) << plain.output;

  const auto changed = run_dtrain("config check " + config +
                                  " train.epochs=3 'model.hidden=[512, 64]' optimizer.type=adamw"
                                  " log.tensorboard=false");
  ASSERT_EQ(changed.exit_code, 0) << changed.output;
  EXPECT_TRUE(contains(changed.output, "\ntrain:\n  epochs: 3\n")) << changed.output;
  EXPECT_TRUE(contains(changed.output, "  hidden: [512, 64]\n")) << changed.output;
  EXPECT_TRUE(contains(changed.output, "\noptimizer:\n  type: adamw\n")) << changed.output;
  EXPECT_TRUE(contains(changed.output, "  tensorboard: false\n")) << changed.output;
  EXPECT_NE(config_hash(changed.output), config_hash(plain.output));

  // The last override of a key wins; everything not overridden stays as the file says.
  const auto twice = run_dtrain("config check " + config + " train.epochs=3 train.epochs=4");
  ASSERT_EQ(twice.exit_code, 0) << twice.output;
  EXPECT_TRUE(contains(twice.output, "\ntrain:\n  epochs: 4\n")) << twice.output;
  EXPECT_TRUE(contains(twice.output, "  batch_size: 64\n")) << twice.output;
}

TEST(Cli, ConfigReferenceMatchesDocsByteForByte) {
  const std::string committed = testutil::read_bytes(source_path("docs/config.md"));
  ASSERT_FALSE(committed.empty()) << "docs/config.md is missing; generate it with "
                                     "`dtrain config reference > docs/config.md`";
  const auto r = run_dtrain("config reference");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // On a mismatch, regenerate the page: `dtrain config reference > docs/config.md`.
  EXPECT_EQ(r.output, committed);
  EXPECT_EQ(r.output, train::config_reference_markdown());
}

TEST(Cli, DocsNameEveryConfigKey) {
  const std::string docs = testutil::read_bytes(source_path("docs/config.md"));
  const std::vector<std::string> keys = train::config_keys();
  EXPECT_GT(keys.size(), 40u);
  for (const auto& key : keys) {
    EXPECT_TRUE(contains(docs, "| `" + key + "` |")) << key << " is missing from docs/config.md";
  }
}

}  // namespace
}  // namespace dtrain
