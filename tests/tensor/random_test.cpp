// Philox4x32-10 (Random123 known answers) and the draws built on it: reproducible per
// (seed, stream, offset), independent of thread count, and statistically sound.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "dtrain/tensor/kernels.h"
#include "dtrain/tensor/ops.h"
#include "reference.h"
#include "testutil.h"

namespace dtrain {
namespace {

using testutil::bit_equal;

TEST(Philox, MatchesRandom123KnownAnswers) {
  // Random123 tests/kat_vectors, "philox4x32 10" lines: counter words 0-3, key words 0-1, output.
  // Here counter = (c0, c1) = offset, (c2, c3) = stream, key = seed (low word first).
  struct Kat {
    uint64_t counter, stream, seed;
    uint32_t out[4];
  };
  const Kat kats[] = {
      {0, 0, 0, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {~0ull, ~0ull, ~0ull, {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {0x85a308d3243f6a88ull,
       0x0370734413198a2eull,
       0x299f31d0a4093822ull,
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  };
  for (const auto& k : kats) {
    const kernels::Philox4 r = kernels::philox(k.seed, k.stream, k.counter);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(r.v[i], k.out[i]) << "word " << i;
  }
}

TEST(Random, DrawElementsFollowTheDocumentedCounterLayout) {
  // Element i of a uniform draw uses block (offset + i / 4), word i % 4, 24 bits.
  Generator gen(99, 3);
  gen.set_offset(10);
  Tensor u = rand({9}, gen);
  const auto v = u.to_vector<float>();
  for (int64_t i = 0; i < 9; ++i) {
    const uint32_t word = kernels::philox(99, 3, 10 + i / 4).v[i % 4];
    EXPECT_EQ(v[i], static_cast<float>(word >> 8) / 16777216.0f) << i;
  }
  EXPECT_EQ(gen.offset(), 10u + 3);  // ceil(9 / 4) blocks
}

TEST(Random, SameSeedAndStreamReproduce) {
  Generator a(42, 1), b(42, 1);
  EXPECT_TRUE(bit_equal(rand({1000}, a), rand({1000}, b)));
  EXPECT_TRUE(bit_equal(randn({1001}, a), randn({1001}, b)));
  EXPECT_TRUE(bit_equal(randint(-5, 5, {77}, a), randint(-5, 5, {77}, b)));
}

TEST(Random, DifferentStreamsAndSeedsDiffer) {
  Generator base(42, 1), other_stream(42, 2), other_seed(43, 1);
  const auto x = rand({1000}, base).to_vector<float>();
  const auto y = rand({1000}, other_stream).to_vector<float>();
  const auto z = rand({1000}, other_seed).to_vector<float>();
  int same_y = 0, same_z = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    same_y += x[i] == y[i];
    same_z += x[i] == z[i];
  }
  // With 24-bit values a coincidence has probability 1000 * 2^-24.
  EXPECT_LE(same_y, 1);
  EXPECT_LE(same_z, 1);
}

TEST(Random, IndependentOfThreadCount) {
  const auto draw = [] {
    Generator gen(7, 0);
    return std::vector<Tensor>{rand({1 << 20}, gen), randn({(1 << 20) + 3}, gen),
                               uniform({100003}, -2, 5, gen, DType::kFloat64),
                               ops::dropout_mask({1 << 18}, 0.25, gen)};
  };
  std::vector<Tensor> one, two;
  {
    testref::ThreadCountGuard threads(1);
    one = draw();
  }
  {
    testref::ThreadCountGuard threads(2);
    two = draw();
  }
  for (size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(bit_equal(one[i], two[i])) << "draw " << i;
}

TEST(Random, UniformIsInRangeWithTheRightMoments) {
  const int64_t n = 1000000;
  Generator gen(2024);
  const auto v = rand({n}, gen).to_vector<double>();
  double sum = 0, sq = 0;
  for (double x : v) {
    ASSERT_GE(x, 0.0);
    ASSERT_LT(x, 1.0);
    sum += x;
    sq += x * x;
  }
  const double mean = sum / n, var = sq / n - mean * mean;
  // Standard errors: mean sqrt(1/12 / n) ~ 2.9e-4, variance sqrt(1/180 / n) ~ 7.5e-5; 6 sigma.
  EXPECT_NEAR(mean, 0.5, 6 * std::sqrt(1.0 / 12 / n));
  EXPECT_NEAR(var, 1.0 / 12, 6 * std::sqrt(1.0 / 180 / n));
  // Every tenth of [0, 1) holds about a tenth of the draws (binomial sd ~ 3e-4).
  std::vector<int64_t> bins(10, 0);
  for (double x : v) ++bins[static_cast<int>(x * 10)];
  for (int b = 0; b < 10; ++b) EXPECT_NEAR(bins[b] / double(n), 0.1, 6 * std::sqrt(0.09 / n)) << b;
}

TEST(Random, NormalHasTheRightMomentsAndTails) {
  const int64_t n = 1000000;
  Generator gen(77);
  const auto v = randn({n}, gen).to_vector<double>();
  double sum = 0, sq = 0;
  int64_t within_one = 0, beyond_three = 0;
  for (double x : v) {
    ASSERT_TRUE(std::isfinite(x));
    sum += x;
    sq += x * x;
    within_one += std::fabs(x) < 1;
    beyond_three += std::fabs(x) > 3;
  }
  const double mean = sum / n, var = sq / n - mean * mean;
  // Standard errors: mean 1/sqrt(n) = 1e-3, variance sqrt(2/n) ~ 1.4e-3; 6 sigma.
  EXPECT_NEAR(mean, 0.0, 6 / std::sqrt(double(n)));
  EXPECT_NEAR(var, 1.0, 6 * std::sqrt(2.0 / n));
  const double p1 = std::erf(1 / std::sqrt(2.0)), p3 = std::erfc(3 / std::sqrt(2.0));
  EXPECT_NEAR(within_one / double(n), p1, 6 * std::sqrt(p1 * (1 - p1) / n));
  EXPECT_NEAR(beyond_three / double(n), p3, 6 * std::sqrt(p3 * (1 - p3) / n));
}

TEST(Random, UniformAndNormalScaleAndShift) {
  Generator gen(5);
  const int64_t n = 200000;
  const auto u = uniform({n}, -3, 5, gen).to_vector<double>();
  double su = 0;
  for (double x : u) {
    ASSERT_GE(x, -3.0);
    ASSERT_LT(x, 5.0);
    su += x;
  }
  EXPECT_NEAR(su / n, 1.0, 6 * 8 / std::sqrt(12.0 * n));
  Tensor t({n}, DType::kFloat64);
  normal_(t, 10, 0.5, gen);
  double s = 0, sq = 0;
  for (double x : t.to_vector<double>()) {
    s += x;
    sq += x * x;
  }
  const double mean = s / n, sd = std::sqrt(sq / n - mean * mean);
  EXPECT_NEAR(mean, 10.0, 6 * 0.5 / std::sqrt(double(n)));
  EXPECT_NEAR(sd, 0.5, 6 * 0.5 / std::sqrt(2.0 * n));
}

TEST(Random, RandintCoversTheRangeUniformly) {
  Generator gen(8);
  const int64_t n = 70000;
  const auto v = randint(-3, 4, {n}, gen).to_vector<int64_t>();
  std::vector<int64_t> counts(7, 0);
  for (int64_t x : v) {
    ASSERT_GE(x, -3);
    ASSERT_LT(x, 4);
    ++counts[x + 3];
  }
  for (int64_t c : counts) EXPECT_NEAR(c / double(n), 1 / 7.0, 6 * std::sqrt(6.0 / 49 / n));
}

TEST(Random, RandintCoversRangesWiderThan32Bits) {
  Generator gen(9);
  const int64_t n = 100000, high = int64_t{1} << 40;
  const auto v = randint(0, high, {n}, gen).to_vector<int64_t>();
  // Split [0, 2^40) into 16 equal bins: each holds about n / 16 draws (binomial sd ~ 77).
  std::vector<int64_t> bins(16, 0);
  for (int64_t x : v) {
    ASSERT_GE(x, 0);
    ASSERT_LT(x, high);
    ++bins[x >> 36];
  }
  for (int64_t b : bins) EXPECT_NEAR(b / double(n), 1 / 16.0, 6 * std::sqrt(15.0 / 256 / n));
  // Negative bounds shift the range.
  for (int64_t x : randint(-high, -high + 3, {100}, gen).to_vector<int64_t>()) {
    ASSERT_GE(x, -high);
    ASSERT_LT(x, -high + 3);
  }
}

TEST(Generator, OffsetAdvancesAndRestoringItReplays) {
  Generator gen(3, 9);
  EXPECT_EQ(gen.offset(), 0u);
  Tensor a = rand({10}, gen);
  EXPECT_EQ(gen.offset(), 3u);  // 10 values, 4 per block
  const uint64_t saved = gen.offset();
  Tensor b = rand({10}, gen);
  EXPECT_FALSE(bit_equal(a, b));
  Tensor n1 = randn({5}, gen);
  EXPECT_EQ(gen.offset(), 6u + 3);  // normals take two words each: ceil(5 / 2) blocks
  gen.set_offset(saved);
  EXPECT_TRUE(bit_equal(rand({10}, gen), b));
  EXPECT_TRUE(bit_equal(randn({5}, gen), n1));
  EXPECT_EQ(gen.seed(), 3u);
  EXPECT_EQ(gen.stream(), 9u);
  // Consecutive draws never overlap: two halves equal one draw of the whole only when the
  // first half fills whole blocks.
  Generator whole(4), halves(4);
  Tensor w = rand({16}, whole);
  Tensor h1 = rand({8}, halves), h2 = rand({8}, halves);
  auto vw = w.to_vector<float>();
  auto v1 = h1.to_vector<float>(), v2 = h2.to_vector<float>();
  v1.insert(v1.end(), v2.begin(), v2.end());
  EXPECT_EQ(v1, vw);
}

TEST(Generator, ManualSeedResetsTheDefaultGenerator) {
  manual_seed(1234);
  Tensor a = rand({100});
  Tensor b = rand({100});
  EXPECT_FALSE(bit_equal(a, b));
  manual_seed(1234);
  EXPECT_TRUE(bit_equal(rand({100}), a));
  EXPECT_EQ(default_generator().seed(), 1234u);
}

TEST(Random, Float64DrawsAreInRange) {
  Generator gen(6);
  const auto v = rand({100000}, gen, DType::kFloat64).to_vector<double>();
  std::set<double> distinct(v.begin(), v.end());
  EXPECT_GT(distinct.size(), 99000u);
  for (double x : v) {
    ASSERT_GE(x, 0.0);
    ASSERT_LT(x, 1.0);
  }
}

}  // namespace
}  // namespace dtrain
