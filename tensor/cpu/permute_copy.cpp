// permute_copy: dims simplified, then runs or tiled transposes, split across threads by the outer
// output index.
#include "dtrain/tensor/cpu/permute_copy.h"

#include <algorithm>
#include <cstring>

#include "dtrain/tensor/cpu/parallel.h"

namespace dtrain::cpu {
namespace {

struct Dim {
  int64_t size;
  int64_t in_stride;  // elements
};

/// Output dims (outermost first) with their input strides, size-1 dims dropped and neighbours that
/// are neighbours in the input too (in the same order) merged.
std::vector<Dim> simplified_output_dims(const std::vector<int64_t>& in_shape,
                                        const std::vector<int64_t>& perm) {
  const size_t nd = in_shape.size();
  std::vector<int64_t> in_stride(nd);
  int64_t stride = 1;
  for (size_t d = nd; d-- > 0;) {
    in_stride[d] = stride;
    stride *= in_shape[d];
  }
  std::vector<Dim> dims;
  int64_t previous_input_dim = -2;
  for (size_t i = 0; i < nd; ++i) {
    const int64_t d = perm[i];
    if (in_shape[d] == 1) continue;
    if (!dims.empty() && d == previous_input_dim + 1) {
      dims.back().size *= in_shape[d];
      dims.back().in_stride = in_stride[d];
    } else {
      dims.push_back({in_shape[d], in_stride[d]});
    }
    previous_input_dim = d;
  }
  if (dims.empty()) dims.push_back({1, 1});
  return dims;
}

/// Input offset of outer output index `flat` over dims[0, count).
int64_t input_offset(const std::vector<Dim>& dims, size_t count, int64_t flat) {
  int64_t offset = 0;
  for (size_t d = count; d-- > 0;) {
    offset += flat % dims[d].size * dims[d].in_stride;
    flat /= dims[d].size;
  }
  return offset;
}

template <class E>
void copy_runs(const E* in, E* out, const std::vector<Dim>& dims) {
  // The innermost output dim is contiguous in the input: each outer index copies one run.
  const size_t outer_dims = dims.size() - 1;
  const int64_t run = dims.back().size;
  int64_t outer = 1;
  for (size_t d = 0; d < outer_dims; ++d) outer *= dims[d].size;
  parallel_for(outer, std::max<int64_t>(1, kGrain / std::max<int64_t>(run, 1)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t o = begin; o < end; ++o) {
                   std::memcpy(out + o * run, in + input_offset(dims, outer_dims, o),
                               static_cast<size_t>(run) * sizeof(E));
                 }
               });
}

template <class E>
void copy_transposed(const E* in, E* out, const std::vector<Dim>& dims) {
  // The input's contiguous dim (stride 1) is output dim q, not the last: for every index of the
  // other dims, out[.., i (dim q), .., j (last)] = in[i + j * last_stride], in tiles so that
  // both sides stay in cache lines.
  const size_t nd = dims.size();
  size_t q = 0;
  while (dims[q].in_stride != 1) ++q;
  const int64_t rows = dims[q].size, cols = dims[nd - 1].size;
  const int64_t col_stride = dims[nd - 1].in_stride;
  int64_t out_row_stride = 1;
  for (size_t d = nd - 1; d > q; --d) out_row_stride *= dims[d].size;
  std::vector<Dim> others;  // every dim but q and the last, with output strides alongside
  std::vector<int64_t> other_out_stride;
  {
    int64_t s = 1;
    std::vector<int64_t> out_stride(nd);
    for (size_t d = nd; d-- > 0;) {
      out_stride[d] = s;
      s *= dims[d].size;
    }
    for (size_t d = 0; d + 1 < nd; ++d) {
      if (d == q) continue;
      others.push_back(dims[d]);
      other_out_stride.push_back(out_stride[d]);
    }
  }
  int64_t outer = 1;
  for (const Dim& d : others) outer *= d.size;
  constexpr int64_t kTile = 16;
  parallel_for(outer, std::max<int64_t>(1, kGrain / std::max<int64_t>(rows * cols, 1)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t o = begin; o < end; ++o) {
                   int64_t in_base = 0, out_base = 0;
                   for (int64_t flat = o, d = static_cast<int64_t>(others.size()); d-- > 0;) {
                     const int64_t i = flat % others[d].size;
                     flat /= others[d].size;
                     in_base += i * others[d].in_stride;
                     out_base += i * other_out_stride[d];
                   }
                   for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
                     const int64_t r1 = std::min(rows, r0 + kTile);
                     for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
                       const int64_t c1 = std::min(cols, c0 + kTile);
                       for (int64_t r = r0; r < r1; ++r) {
                         E* dst = out + out_base + r * out_row_stride;
                         const E* src = in + in_base + r;
                         for (int64_t c = c0; c < c1; ++c) dst[c] = src[c * col_stride];
                       }
                     }
                   }
                 }
               });
}

template <class E>
void permute_typed(const E* in, E* out, const std::vector<int64_t>& in_shape,
                   const std::vector<int64_t>& perm) {
  const std::vector<Dim> dims = simplified_output_dims(in_shape, perm);
  if (dims.back().in_stride == 1) {
    copy_runs(in, out, dims);
  } else {
    copy_transposed(in, out, dims);
  }
}

}  // namespace

void permute_copy(const void* in, void* out, const std::vector<int64_t>& in_shape,
                  const std::vector<int64_t>& perm, size_t element) {
  switch (element) {
    case 1:
      permute_typed(static_cast<const uint8_t*>(in), static_cast<uint8_t*>(out), in_shape, perm);
      return;
    case 2:
      permute_typed(static_cast<const uint16_t*>(in), static_cast<uint16_t*>(out), in_shape, perm);
      return;
    case 4:
      permute_typed(static_cast<const uint32_t*>(in), static_cast<uint32_t*>(out), in_shape, perm);
      return;
    default:
      permute_typed(static_cast<const uint64_t*>(in), static_cast<uint64_t*>(out), in_shape, perm);
      return;
  }
}

}  // namespace dtrain::cpu
