// The bulk float32 <-> float16 conversions (F16C where the build has it) give exactly the bits of
// the scalar kernels::float_to_half / half_to_float, NaNs, infinities, subnormals and ties
// included.
#include "dtrain/tensor/cpu/half_convert.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

namespace dtrain {
namespace {

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

/// Floats that exercise every branch of float_to_half: a sweep over all exponents and signs with
/// varied mantissas, plus the edges (zeros, infinities, NaNs with payloads, the overflow
/// threshold, the subnormal range and its ties, values that round up into the next exponent).
std::vector<float> float_cases() {
  std::vector<float> v;
  for (uint64_t u = 0; u <= 0xffffffffu; u += 4093)
    v.push_back(from_bits(static_cast<uint32_t>(u)));
  for (uint32_t u : {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00001u,
                     0x7f800001u, 0x7fbfffffu, 0x477fe000u, 0x477fefffu, 0x477ff000u, 0x477fffffu,
                     0x38800000u, 0x387fffffu, 0x33800000u, 0x33000000u, 0x33000001u, 0x32ffffffu,
                     0x3f801000u, 0x3f803000u, 0x3f800fffu, 0x3f7ff000u, 0x387fe000u}) {
    v.push_back(from_bits(u));
    v.push_back(-from_bits(u));
  }
  return v;
}

TEST(HalfConvert, FloatToHalfBulkMatchesTheScalarConversionBitForBit) {
  const std::vector<float> in = float_cases();
  std::vector<uint16_t> bulk(in.size());
  cpu::float_to_half_n(in.data(), bulk.data(), static_cast<int64_t>(in.size()));
  for (size_t i = 0; i < in.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &in[i], 4);
    ASSERT_EQ(bulk[i], kernels::float_to_half(in[i])) << "float bits 0x" << std::hex << bits;
  }
}

TEST(HalfConvert, HalfToFloatBulkMatchesTheScalarConversionForEveryHalf) {
  std::vector<uint16_t> in(65536 + 5);  // not a multiple of 8: the tail runs the scalar path
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<uint16_t>(i);
  std::vector<float> bulk(in.size());
  cpu::half_to_float_n(in.data(), bulk.data(), static_cast<int64_t>(in.size()));
  for (size_t i = 0; i < in.size(); ++i) {
    const float want = kernels::half_to_float(in[i]);
    ASSERT_EQ(std::memcmp(&bulk[i], &want, 4), 0) << "half 0x" << std::hex << in[i];
  }
}

TEST(HalfConvert, AddingHalvesMatchesTheScalarSumBitForBit) {
  // Every half against a fixed partner, then against its neighbour: overflow to infinity, NaNs,
  // subnormal sums and cancellations all occur.
  for (uint16_t partner :
       {uint16_t{0x3c00}, uint16_t{0x7bff}, uint16_t{0x8001}, uint16_t{0xfc00}, uint16_t{0x7e01}}) {
    std::vector<uint16_t> dst(65536), src(65536, partner);
    for (size_t i = 0; i < dst.size(); ++i) dst[i] = static_cast<uint16_t>(i);
    const std::vector<uint16_t> before = dst;
    cpu::add_halves_n(dst.data(), src.data(), static_cast<int64_t>(dst.size()));
    for (size_t i = 0; i < dst.size(); ++i) {
      const uint16_t want = kernels::float_to_half(kernels::half_to_float(before[i]) +
                                                   kernels::half_to_float(partner));
      ASSERT_EQ(dst[i], want) << "0x" << std::hex << before[i] << " + 0x" << partner;
    }
  }
}

}  // namespace
}  // namespace dtrain
