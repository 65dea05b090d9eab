// The thread's matmul precision and the rounding the CPU applies for it.
#include "dtrain/tensor/precision.h"

#include <algorithm>
#include <cstdint>

#include "dtrain/tensor/check.h"
#include "dtrain/tensor/cpu/half_convert.h"
#include "dtrain/tensor/cpu/parallel.h"
#include "dtrain/tensor/kernels.h"

namespace dtrain {
namespace {
thread_local DType current = DType::kFloat32;
}  // namespace

DType matmul_precision() { return current; }

MatmulPrecisionGuard::MatmulPrecisionGuard(DType precision) : previous_(current) {
  DTRAIN_CHECK(
      precision == DType::kFloat32 || precision == DType::kBFloat16 || precision == DType::kFloat16,
      "matmul precision must be float32, bfloat16 or float16; got ", dtype_name(precision));
  current = precision;
}

MatmulPrecisionGuard::~MatmulPrecisionGuard() { current = previous_; }

void round_floats(const float* src, float* dst, int64_t n, DType precision) {
  const bool bf16 = precision == DType::kBFloat16;
  cpu::parallel_for(n, 1 << 15, [&](int64_t b, int64_t e) {
    if (bf16) {
      for (int64_t i = b; i < e; ++i)
        dst[i] = kernels::bf16_to_float(kernels::float_to_bf16(src[i]));
    } else {
      uint16_t halves[1024];  // through F16C where the build has it
      for (int64_t i = b; i < e; i += 1024) {
        const int64_t n = std::min<int64_t>(1024, e - i);
        cpu::float_to_half_n(src + i, halves, n);
        cpu::half_to_float_n(halves, dst + i, n);
      }
    }
  });
}

}  // namespace dtrain
