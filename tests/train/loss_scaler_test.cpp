// LossScaler: PyTorch's GradScaler rules — skip and halve on overflow, double after the growth
// interval of good steps in a row, and restore exactly from a checkpoint's values.
#include "dtrain/train/loss_scaler.h"

#include <gtest/gtest.h>

#include "dtrain/tensor/check.h"

namespace dtrain::train {
namespace {

TEST(LossScaler, OverflowSkipsAndHalvesGoodStepsDoubleAfterTheInterval) {
  LossScaler s(1024, 3);
  EXPECT_FALSE(s.update(false));
  EXPECT_EQ(s.scale(), 512);
  EXPECT_EQ(s.skipped_steps(), 1);
  EXPECT_TRUE(s.update(true));
  EXPECT_TRUE(s.update(true));
  EXPECT_EQ(s.scale(), 512);
  EXPECT_FALSE(s.update(false));  // an overflow restarts the count of good steps
  EXPECT_EQ(s.scale(), 256);
  for (int i = 0; i < 2; ++i) EXPECT_TRUE(s.update(true));
  EXPECT_EQ(s.scale(), 256);
  EXPECT_TRUE(s.update(true));  // the third good step in a row
  EXPECT_EQ(s.scale(), 512);
  EXPECT_EQ(s.good_steps(), 0);
  EXPECT_EQ(s.skipped_steps(), 2);
}

TEST(LossScaler, RestoreContinuesExactlyAndRefusesDamagedValues) {
  LossScaler a(65536, 4), b(65536, 4);
  for (bool ok : {true, false, true, true}) a.update(ok);
  b.restore(a.scale(), a.good_steps(), a.skipped_steps());
  for (bool ok : {true, true, false, true, true, true, true}) {
    EXPECT_EQ(a.update(ok), b.update(ok));
    EXPECT_EQ(a.scale(), b.scale());
  }
  EXPECT_THROW(b.restore(0, 0, 0), Error);
  EXPECT_THROW(b.restore(1, -1, 0), Error);
  EXPECT_THROW(LossScaler(-1), Error);
}

}  // namespace
}  // namespace dtrain::train
