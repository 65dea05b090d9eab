// GEMM and matmul: oneDNN's dnnl_sgemm on the CPU, cuBLAS on CUDA (strided-batched for batched
// float32 matmul), a plain loop for float64.
#include <oneapi/dnnl/dnnl.h>

#include <atomic>
#include <vector>

#include "dtrain/tensor/cpu/parallel.h"
#include "dtrain/tensor/cuda/cuda_backend.h"
#include "dtrain/tensor/cuda/cuda_gemm_batched.h"
#include "dtrain/tensor/dispatch.h"
#include "dtrain/tensor/ops.h"
#include "dtrain/tensor/precision.h"

namespace dtrain::ops {
namespace {

std::atomic<uint64_t> matrix_flops_done{0};

/// Row-major C[M, N] = alpha * op(A) op(B) + beta * C; lda/ldb/ldc are row strides as stored.
template <class T>
void gemm_reference(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                    int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  cpu::parallel_for(
      m, std::max<int64_t>(1, 4096 / std::max<int64_t>(n * k, 1)), [&](int64_t rb, int64_t re) {
        for (int64_t i = rb; i < re; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            T acc = 0;
            for (int64_t p = 0; p < k; ++p) {
              const T av = ta ? a[p * lda + i] : a[i * lda + p];
              const T bv = tb ? b[j * ldb + p] : b[p * ldb + j];
              acc += av * bv;
            }
            c[i * ldc + j] = alpha * acc + (beta == T(0) ? T(0) : beta * c[i * ldc + j]);
          }
        }
      });
}

/// Elements a row-major matrix of `rows` x `cols` with row stride `ld` spans.
int64_t extent(int64_t rows, int64_t cols, int64_t ld) { return (rows - 1) * ld + cols; }

/// train.precision on CUDA: both operands converted to 16 bits, multiplied by cuBLAS with float32
/// accumulation and output.
void gemm_16bit_cuda(DType precision, Device device, bool ta, bool tb, int64_t m, int64_t n,
                     int64_t k, float alpha, const void* a, int64_t lda, const void* b, int64_t ldb,
                     float beta, void* c, int64_t ldc) {
  const int64_t na = extent(ta ? k : m, ta ? m : k, lda), nb = extent(tb ? n : k, tb ? k : n, ldb);
  Tensor a16({na}, precision, device), b16({nb}, precision, device);
  cuda::convert(a, DType::kFloat32, a16.data_ptr(), precision, na, device.index);
  cuda::convert(b, DType::kFloat32, b16.data_ptr(), precision, nb, device.index);
  cuda::gemm_16bit(ta, tb, m, n, k, alpha, a16.data_ptr(), lda, b16.data_ptr(), ldb, beta,
                   static_cast<float*>(c), ldc, precision, device.index);
}

void gemm_raw(Device device, DType dtype, bool ta, bool tb, int64_t m, int64_t n, int64_t k,
              float alpha, const void* a, int64_t lda, const void* b, int64_t ldb, float beta,
              void* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  count_matrix_flops(2 * m * n * k);
  if (dtype == DType::kFloat32) {
    const DType precision = matmul_precision();
    if (precision != DType::kFloat32 && k > 0) {
      if (device.is_cuda()) {
        gemm_16bit_cuda(precision, device, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
      }
      // The CPU multiplies the rounded operands in float32: exact products of 16-bit values,
      // accumulated in float32, as the 16-bit kernels do.
      thread_local std::vector<float> rounded_a, rounded_b;
      const int64_t na = extent(ta ? k : m, ta ? m : k, lda);
      const int64_t nb = extent(tb ? n : k, tb ? k : n, ldb);
      rounded_a.resize(static_cast<size_t>(na));
      rounded_b.resize(static_cast<size_t>(nb));
      round_floats(static_cast<const float*>(a), rounded_a.data(), na, precision);
      round_floats(static_cast<const float*>(b), rounded_b.data(), nb, precision);
      const dnnl_status_t st =
          dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, alpha, rounded_a.data(), lda,
                     rounded_b.data(), ldb, beta, static_cast<float*>(c), ldc);
      DTRAIN_CHECK(st == dnnl_success, "gemm: dnnl_sgemm failed with status ", static_cast<int>(st),
                   " for M=", m, " N=", n, " K=", k);
      return;
    }
    if (device.is_cuda()) {
      cuda::gemm(ta, tb, m, n, k, alpha, static_cast<const float*>(a), lda,
                 static_cast<const float*>(b), ldb, beta, static_cast<float*>(c), ldc,
                 device.index);
      return;
    }
    if (k == 0) {
      // oneDNN rejects K = 0; the product is empty, so C = beta * C.
      float* pc = static_cast<float*>(c);
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j)
          pc[i * ldc + j] = beta == 0.f ? 0.f : beta * pc[i * ldc + j];
      return;
    }
    const dnnl_status_t st =
        dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, alpha, static_cast<const float*>(a),
                   lda, static_cast<const float*>(b), ldb, beta, static_cast<float*>(c), ldc);
    DTRAIN_CHECK(st == dnnl_success, "gemm: dnnl_sgemm failed with status ", static_cast<int>(st),
                 " for M=", m, " N=", n, " K=", k);
    return;
  }
  DTRAIN_CHECK(device.is_cpu(), "gemm: ", dtype_name(dtype), " is supported on the CPU only");
  detail::dispatch_floating(dtype, "gemm", [&](auto tag) {
    using T = decltype(tag);
    gemm_reference<T>(ta, tb, m, n, k, T(alpha), static_cast<const T*>(a), lda,
                      static_cast<const T*>(b), ldb, T(beta), static_cast<T*>(c), ldc);
  });
}

}  // namespace

void count_matrix_flops(int64_t flops) {
  matrix_flops_done.fetch_add(static_cast<uint64_t>(flops), std::memory_order_relaxed);
}

uint64_t matrix_flops() { return matrix_flops_done.load(std::memory_order_relaxed); }

void gemm(bool trans_a, bool trans_b, const Tensor& a, const Tensor& b, Tensor& c, float alpha,
          float beta) {
  detail::check_same("gemm", a, b);
  detail::check_same("gemm", a, c);
  DTRAIN_CHECK(a.dim() == 2 && b.dim() == 2 && c.dim() == 2, "gemm: expects 2-D operands; got ",
               a.describe(), ", ", b.describe(), " and ", c.describe());
  const int64_t m = trans_a ? a.size(1) : a.size(0), k = trans_a ? a.size(0) : a.size(1);
  const int64_t kb = trans_b ? b.size(1) : b.size(0), n = trans_b ? b.size(0) : b.size(1);
  DTRAIN_CHECK(k == kb && c.size(0) == m && c.size(1) == n, "gemm: ", trans_a ? "A^T " : "A ",
               shape_str(a.shape()), " @ ", trans_b ? "B^T " : "B ", shape_str(b.shape()),
               " into C ", shape_str(c.shape()), ": inner or outer dimensions do not match");
  gemm_raw(a.device(), a.dtype(), trans_a, trans_b, m, n, k, alpha, a.data_ptr(), a.size(1),
           b.data_ptr(), b.size(1), beta, c.data_ptr(), c.size(1));
}

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  detail::check_same("matmul", a, b);
  DTRAIN_CHECK(a.dim() >= 2 && b.dim() >= 2, "matmul: both operands need at least 2 dims; got ",
               a.describe(), " and ", b.describe(), ". Reshape a vector to [1, K] or [K, 1]");
  const int64_t ar = a.size(-2), ac = a.size(-1), br = b.size(-2), bc = b.size(-1);
  const int64_t m = trans_a ? ac : ar, k = trans_a ? ar : ac;
  const int64_t kb = trans_b ? bc : br, n = trans_b ? br : bc;
  if (k != kb) {
    DTRAIN_THROW(ValueError, "matmul: ", a.describe(), trans_a ? " (transposed)" : "", " @ ",
                 b.describe(), trans_b ? " (transposed)" : "", ": inner dimensions ", k, " and ",
                 kb, " differ");
  }
  const Shape a_batch(a.shape().begin(), a.shape().end() - 2);
  const Shape b_batch(b.shape().begin(), b.shape().end() - 2);
  const Shape batch = broadcast_shapes(a_batch, b_batch, "matmul");
  Shape out_shape = batch;
  out_shape.push_back(m);
  out_shape.push_back(n);
  Tensor out(out_shape, a.dtype(), a.device());
  const size_t es = dtype_size(a.dtype());
  if (b.dim() == 2 && !trans_a) {
    // [B..., M, K] @ [K, N]: one GEMM over the stacked rows.
    gemm_raw(a.device(), a.dtype(), false, trans_b, shape_numel(a_batch) * m, n, k, 1.f,
             a.data_ptr(), ac, b.data_ptr(), bc, 0.f, out.data_ptr(), n);
    return out;
  }
  const int64_t batches = shape_numel(batch);
  const int64_t a_count = shape_numel(a_batch), b_count = shape_numel(b_batch);
  if (a.device().is_cuda() && a.dtype() == DType::kFloat32 &&
      matmul_precision() == DType::kFloat32 && (a_count == batches || a_count == 1) &&
      (b_count == batches || b_count == 1)) {
    // Each operand is a full batch or one matrix for all: one strided-batched cuBLAS call.
    count_matrix_flops(2 * batches * m * n * k);
    cuda::gemm_strided_batched(trans_a, trans_b, m, n, k, 1.f, a.data_ptr<float>(), ac,
                               a_count == 1 ? 0 : ar * ac, b.data_ptr<float>(), bc,
                               b_count == 1 ? 0 : br * bc, 0.f, out.data_ptr<float>(), n, m * n,
                               batches, a.device().index);
    return out;
  }
  // Offsets of each batch in a and b with broadcasting (stride 0 on broadcast batch dims).
  const kernels::BroadcastIndex index = detail::broadcast_index(batch, a_batch, b_batch);
  const char* pa = static_cast<const char*>(a.data_ptr());
  const char* pb = static_cast<const char*>(b.data_ptr());
  char* po = static_cast<char*>(out.data_ptr());
  for (int64_t i = 0; i < batches; ++i) {
    int64_t oa = 0, ob = 0;
    if (index.ndim > 0) index.offsets(i, oa, ob);
    gemm_raw(a.device(), a.dtype(), trans_a, trans_b, m, n, k, 1.f, pa + oa * ar * ac * es, ac,
             pb + ob * br * bc * es, bc, 0.f, po + i * m * n * es, n);
  }
  return out;
}

void gemm_grid(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
               const MatrixGrid& a, const MatrixGrid& b, float beta, const MatrixGrid& c,
               int64_t outer, int64_t inner) {
  detail::check_same("gemm_grid", a.tensor, b.tensor);
  detail::check_same("gemm_grid", a.tensor, c.tensor);
  DTRAIN_CHECK(m >= 0 && n >= 0 && k >= 0 && outer >= 0 && inner >= 0,
               "gemm_grid: negative size (M ", m, ", N ", n, ", K ", k, ", grid ", outer, " x ",
               inner, ")");
  if (outer == 0 || inner == 0 || m == 0 || n == 0) return;
  // Every matrix of the grid must lie inside its tensor: the last element of the last row of the
  // matrix furthest along (strides are not negative).
  const auto check_inside = [&](const MatrixGrid& g, int64_t rows, int64_t cols, const char* name) {
    DTRAIN_CHECK(g.offset >= 0 && g.outer_stride >= 0 && g.inner_stride >= 0 && g.ld >= cols,
                 "gemm_grid: ", name, " has a negative offset or stride, or ld ", g.ld,
                 " below its ", cols, " columns");
    const int64_t last = g.offset + (outer - 1) * g.outer_stride + (inner - 1) * g.inner_stride +
                         (rows - 1) * g.ld + cols;
    DTRAIN_CHECK(last <= g.tensor.numel(), "gemm_grid: ", name, "'s ", outer, " x ", inner,
                 " grid of ", rows, " x ", cols, " matrices reaches element ", last, " of ",
                 g.tensor.describe());
  };
  check_inside(a, trans_a ? k : m, trans_a ? m : k, "A");
  check_inside(b, trans_b ? n : k, trans_b ? k : n, "B");
  check_inside(c, m, n, "C");
  const Tensor& t = a.tensor;
  const size_t es = dtype_size(t.dtype());
  const char* pa = static_cast<const char*>(a.tensor.data_ptr());
  const char* pb = static_cast<const char*>(b.tensor.data_ptr());
  char* pc = static_cast<char*>(c.tensor.data_ptr());
  for (int64_t i = 0; i < outer; ++i) {
    const int64_t oa = a.offset + i * a.outer_stride, ob = b.offset + i * b.outer_stride;
    const int64_t oc = c.offset + i * c.outer_stride;
    if (t.device().is_cuda() && t.dtype() == DType::kFloat32 &&
        matmul_precision() == DType::kFloat32 && k > 0) {
      // The inner matrices are evenly spaced: one strided-batched cuBLAS call per row of the grid.
      count_matrix_flops(2 * inner * m * n * k);
      cuda::gemm_strided_batched(
          trans_a, trans_b, m, n, k, alpha, reinterpret_cast<const float*>(pa + oa * es), a.ld,
          a.inner_stride, reinterpret_cast<const float*>(pb + ob * es), b.ld, b.inner_stride, beta,
          reinterpret_cast<float*>(pc + oc * es), c.ld, c.inner_stride, inner, t.device().index);
      continue;
    }
    for (int64_t j = 0; j < inner; ++j) {
      gemm_raw(t.device(), t.dtype(), trans_a, trans_b, m, n, k, alpha,
               pa + (oa + j * a.inner_stride) * es, a.ld, pb + (ob + j * b.inner_stride) * es, b.ld,
               beta, pc + (oc + j * c.inner_stride) * es, c.ld);
    }
  }
}

}  // namespace dtrain::ops
