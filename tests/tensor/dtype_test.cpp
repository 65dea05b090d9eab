// Dtype conversions: to_dtype round trips between the host types, and float16/bfloat16 rounding
// checked against an independent nearest-value search (ties to even) over every half value.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "dtrain/tensor/kernels.h"
#include "dtrain/tensor/ops.h"
#include "reference.h"
#include "testutil.h"

namespace dtrain {
namespace {

using kernels::bf16_to_float;
using kernels::float_to_bf16;
using kernels::float_to_half;
using kernels::half_to_float;
using testref::random_tensor;

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

/// IEEE binary16 value of bits h, decoded from the definition with ldexp.
double half_value(uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  double v;
  if (exp == 0x1f)
    v = mant ? std::numeric_limits<double>::quiet_NaN() : INFINITY;
  else if (exp == 0)
    v = std::ldexp(mant, -24);
  else
    v = std::ldexp(1024 + mant, exp - 25);
  return sign ? -v : v;
}

/// Round-to-nearest-even float -> half by searching the sorted positive half values; magnitudes
/// at or past the midpoint between 65504 and 65536 (an even "next value") become infinity.
uint16_t reference_float_to_half(float f) {
  static const std::vector<double> values = [] {
    std::vector<double> v;
    for (uint32_t h = 0; h <= 0x7c00; ++h) v.push_back(h == 0x7c00 ? 65536.0 : half_value(h));
    return v;
  }();
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (std::isnan(f)) return sign | 0x7e00;
  const double a = std::fabs(static_cast<double>(f));
  if (a >= 65536.0) return sign | 0x7c00;
  // First value >= a; bits are monotonic in value for non-negative halves.
  const auto it = std::lower_bound(values.begin(), values.end(), a);
  const uint16_t hi = static_cast<uint16_t>(it - values.begin());
  if (*it == a || hi == 0) return sign | hi;
  const uint16_t lo = hi - 1;
  const double dlo = a - values[lo], dhi = values[hi] - a;
  if (dlo < dhi) return sign | lo;
  if (dhi < dlo) return sign | hi;
  return sign | ((lo & 1) ? hi : lo);
}

/// Round-to-nearest-even float -> bfloat16: choose between the two bfloat16 neighbours by
/// distance computed in double (infinity counts as 2^128 for the largest finite neighbour).
uint16_t reference_float_to_bf16(float f) {
  const uint32_t u = to_bits(f);
  if (std::isnan(f)) return 0;                         // handled by the caller
  const uint16_t lo = static_cast<uint16_t>(u >> 16);  // truncation toward zero
  if ((u & 0xffff) == 0) return lo;
  const uint16_t hi = lo + 1;
  const auto value = [](uint16_t b) {
    if ((b & 0x7fff) == 0x7f80) return std::ldexp(std::signbit(bf16_to_float(b)) ? -1.0 : 1.0, 128);
    return static_cast<double>(from_bits(static_cast<uint32_t>(b) << 16));
  };
  const double x = f, dlo = std::fabs(x - value(lo)), dhi = std::fabs(value(hi) - x);
  if (dlo < dhi) return lo;
  if (dhi < dlo) return hi;
  return (lo & 1) ? hi : lo;
}

TEST(Half, DecodesEveryBitPatternLikeTheDefinition) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const double expected = half_value(static_cast<uint16_t>(h));
    const float got = half_to_float(static_cast<uint16_t>(h));
    if (std::isnan(expected)) {
      ASSERT_TRUE(std::isnan(got)) << std::hex << h;
    } else {
      ASSERT_EQ(static_cast<double>(got), expected) << std::hex << h;
      ASSERT_EQ(std::signbit(got), (h & 0x8000) != 0) << std::hex << h;  // -0 keeps its sign
    }
  }
}

TEST(Half, EveryNonNanPatternRoundTrips) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const uint16_t bits = static_cast<uint16_t>(h);
    if ((bits & 0x7c00) == 0x7c00 && (bits & 0x3ff)) {
      // NaN stays NaN (quiet, same sign).
      const uint16_t back = float_to_half(half_to_float(bits));
      ASSERT_EQ(back & 0x7c00, 0x7c00) << std::hex << h;
      ASSERT_NE(back & 0x3ff, 0) << std::hex << h;
      ASSERT_EQ(back & 0x8000, bits & 0x8000) << std::hex << h;
      continue;
    }
    ASSERT_EQ(float_to_half(half_to_float(bits)), bits) << std::hex << h;
  }
}

TEST(Half, ExactValuesAndSpecials) {
  EXPECT_EQ(float_to_half(1.0f), 0x3c00);
  EXPECT_EQ(float_to_half(0.5f), 0x3800);
  EXPECT_EQ(float_to_half(-2.0f), 0xc000);
  EXPECT_EQ(float_to_half(65504.0f), 0x7bff);                  // largest finite
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -14)), 0x0400);     // smallest normal
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -24)), 0x0001);     // smallest subnormal
  EXPECT_EQ(float_to_half(std::ldexp(1023.0f, -24)), 0x03ff);  // largest subnormal
  EXPECT_EQ(float_to_half(0.0f), 0x0000);
  EXPECT_EQ(float_to_half(-0.0f), 0x8000);
  EXPECT_EQ(float_to_half(INFINITY), 0x7c00);
  EXPECT_EQ(float_to_half(-INFINITY), 0xfc00);
  const uint16_t nan = float_to_half(std::nanf(""));
  EXPECT_TRUE((nan & 0x7c00) == 0x7c00 && (nan & 0x3ff) != 0);
  EXPECT_EQ(float_to_half(1e6f), 0x7c00);    // overflow
  EXPECT_EQ(float_to_half(1e-10f), 0x0000);  // underflow
}

TEST(Half, RoundsToNearestEven) {
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to the even mantissa (down).
  EXPECT_EQ(float_to_half(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  // 1 + 3 * 2^-11 is halfway between mantissas 1 and 2: ties up to 2.
  EXPECT_EQ(float_to_half(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  // Just above a tie rounds up.
  EXPECT_EQ(float_to_half(std::nextafter(1.0f + std::ldexp(1.0f, -11), 2.0f)), 0x3c01);
  // 65520 is halfway between 65504 (odd mantissa) and 65536: rounds to infinity.
  EXPECT_EQ(float_to_half(65520.0f), 0x7c00);
  EXPECT_EQ(float_to_half(std::nextafter(65520.0f, 0.0f)), 0x7bff);
  // Subnormal ties: 2^-25 is halfway between 0 and 2^-24 (rounds to 0);
  // 3 * 2^-25 is halfway between 2^-24 and 2^-23 (rounds to 2^-23).
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -25)), 0x0000);
  EXPECT_EQ(float_to_half(std::ldexp(3.0f, -25)), 0x0002);
  EXPECT_EQ(float_to_half(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  // Rounding up from the largest subnormal carries into the smallest normal.
  EXPECT_EQ(float_to_half(std::ldexp(2047.0f, -25)), 0x0400);
}

TEST(Half, MatchesReferenceAtEveryMidpointAndItsNeighbours) {
  // Midpoints between consecutive halves (exact in float) are where rounding decisions happen.
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const double mid = (half_value(h) + (h == 0x7bff ? 65536.0 : half_value(h + 1))) / 2;
    const float m = static_cast<float>(mid);
    ASSERT_EQ(static_cast<double>(m), mid);
    for (float f : {m, std::nextafter(m, 0.0f), std::nextafter(m, INFINITY)}) {
      for (float s : {f, -f}) {
        ASSERT_EQ(float_to_half(s), reference_float_to_half(s))
            << "value " << s << " bits " << std::hex << to_bits(s);
      }
    }
  }
}

TEST(Half, MatchesReferenceOnRandomFloats) {
  Generator gen(11);
  Tensor bits = randint(0, int64_t{1} << 32, {200000}, gen);
  for (int64_t b : bits.to_vector<int64_t>()) {
    const float f = from_bits(static_cast<uint32_t>(b));
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_half(f), reference_float_to_half(f)) << "bits " << std::hex << b;
  }
  // Concentrate on the range where half is finite.
  Tensor vals = uniform({200000}, -70000, 70000, gen);
  for (float f : vals.to_vector<float>())
    ASSERT_EQ(float_to_half(f), reference_float_to_half(f)) << f;
  Tensor small = uniform({200000}, -1e-4, 1e-4, gen);
  for (float f : small.to_vector<float>())
    ASSERT_EQ(float_to_half(f), reference_float_to_half(f)) << f;
}

TEST(BFloat16, MatchesReferenceRounding) {
  Generator gen(12);
  Tensor bits = randint(0, int64_t{1} << 32, {300000}, gen);
  for (int64_t b : bits.to_vector<int64_t>()) {
    const float f = from_bits(static_cast<uint32_t>(b));
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_bf16(f), reference_float_to_bf16(f)) << "bits " << std::hex << b;
  }
  // Ties: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7 (even: down); 1 + 3 * 2^-8 rounds up.
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(float_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(float_to_bf16(INFINITY), 0x7f80);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds past the top
  // Every bfloat16 pattern survives a round trip through float; NaNs stay NaN, even those whose
  // payload lives only in the low 16 bits of the float.
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float f = bf16_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(bf16_to_float(float_to_bf16(f)))) << std::hex << h;
    } else {
      ASSERT_EQ(float_to_bf16(f), h) << std::hex << h;
    }
  }
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(from_bits(0x7f800001u)))));
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(from_bits(0xffff0001u)))));
}

TEST(ToDtype, Float32AndFloat64RoundTripExactly) {
  Tensor x = random_tensor({1000}, 1, -1e6, 1e6);
  x.data<float>()[0] = std::numeric_limits<float>::denorm_min();
  x.data<float>()[1] = std::numeric_limits<float>::max();
  x.data<float>()[2] = -0.0f;
  Tensor d = to_dtype(x, DType::kFloat64);
  EXPECT_EQ(d.dtype(), DType::kFloat64);
  const auto vx = x.to_vector<float>();
  const auto vd = d.to_vector<double>();
  for (size_t i = 0; i < vx.size(); ++i) ASSERT_EQ(vd[i], static_cast<double>(vx[i]));
  Tensor back = to_dtype(d, DType::kFloat32);
  EXPECT_TRUE(testutil::bit_equal(back, x));
  EXPECT_TRUE(std::signbit(back.to_vector<float>()[2]));
  // Same dtype: the same tensor, not a copy.
  EXPECT_TRUE(to_dtype(x, DType::kFloat32).shares_storage(x));
}

TEST(ToDtype, Float64ToFloat32RoundsToNearest) {
  const double third = 1.0 / 3.0;
  Tensor d = from_vector(std::vector<double>{third, 1e40, -1e-50});
  const auto f = to_dtype(d, DType::kFloat32).to_vector<float>();
  EXPECT_EQ(f[0], static_cast<float>(third));
  EXPECT_EQ(f[1], INFINITY);
  EXPECT_EQ(f[2], -0.0f);
}

TEST(ToDtype, IntegersAndBool) {
  Tensor f = from_vector(std::vector<double>{3.7, -3.7, 0.0, 1e15, -2.0});
  // Conversion to integers truncates toward zero, as in C++ and PyTorch.
  EXPECT_EQ(to_dtype(f, DType::kInt64).to_vector<int64_t>(),
            (std::vector<int64_t>{3, -3, 0, 1000000000000000LL, -2}));
  EXPECT_EQ(to_dtype(from_vector(std::vector<double>{3.7, -3.7, -2.0}), DType::kInt32)
                .to_vector<int32_t>(),
            (std::vector<int32_t>{3, -3, -2}));
  // Nonzero is true.
  EXPECT_EQ(to_dtype(f, DType::kBool).to_vector<double>(), (std::vector<double>{1, 1, 0, 1, 1}));
  Tensor b = from_vector(std::vector<bool>{true, false, true});
  EXPECT_EQ(to_dtype(b, DType::kFloat32).to_vector<float>(), (std::vector<float>{1, 0, 1}));
  EXPECT_EQ(to_dtype(b, DType::kInt64).to_vector<int64_t>(), (std::vector<int64_t>{1, 0, 1}));
  // int64 -> int32 -> int64 and int64 <-> float64 keep values below 2^53 exactly.
  const std::vector<int64_t> ints = {0, -1, 123456789, -(int64_t{1} << 31), (int64_t{1} << 31) - 1};
  Tensor i64 = from_vector(ints);
  EXPECT_EQ(to_dtype(to_dtype(i64, DType::kInt32), DType::kInt64).to_vector<int64_t>(), ints);
  const std::vector<int64_t> big = {(int64_t{1} << 53) - 1, -(int64_t{1} << 53) + 1, 42};
  EXPECT_EQ(
      to_dtype(to_dtype(from_vector(big), DType::kFloat64), DType::kInt64).to_vector<int64_t>(),
      big);
  // uint8 holds 0..255.
  Tensor u8 = to_dtype(from_vector(std::vector<double>{0, 200, 255}), DType::kUInt8);
  EXPECT_EQ(u8.to_vector<uint8_t>(), (std::vector<uint8_t>{0, 200, 255}));
}

TEST(ToDtype, SixteenBitTensorsUseTheKernelConversions) {
  Tensor x = random_tensor({5000}, 2, -70000, 70000);
  x.data<float>()[0] = 1.0f + std::ldexp(1.0f, -11);  // a tie
  const auto vx = x.to_vector<float>();
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    Tensor h = to_dtype(x, dtype);
    EXPECT_EQ(h.dtype(), dtype);
    EXPECT_EQ(h.nbytes(), 2u * 5000);
    const uint16_t* raw = static_cast<const uint16_t*>(h.data_ptr());
    const auto back = to_dtype(h, DType::kFloat32).to_vector<float>();
    for (size_t i = 0; i < vx.size(); ++i) {
      const uint16_t expected = dtype == DType::kFloat16 ? reference_float_to_half(vx[i])
                                                         : reference_float_to_bf16(vx[i]);
      ASSERT_EQ(raw[i], expected) << dtype_name(dtype) << " " << vx[i];
      const float decoded = dtype == DType::kFloat16 ? static_cast<float>(half_value(expected))
                                                     : bf16_to_float(expected);
      ASSERT_EQ(back[i], decoded) << dtype_name(dtype) << " " << vx[i];
    }
  }
}

TEST(DTypes, SizesNamesAndFloatingFlags) {
  const std::vector<std::tuple<DType, size_t, std::string, bool>> cases = {
      {DType::kFloat32, 4, "float32", true}, {DType::kFloat64, 8, "float64", true},
      {DType::kFloat16, 2, "float16", true}, {DType::kBFloat16, 2, "bfloat16", true},
      {DType::kInt64, 8, "int64", false},    {DType::kInt32, 4, "int32", false},
      {DType::kUInt8, 1, "uint8", false},    {DType::kBool, 1, "bool", false}};
  for (const auto& [dtype, size, name, floating] : cases) {
    EXPECT_EQ(dtype_size(dtype), size) << name;
    EXPECT_EQ(dtype_name(dtype), name);
    EXPECT_EQ(is_floating(dtype), floating) << name;
    EXPECT_EQ(zeros({3}, dtype).nbytes(), 3 * size) << name;
  }
}

TEST(Devices, ParseAndPrint) {
  EXPECT_EQ(Device::parse("cpu"), Device::cpu());
  EXPECT_EQ(Device::parse("cuda"), Device::cuda(0));
  EXPECT_EQ(Device::parse("cuda:3"), Device::cuda(3));
  EXPECT_EQ(Device::cuda(2).str(), "cuda:2");
  EXPECT_EQ(Device::cpu().str(), "cpu");
  for (const char* bad : {"gpu", "cuda:", "cuda:-1", "cuda:1x", "CPU"}) {
    EXPECT_THROW(Device::parse(bad), ValueError) << bad;
  }
}

}  // namespace
}  // namespace dtrain
