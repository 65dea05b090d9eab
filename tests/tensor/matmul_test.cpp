// ops::gemm and ops::matmul against a triple loop accumulated in double: every transpose
// combination, odd sizes, alpha/beta, K = 0, batched broadcasting and the float64 path.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dtrain/tensor/ops.h"
#include "reference.h"
#include "testutil.h"

namespace dtrain {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testref::error_message;
using testref::random_tensor;
using testref::tensor_of;
using testutil::all_close;

/// op(A)[i, p] for A stored row-major as `a` with `cols` columns.
double at(const std::vector<double>& a, int64_t cols, bool trans, int64_t i, int64_t p) {
  return trans ? a[p * cols + i] : a[i * cols + p];
}

/// alpha * op(A) @ op(B) + beta * C, in double.
std::vector<double> naive_gemm(bool ta, bool tb, const Tensor& a, const Tensor& b, int64_t m,
                               int64_t n, int64_t k, double alpha = 1, double beta = 0,
                               const std::vector<double>& c = {}) {
  const auto va = a.to_vector<double>(), vb = b.to_vector<double>();
  std::vector<double> out(m * n);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0;
      for (int64_t p = 0; p < k; ++p)
        acc += at(va, a.size(1), ta, i, p) * at(vb, b.size(1), tb, p, j);
      out[i * n + j] = alpha * acc + (beta == 0 ? 0 : beta * c[i * n + j]);
    }
  return out;
}

Shape stored_shape(bool trans, int64_t rows, int64_t cols) {
  return trans ? Shape{cols, rows} : Shape{rows, cols};
}

TEST(Gemm, AllSizesAndTransposesMatchTripleLoop) {
  const int64_t sizes[] = {1, 3, 17, 129};
  uint64_t seed = 1;
  for (int64_t m : sizes)
    for (int64_t n : sizes)
      for (int64_t k : sizes)
        for (int t = 0; t < 4; ++t) {
          const bool ta = t & 1, tb = t & 2;
          Tensor a = random_tensor(stored_shape(ta, m, k), seed++);
          Tensor b = random_tensor(stored_shape(tb, k, n), seed++);
          Tensor c({m, n});
          ops::gemm(ta, tb, a, b, c);
          // float32 products of values in [-1, 1]: error grows like K * eps.
          ASSERT_TRUE(
              all_close(c, tensor_of(naive_gemm(ta, tb, a, b, m, n, k), {m, n}), 1e-4, 2e-6 * k))
              << "M=" << m << " N=" << n << " K=" << k << " trans_a=" << ta << " trans_b=" << tb;
        }
}

TEST(Gemm, AlphaAndBetaScaleAndAccumulate) {
  for (DType dtype : {DType::kFloat32, DType::kFloat64}) {
    for (int t = 0; t < 4; ++t) {
      const bool ta = t & 1, tb = t & 2;
      Tensor a = random_tensor(stored_shape(ta, 7, 5), 20, -1, 1, dtype);
      Tensor b = random_tensor(stored_shape(tb, 5, 9), 21, -1, 1, dtype);
      Tensor c = random_tensor({7, 9}, 22, -1, 1, dtype);
      const auto expected = naive_gemm(ta, tb, a, b, 7, 9, 5, 0.5, -2.0, c.to_vector<double>());
      ops::gemm(ta, tb, a, b, c, 0.5f, -2.0f);
      const double tol = dtype == DType::kFloat32 ? 1e-5 : 1e-13;
      EXPECT_TRUE(all_close(c, tensor_of(expected, {7, 9}, dtype), tol, tol))
          << dtype_name(dtype) << " trans_a=" << ta << " trans_b=" << tb;
    }
  }
}

TEST(Gemm, EmptyInnerDimensionScalesC) {
  for (DType dtype : {DType::kFloat32, DType::kFloat64}) {
    Tensor a({3, 0}, dtype), b({0, 4}, dtype);
    Tensor c = full({3, 4}, 1.5, dtype);
    ops::gemm(false, false, a, b, c, 1.f, 2.f);
    EXPECT_TRUE(all_close(c, full({3, 4}, 3.0, dtype))) << dtype_name(dtype);
    ops::gemm(false, false, a, b, c);
    EXPECT_TRUE(all_close(c, zeros({3, 4}, dtype))) << dtype_name(dtype);
  }
}

TEST(Gemm, Float64MatchesTripleLoopTightly) {
  for (int t = 0; t < 4; ++t) {
    const bool ta = t & 1, tb = t & 2;
    Tensor a = random_tensor(stored_shape(ta, 33, 65), 30 + t, -1, 1, DType::kFloat64);
    Tensor b = random_tensor(stored_shape(tb, 65, 17), 40 + t, -1, 1, DType::kFloat64);
    Tensor c({33, 17}, DType::kFloat64);
    ops::gemm(ta, tb, a, b, c);
    EXPECT_TRUE(
        all_close(c, tensor_of(naive_gemm(ta, tb, a, b, 33, 17, 65), {33, 17}, DType::kFloat64),
                  1e-12, 1e-12));
  }
}

/// Batched matmul with broadcast batch dims and optional transposes of the last two dims.
Tensor naive_matmul(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  const int64_t ar = a.size(-2), ac = a.size(-1), br = b.size(-2), bc = b.size(-1);
  const int64_t m = ta ? ac : ar, k = ta ? ar : ac, n = tb ? br : bc;
  const Shape a_batch(a.shape().begin(), a.shape().end() - 2);
  const Shape b_batch(b.shape().begin(), b.shape().end() - 2);
  const Shape batch = ops::broadcast_shapes(a_batch, b_batch, "naive");
  Shape out_shape = batch;
  out_shape.push_back(m);
  out_shape.push_back(n);
  const auto va = a.to_vector<double>(), vb = b.to_vector<double>();
  std::vector<double> out(shape_numel(out_shape));
  for (int64_t bi = 0; bi < shape_numel(batch); ++bi) {
    const auto idx = testref::unravel(bi, batch);
    const int64_t oa = testref::broadcast_source(idx, a_batch) * ar * ac;
    const int64_t ob = testref::broadcast_source(idx, b_batch) * br * bc;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0;
        for (int64_t p = 0; p < k; ++p) {
          const double x = ta ? va[oa + p * ac + i] : va[oa + i * ac + p];
          const double y = tb ? vb[ob + j * bc + p] : vb[ob + p * bc + j];
          acc += x * y;
        }
        out[(bi * m + i) * n + j] = acc;
      }
  }
  return tensor_of(out, out_shape, a.dtype());
}

struct MatmulCase {
  Shape a, b, out;
  bool ta = false, tb = false;
};

TEST(Matmul, BatchedBroadcastingMatchesNaive) {
  const std::vector<MatmulCase> cases = {
      {{5, 4}, {4, 6}, {5, 6}},
      {{2, 3, 4}, {4, 6}, {2, 3, 6}},
      {{3, 4, 5}, {3, 5, 2}, {3, 4, 2}},
      {{1, 4, 5}, {3, 5, 2}, {3, 4, 2}},
      {{3, 4, 5}, {1, 5, 2}, {3, 4, 2}},
      {{4, 5}, {3, 5, 2}, {3, 4, 2}},
      {{2, 1, 3, 4}, {5, 4, 6}, {2, 5, 3, 6}},
      {{2, 3, 4}, {6, 4}, {2, 3, 6}, false, true},
      {{2, 4, 3}, {4, 6}, {2, 3, 6}, true, false},
      {{3, 5, 4}, {3, 2, 5}, {3, 4, 2}, true, true},
      {{1, 5, 4}, {3, 5, 2}, {3, 4, 2}, true, false},
      {{4, 3}, {6, 4}, {3, 6}, true, true},
      {{2, 3, 40}, {40, 50}, {2, 3, 50}},
  };
  uint64_t seed = 50;
  for (DType dtype : {DType::kFloat32, DType::kFloat64}) {
    for (const auto& c : cases) {
      Tensor a = random_tensor(c.a, seed++, -1, 1, dtype);
      Tensor b = random_tensor(c.b, seed++, -1, 1, dtype);
      Tensor out = ops::matmul(a, b, c.ta, c.tb);
      ASSERT_EQ(out.shape(), c.out) << shape_str(c.a) << " @ " << shape_str(c.b);
      EXPECT_EQ(out.dtype(), dtype);
      const double tol = dtype == DType::kFloat32 ? 1e-5 : 1e-13;
      EXPECT_TRUE(all_close(out, naive_matmul(a, b, c.ta, c.tb), tol, tol))
          << dtype_name(dtype) << " " << shape_str(c.a) << (c.ta ? "^T" : "") << " @ "
          << shape_str(c.b) << (c.tb ? "^T" : "");
    }
  }
}

TEST(Matmul, AgreesWithGemmOnTwoDimensionalOperands) {
  Tensor a = random_tensor({17, 129}, 60), b = random_tensor({129, 3}, 61);
  Tensor c({17, 3});
  ops::gemm(false, false, a, b, c);
  EXPECT_TRUE(all_close(ops::matmul(a, b), c, 1e-6, 1e-6));
}

TEST(MatrixFlops, GemmAndMatmulCountTwicePerMultiplyAdd) {
  for (DType dtype : {DType::kFloat32, DType::kFloat64}) {
    const Tensor a = random_tensor({3, 7}, 1, -1, 1, dtype);
    const Tensor b = random_tensor({5, 7}, 2, -1, 1, dtype);
    Tensor c = zeros({3, 5}, dtype);
    uint64_t before = ops::matrix_flops();
    ops::gemm(false, true, a, b, c);
    EXPECT_EQ(ops::matrix_flops() - before, 2u * 3 * 5 * 7) << dtype_name(dtype);
    // Stacked rows ([4, 3, 7] @ [7, 5]) and broadcast batches ([4, 3, 7] @ [1, 7, 5]).
    const Tensor stacked = random_tensor({4, 3, 7}, 3, -1, 1, dtype);
    const Tensor right = random_tensor({7, 5}, 4, -1, 1, dtype);
    before = ops::matrix_flops();
    ops::matmul(stacked, right);
    EXPECT_EQ(ops::matrix_flops() - before, 2u * 4 * 3 * 5 * 7) << dtype_name(dtype);
    before = ops::matrix_flops();
    ops::matmul(stacked, right.view({1, 7, 5}));
    EXPECT_EQ(ops::matrix_flops() - before, 2u * 4 * 3 * 5 * 7) << dtype_name(dtype);
    // Nothing to multiply, nothing counted.
    Tensor empty = zeros({0, 5}, dtype);
    before = ops::matrix_flops();
    ops::gemm(false, true, zeros({0, 7}, dtype), b, empty);
    EXPECT_EQ(ops::matrix_flops(), before) << dtype_name(dtype);
  }
}

/// The rows x cols matrix at `offset` of `values`, rows ld apart, as a tensor of `dtype`.
Tensor matrix_at(const std::vector<double>& values, int64_t offset, int64_t ld, int64_t rows,
                 int64_t cols, DType dtype) {
  std::vector<double> out;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out.push_back(values[offset + r * ld + c]);
  return tensor_of(out, {rows, cols}, dtype);
}

TEST(GemmGrid, EveryMatrixOfTheGridMatchesGemmAndTheGapsStayUntouched) {
  // A and B interleaved in one tensor (as q, k and v lie in [N, T, 3D]); C's matrices leave gaps.
  const int64_t m = 5, n = 3, k = 4, outer = 2, inner = 3;
  for (DType dtype : {DType::kFloat32, DType::kFloat64}) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        const Tensor ab = random_tensor({900}, 70 + ta + 2 * tb, -1, 1, dtype);
        Tensor c = random_tensor({200}, 80, -1, 1, dtype);
        const std::vector<double> before = c.to_vector<double>();
        const ops::MatrixGrid a{ab, 1, 360, 30, 2 * (ta ? m : k) + 1};
        const ops::MatrixGrid b{ab, 7, 360, 30 + 100, 2 * (tb ? k : n) + 1};
        const ops::MatrixGrid cg{c, 2, 90, 25, n + 1};
        const uint64_t flops = ops::matrix_flops();
        ops::gemm_grid(ta, tb, m, n, k, 0.5f, a, b, 2.f, cg, outer, inner);
        EXPECT_EQ(ops::matrix_flops() - flops, 2u * outer * inner * m * n * k);
        const std::vector<double> got = c.to_vector<double>(), values = ab.to_vector<double>();
        std::vector<bool> in_grid(before.size(), false);
        for (int64_t i = 0; i < outer; ++i) {
          for (int64_t j = 0; j < inner; ++j) {
            const auto place = [&](const ops::MatrixGrid& g) {
              return g.offset + i * g.outer_stride + j * g.inner_stride;
            };
            const Tensor ai = matrix_at(values, place(a), a.ld, ta ? k : m, ta ? m : k, dtype);
            const Tensor bi = matrix_at(values, place(b), b.ld, tb ? n : k, tb ? k : n, dtype);
            Tensor ci = matrix_at(before, place(cg), cg.ld, m, n, dtype);
            ops::gemm(ta, tb, ai, bi, ci, 0.5f, 2.f);
            const std::vector<double> want = ci.to_vector<double>();
            for (int64_t r = 0; r < m; ++r) {
              for (int64_t col = 0; col < n; ++col) {
                const int64_t at_c = place(cg) + r * cg.ld + col;
                in_grid[at_c] = true;
                EXPECT_NEAR(got[at_c], want[r * n + col], 1e-6)
                    << dtype_name(dtype) << " ta " << ta << " tb " << tb << " matrix " << i << ","
                    << j;
              }
            }
          }
        }
        for (size_t e = 0; e < before.size(); ++e) {
          if (!in_grid[e]) EXPECT_EQ(got[e], before[e]) << "element " << e << " outside the grid";
        }
      }
    }
  }
}

TEST(GemmGrid, AGridReachingPastItsTensorIsRefused) {
  const Tensor ab = zeros({100}), c = zeros({100});
  Tensor out = c;
  // 2 x 2 matrices of 4 x 4, the last starting at 60 + 20 = 80: its last row ends at 80 + 3 * 8
  // + 4.
  const ops::MatrixGrid a{ab, 0, 60, 20, 8};
  const ops::MatrixGrid ok{ab, 0, 30, 10, 4};
  EXPECT_THAT(error_message([&] {
                ops::gemm_grid(false, false, 4, 4, 4, 1.f, a, ok, 0.f, {out, 0, 50, 25, 4}, 2, 2);
              }),
              AllOf(HasSubstr("gemm_grid"), HasSubstr("A's 2 x 2 grid"), HasSubstr("108")));
  EXPECT_THAT(error_message([&] {
                ops::gemm_grid(false, false, 4, 4, 4, 1.f, ok, ok, 0.f, {out, 0, 50, 25, 3}, 2, 2);
              }),
              HasSubstr("ld 3 below its 4 columns"));
}

}  // namespace
}  // namespace dtrain
