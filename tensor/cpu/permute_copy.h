// Permuted copies of contiguous host tensors: runs of the innermost dim copied whole when it
// stays innermost, tiled transposes when it moves.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace dtrain::cpu {

/// out (contiguous) = in (contiguous, shape `in_shape`) with output dim i taken from input dim
/// perm[i]; `element` is the element size in bytes (1, 2, 4 or 8). Dims of size 1 are dropped and
/// input dims that stay adjacent and in order are merged first, so the common cases run as plain
/// copies of runs or as one batch of 2-D transposes.
void permute_copy(const void* in, void* out, const std::vector<int64_t>& in_shape,
                  const std::vector<int64_t>& perm, size_t element);

}  // namespace dtrain::cpu
