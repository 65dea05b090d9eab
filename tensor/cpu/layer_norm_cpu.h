// Layer norm over the last `group` elements of float32 rows on the CPU: the shared row bodies
// (kernels_nn.h) with their sums vectorised, and the parameter gradients accumulated a row at a
// time across columns instead of a column at a time down the rows.
#pragma once

#include <cstdint>

namespace dtrain::cpu {

/// y = (x - mean) * rstd * w + b per row (w, b may be null); mean and rstd per row. The mean and
/// variance are summed in double, in a fixed order for a given build.
void layer_norm_rows(const float* x, const float* w, const float* b, float* y, float* mean,
                     float* rstd, int64_t rows, int64_t group, double eps);

/// dx from gy and the forward's statistics (w may be null), and dw, db (summed over the rows in
/// row order, for each column).
void layer_norm_backward_rows(const float* x, const float* gy, const float* w, const float* mean,
                              const float* rstd, float* dx, float* dw, float* db, int64_t rows,
                              int64_t group);

}  // namespace dtrain::cpu
