// Elementwise reductions between host buffers, for backends that reduce on the CPU (local
// threads; MPI's user-defined operations for 16-bit floats).
#pragma once

#include <cstdint>

#include "dtrain/distributed/communicator.h"

namespace dtrain::dist {

/// dst[i] = op(dst[i], src[i]) for n elements of dtype. kAvg reduces as kSum (the caller divides,
/// with divide_in_place, once every part is in).
/// float16 and bfloat16 are widened to float for each operation and rounded back.
void reduce_into(void* dst, const void* src, int64_t n, DType dtype, ReduceOp op);
/// t /= divisor in place (kAvg after a sum); integers divide with truncation.
void divide_in_place(void* data, int64_t n, DType dtype, int64_t divisor);
/// The dtypes collectives accept: float32, float64, float16, bfloat16, int32, int64.
bool is_collective_dtype(DType dtype);

}  // namespace dtrain::dist
