// Learning-rate schedules: values against their formulas, step() driving the optimiser's lr,
// exact restore from the step counter, and constructor argument checks.
#include "dtrain/nn/lr_scheduler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <numbers>
#include <vector>

namespace dtrain {
namespace {

/// An optimiser with one parameter, for schedules to drive.
class SchedulerTest : public ::testing::Test {
 protected:
  SchedulerTest() : p_(from_vector<float>({1.0f})), opt_({p_.set_requires_grad()}, {.lr = 0.1}) {}
  Tensor p_;
  nn::SGD opt_;
};

double cosine(double base, double eta_min, int64_t step, int64_t total) {
  if (step >= total) return eta_min;
  return eta_min + (base - eta_min) * (1 + std::cos(std::numbers::pi * step / total)) / 2;
}

TEST_F(SchedulerTest, StepLRDecaysEveryStepSize) {
  nn::StepLR sched(opt_, 3, 0.5);
  EXPECT_DOUBLE_EQ(sched.base_lr(), 0.1);
  const std::vector<double> expected{0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.0125};
  for (int64_t s = 0; s < static_cast<int64_t>(expected.size()); ++s) {
    EXPECT_DOUBLE_EQ(sched.lr_at(s), expected[s]) << s;
  }
}

TEST_F(SchedulerTest, MultiStepLRDecaysAtEachMilestone) {
  nn::MultiStepLR sched(opt_, {2, 5, 9}, 0.1);
  for (int64_t s = 0; s < 12; ++s) {
    const int passed = (s >= 2) + (s >= 5) + (s >= 9);
    EXPECT_NEAR(sched.lr_at(s), 0.1 * std::pow(0.1, passed), 1e-15) << s;
  }
  EXPECT_DOUBLE_EQ(sched.lr_at(1), 0.1);
  EXPECT_DOUBLE_EQ(sched.lr_at(2), 0.1 * 0.1);
  EXPECT_NEAR(sched.lr_at(100), 1e-4, 1e-18);
}

TEST_F(SchedulerTest, CosineLRAtStartMiddleEndAndBeyond) {
  nn::CosineLR sched(opt_, 100, 0.001);
  EXPECT_DOUBLE_EQ(sched.lr_at(0), 0.1);
  EXPECT_DOUBLE_EQ(sched.lr_at(50), (0.1 + 0.001) / 2);
  EXPECT_DOUBLE_EQ(sched.lr_at(100), 0.001);
  EXPECT_DOUBLE_EQ(sched.lr_at(250), 0.001);
  for (int64_t s : {1, 10, 25, 75, 99})
    EXPECT_NEAR(sched.lr_at(s), cosine(0.1, 0.001, s, 100), 1e-15) << s;
  // Monotonically decreasing over the schedule.
  for (int64_t s = 1; s <= 100; ++s) EXPECT_LT(sched.lr_at(s), sched.lr_at(s - 1)) << s;
}

TEST_F(SchedulerTest, ConstantLRNeverChanges) {
  nn::ConstantLR sched(opt_);
  for (int64_t s : {0, 1, 7, 1000}) EXPECT_EQ(sched.lr_at(s), 0.1);
  for (int i = 0; i < 5; ++i) sched.step();
  EXPECT_EQ(opt_.lr(), 0.1);
}

TEST_F(SchedulerTest, LinearWarmupThenShiftedCosine) {
  const int64_t warmup = 10, total = 40;
  const double start = 0.1;
  nn::LinearWarmup sched(opt_, warmup, std::make_unique<nn::CosineLR>(opt_, total), start);
  // The constructor already sets the first step's rate.
  EXPECT_DOUBLE_EQ(opt_.lr(), 0.1 * start);
  EXPECT_DOUBLE_EQ(sched.lr_at(0), 0.1 * start);
  EXPECT_DOUBLE_EQ(sched.lr_at(5), 0.1 * (start + (1 - start) * 0.5));
  for (int64_t s = 0; s < warmup; ++s) {
    EXPECT_NEAR(sched.lr_at(s), 0.1 * (start + (1 - start) * s / warmup), 1e-15) << s;
  }
  // Hand-off: step warmup + k is the cosine's step k.
  EXPECT_DOUBLE_EQ(sched.lr_at(warmup), 0.1);
  EXPECT_DOUBLE_EQ(sched.lr_at(warmup + total / 2), 0.05);
  for (int64_t k : {0, 1, 13, 20, 39, 40, 55}) {
    EXPECT_NEAR(sched.lr_at(warmup + k), cosine(0.1, 0.0, k, total), 1e-15) << k;
  }
}

TEST_F(SchedulerTest, LinearWarmupOfZeroStepsIsTheWrappedSchedule) {
  nn::LinearWarmup sched(opt_, 0, std::make_unique<nn::StepLR>(opt_, 2, 0.5));
  EXPECT_DOUBLE_EQ(opt_.lr(), 0.1);
  EXPECT_DOUBLE_EQ(sched.lr_at(0), 0.1);
  EXPECT_DOUBLE_EQ(sched.lr_at(2), 0.05);
}

TEST_F(SchedulerTest, StepSetsTheOptimiserLearningRate) {
  nn::StepLR sched(opt_, 2, 0.5);
  EXPECT_EQ(sched.last_step(), 0);
  EXPECT_DOUBLE_EQ(opt_.lr(), 0.1);
  const std::vector<double> after_step{0.1, 0.05, 0.05, 0.025, 0.025};  // lr for steps 1..5
  for (size_t i = 0; i < after_step.size(); ++i) {
    sched.step();
    EXPECT_EQ(sched.last_step(), static_cast<int64_t>(i + 1));
    EXPECT_DOUBLE_EQ(opt_.lr(), after_step[i]) << i;
    EXPECT_EQ(opt_.lr(), sched.lr_at(sched.last_step()));
  }
}

TEST_F(SchedulerTest, StepDrivesTheUpdateSize) {
  nn::StepLR sched(opt_, 1, 0.5);
  p_.set_grad(from_vector<float>({1.0f}));
  opt_.step();  // lr 0.1
  sched.step();
  opt_.step();  // lr 0.05
  EXPECT_NEAR(p_.item<double>(), 1.0 - 0.1 - 0.05, 1e-7);
}

TEST_F(SchedulerTest, LoadStateDictRestoresTheLearningRateExactly) {
  nn::LinearWarmup a(opt_, 5, std::make_unique<nn::CosineLR>(opt_, 20, 1e-4), 0.01);
  for (int i = 0; i < 12; ++i) a.step();
  const double lr = opt_.lr();
  const int64_t state = a.state_dict();
  EXPECT_EQ(state, 12);

  Tensor q = from_vector<float>({1.0f});
  nn::SGD other({q.set_requires_grad()}, {.lr = 0.1});
  nn::LinearWarmup b(other, 5, std::make_unique<nn::CosineLR>(other, 20, 1e-4), 0.01);
  EXPECT_NE(other.lr(), lr);
  b.load_state_dict(state);
  EXPECT_EQ(b.last_step(), 12);
  EXPECT_EQ(other.lr(), lr);  // bit-exact
  // And the two continue identically.
  for (int i = 0; i < 10; ++i) {
    a.step();
    b.step();
    EXPECT_EQ(other.lr(), opt_.lr()) << i;
  }
  EXPECT_THROW(b.load_state_dict(-1), ValueError);
}

TEST_F(SchedulerTest, ConstructorsRejectBadArguments) {
  EXPECT_THROW(nn::StepLR(opt_, 0), ValueError);
  EXPECT_THROW(nn::StepLR(opt_, -3), ValueError);
  EXPECT_THROW(nn::MultiStepLR(opt_, {5, 2}), ValueError);
  EXPECT_THROW(nn::CosineLR(opt_, 0), ValueError);
  EXPECT_THROW(nn::LinearWarmup(opt_, -1, std::make_unique<nn::ConstantLR>(opt_)), ValueError);
  EXPECT_THROW(nn::LinearWarmup(opt_, 5, nullptr), ValueError);
  EXPECT_NO_THROW(nn::MultiStepLR(opt_, {}));
}

}  // namespace
}  // namespace dtrain
