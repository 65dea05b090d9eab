// Inputs that fuzz/config_fuzz and fuzz/checkpoint_fuzz found to crash or misbehave, each kept as
// a test (the input itself is in fuzz/corpus/<target>/). Most show only under ASan
// (scripts/sanitize.sh); the values they check hold in every build.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dtrain/train/config.h"

namespace dtrain::train {
namespace {

// resolve_registered kept a pointer into a temporary copy of the registered keys and read the key
// through it after the copy was gone (heap-use-after-free, train/config.cpp); configs/
// char_transformer.yaml, whose text data set has registered keys, was enough.
TEST(FuzzRegressions, RegisteredDataKeysAreReadThroughTheRegistry) {
  const Config c = parse_config(
      "data: {name: text, path: corpus.txt, context: 24, test_fraction: 0.25}\n", "text.yaml");
  EXPECT_EQ(c.data.options.integer("context"), 24);
  EXPECT_DOUBLE_EQ(c.data.options.real("test_fraction"), 0.25);
  try {
    parse_config("data: {name: text, path: corpus.txt, context: 0}\n", "text.yaml");
    FAIL() << "context 0 was accepted";
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.message(), ::testing::HasSubstr("text.yaml:1: data.context"));
  }
}

}  // namespace
}  // namespace dtrain::train
