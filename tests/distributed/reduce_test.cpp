// The host reductions every CPU backend shares: the division that turns a sum into an average must
// give the bits of a true division whatever shortcut it takes.
#include "dtrain/distributed/reduce.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace dtrain {
namespace {

/// Values that stress rounding: random magnitudes over the whole exponent range, subnormals, the
/// smallest and largest finite values, zeros of both signs, infinities and NaN.
template <class T>
std::vector<T> awkward_values() {
  using Limits = std::numeric_limits<T>;
  std::vector<T> v = {T(0),
                      -T(0),
                      Limits::min(),
                      Limits::denorm_min(),
                      -Limits::denorm_min(),
                      T(3) * Limits::denorm_min(),
                      Limits::max(),
                      -Limits::max(),
                      Limits::infinity(),
                      -Limits::infinity(),
                      Limits::quiet_NaN(),
                      T(1) / T(3),
                      T(-7.5)};
  std::mt19937_64 rng(42);
  std::uniform_real_distribution<double> mantissa(-2.0, 2.0);
  std::uniform_int_distribution<int> exponent(Limits::min_exponent - Limits::digits - 2,
                                              Limits::max_exponent - 1);
  for (int i = 0; i < 5000; ++i)
    v.push_back(static_cast<T>(std::ldexp(mantissa(rng), exponent(rng))));
  return v;
}

template <class T, class Bits>
void expect_true_division(DType dtype) {
  for (int64_t divisor : {1, 2, 3, 4, 6, 8, 16, 1024}) {
    std::vector<T> values = awkward_values<T>();
    const std::vector<T> before = values;
    dist::divide_in_place(values.data(), static_cast<int64_t>(values.size()), dtype, divisor);
    for (size_t i = 0; i < values.size(); ++i) {
      const T want = before[i] / static_cast<T>(divisor);
      if (std::isnan(want)) {
        EXPECT_TRUE(std::isnan(values[i])) << before[i] << " / " << divisor;
      } else {
        ASSERT_EQ(std::bit_cast<Bits>(values[i]), std::bit_cast<Bits>(want))
            << before[i] << " / " << divisor << " gave " << values[i] << ", want " << want;
      }
    }
  }
}

TEST(HostReduction, AveragingFloat32GivesTheBitsOfATrueDivisionForEveryWorldSize) {
  expect_true_division<float, uint32_t>(DType::kFloat32);
}

TEST(HostReduction, AveragingFloat64GivesTheBitsOfATrueDivisionForEveryWorldSize) {
  expect_true_division<double, uint64_t>(DType::kFloat64);
}

TEST(HostReduction, AveragingIntegersTruncates) {
  std::vector<int32_t> values = {7, -7, 8, 0, 1};
  dist::divide_in_place(values.data(), 5, DType::kInt32, 2);
  EXPECT_EQ(values, (std::vector<int32_t>{3, -3, 4, 0, 0}));
}

}  // namespace
}  // namespace dtrain
