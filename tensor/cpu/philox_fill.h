// Dropout masks on the CPU, one Philox block per four elements and 32 blocks side by side
// so that the compiler vectorises the rounds. Bit-identical to kernels::DropoutMaskFill, the
// per-element body the CUDA path runs.
#pragma once

#include <cstdint>

namespace dtrain::cpu {

/// out[i] = keep if philox_uniform(seed, stream, offset, i) >= p, else 0, for i in [0, n).
template <class T>
void dropout_mask_fill(T* out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset,
                       double p);

}  // namespace dtrain::cpu
