// Vectorised layer norm rows; see layer_norm_cpu.h.
#include "dtrain/tensor/cpu/layer_norm_cpu.h"

#include <algorithm>
#include <cmath>

#include "dtrain/tensor/cpu/parallel.h"

namespace dtrain::cpu {
namespace {

/// Rows per parallel work item: each is a few passes over `group` floats.
int64_t row_grain(int64_t group) {
  return std::max<int64_t>(1, kGrain / std::max<int64_t>(group, 1));
}

}  // namespace

void layer_norm_rows(const float* x, const float* w, const float* b, float* y, float* mean,
                     float* rstd, int64_t rows, int64_t group, double eps) {
  parallel_for(rows, row_grain(group), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const float* px = x + row * group;
      float* py = y + row * group;
      double s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t k = 0; k < group; ++k) s += px[k];
      const double m = s / static_cast<double>(group);
      double v = 0;
#pragma omp simd reduction(+ : v)
      for (int64_t k = 0; k < group; ++k) v += (px[k] - m) * (px[k] - m);
      const float r = static_cast<float>(1.0 / std::sqrt(v / static_cast<double>(group) + eps));
      const float mf = static_cast<float>(m);
      mean[row] = mf;
      rstd[row] = r;
      if (w != nullptr && b != nullptr) {
#pragma omp simd
        for (int64_t k = 0; k < group; ++k) py[k] = (px[k] - mf) * r * w[k] + b[k];
      } else {
        for (int64_t k = 0; k < group; ++k) {
          float value = (px[k] - mf) * r;
          if (w) value = value * w[k];
          if (b) value = value + b[k];
          py[k] = value;
        }
      }
    }
  });
}

void layer_norm_backward_rows(const float* x, const float* gy, const float* w, const float* mean,
                              const float* rstd, float* dx, float* dw, float* db, int64_t rows,
                              int64_t group) {
  parallel_for(rows, row_grain(group), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const float* px = x + row * group;
      const float* pg = gy + row * group;
      float* pdx = dx + row * group;
      const float mu = mean[row], rs = rstd[row];
      double sum_d = 0, sum_dx = 0;
#pragma omp simd reduction(+ : sum_d, sum_dx)
      for (int64_t k = 0; k < group; ++k) {
        const float xhat = (px[k] - mu) * rs;
        const float d = pg[k] * (w ? w[k] : 1.0f);
        sum_d += d;
        sum_dx += d * xhat;
      }
      const float m1 = static_cast<float>(sum_d / static_cast<double>(group));
      const float m2 = static_cast<float>(sum_dx / static_cast<double>(group));
#pragma omp simd
      for (int64_t k = 0; k < group; ++k) {
        const float xhat = (px[k] - mu) * rs;
        const float d = pg[k] * (w ? w[k] : 1.0f);
        pdx[k] = rs * (d - m1 - xhat * m2);
      }
    }
  });
  // Columns split across threads; each column still sums its rows in row order.
  parallel_for(group, std::max<int64_t>(16, kGrain / std::max<int64_t>(rows, 1)),
               [&](int64_t begin, int64_t end) {
                 std::fill(dw + begin, dw + end, 0.0f);
                 std::fill(db + begin, db + end, 0.0f);
                 for (int64_t row = 0; row < rows; ++row) {
                   const float* px = x + row * group;
                   const float* pg = gy + row * group;
                   const float mu = mean[row], rs = rstd[row];
#pragma omp simd
                   for (int64_t k = begin; k < end; ++k) {
                     dw[k] += pg[k] * (px[k] - mu) * rs;
                     db[k] += pg[k];
                   }
                 }
               });
}

}  // namespace dtrain::cpu
