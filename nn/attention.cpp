// Causal self-attention and the transformer block.
#include "dtrain/nn/attention.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "dtrain/autograd/node.h"
#include "dtrain/tensor/cpu/parallel.h"
#include "dtrain/tensor/cpu/vec_math.h"
#include "dtrain/tensor/ops.h"

namespace dtrain::nn {

namespace {
/// [T, T]: 0 where key j <= query i, -inf above the diagonal, so softmax gives those keys 0.
Tensor causal_mask(int64_t t, DType dtype, Device device) {
  std::vector<double> values(static_cast<size_t>(t * t), 0.0);
  for (int64_t i = 0; i < t; ++i) {
    for (int64_t j = i + 1; j < t; ++j)
      values[i * t + j] = -std::numeric_limits<double>::infinity();
  }
  return to_device(to_dtype(from_vector<double>(values, {t, t}), dtype), device);
}

/// Whether causal_softmax and its backward take the row-prefix path.
bool causal_rows_on_cpu(const Tensor& t) {
  return t.device().is_cpu() && t.dtype() == DType::kFloat32;
}

/// softmax(scores + mask) over the last dim of scores [.., T, T], and when `keep` (the dropout
/// mask, scaled) is defined also the probabilities dropped out, probs * keep. Float32 rows on the
/// CPU skip the masked half and drop out in the same pass over each row: row i is the softmax of
/// its first i + 1 scores and 0 after them.
struct CausalProbs {
  Tensor probs, dropped;
};
CausalProbs causal_softmax(const Tensor& scores, const Tensor& mask, const Tensor& keep) {
  if (!causal_rows_on_cpu(scores)) {
    Tensor probs = ops::softmax(ops::binary(kernels::Binary::kAdd, scores, mask), -1);
    Tensor dropped = keep.defined() ? ops::binary(kernels::Binary::kMul, probs, keep) : probs;
    return {probs, dropped};
  }
  const int64_t t = scores.size(-1), rows = scores.numel() / t;
  Tensor probs(scores.shape(), scores.dtype(), scores.device());
  Tensor dropped = keep.defined() ? Tensor(scores.shape(), scores.dtype(), scores.device()) : probs;
  const float* in = scores.data<float>();
  const float* kp = keep.defined() ? keep.data<float>() : nullptr;
  float* out = probs.data<float>();
  float* out_dropped = dropped.data<float>();
  cpu::parallel_for(rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t kept = r % t + 1;
      const size_t masked_bytes = static_cast<size_t>(t - kept) * sizeof(float);
      float* row = out + r * t;
      cpu::softmax_rows_f32(in + r * t, row, 1, kept, false);
      std::memset(row + kept, 0, masked_bytes);
      if (kp == nullptr) continue;
      const float* keep_row = kp + r * t;
      float* dropped_row = out_dropped + r * t;
      for (int64_t j = 0; j < kept; ++j) dropped_row[j] = row[j] * keep_row[j];
      std::memset(dropped_row + kept, 0, masked_bytes);
    }
  });
  return {probs, dropped};
}

/// The gradient of causal_softmax's probs from probs and the gradient of the dropped-out
/// probabilities (`keep` defined) or of probs themselves; d_probs may be overwritten.
Tensor causal_softmax_backward(const Tensor& probs, Tensor& d_probs, const Tensor& keep) {
  if (!causal_rows_on_cpu(probs)) {
    if (keep.defined()) ops::binary_(kernels::Binary::kMul, d_probs, keep);
    return ops::softmax_backward(probs, d_probs, -1);
  }
  const int64_t t = probs.size(-1), rows = probs.numel() / t;
  Tensor dx(probs.shape(), probs.dtype(), probs.device());
  const float* y = probs.data<float>();
  const float* kp = keep.defined() ? keep.data<float>() : nullptr;
  float* g = d_probs.data<float>();
  float* out = dx.data<float>();
  cpu::parallel_for(rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t kept = r % t + 1;
      float* g_row = g + r * t;
      if (kp != nullptr) {
        const float* keep_row = kp + r * t;
        for (int64_t j = 0; j < kept; ++j) g_row[j] *= keep_row[j];
      }
      cpu::softmax_backward_rows_f32(y + r * t, g_row, out + r * t, 1, kept, false);
      std::memset(out + r * t + kept, 0, static_cast<size_t>(t - kept) * sizeof(float));
    }
  });
  return dx;
}
}  // namespace

// ---- CausalSelfAttention --------------------------------------------------------------------
CausalSelfAttention::CausalSelfAttention(int64_t dim, int64_t heads, double dropout, uint64_t seed,
                                         Generator& gen)
    : dim_(dim), heads_(heads), dropout_(dropout), seed_(seed) {
  DTRAIN_CHECK(dim_ > 0 && heads_ > 0, "CausalSelfAttention: dim and heads must be positive; got ",
               dim_, " and ", heads_);
  DTRAIN_CHECK(dim_ % heads_ == 0, "CausalSelfAttention: dim ", dim_, " is not divisible by heads ",
               heads_, "; each head gets dim / heads features");
  qkv = register_module("qkv", std::make_shared<Linear>(dim_, 3 * dim_, true, gen));
  attn_drop = register_module("attn_drop", std::make_shared<Dropout>(dropout_, seed_));
  proj = register_module("proj", std::make_shared<Linear>(dim_, dim_, true, gen));
}

std::string CausalSelfAttention::describe() const {
  return "CausalSelfAttention(dim " + std::to_string(dim_) + ", heads " + std::to_string(heads_) +
         ")";
}

Tensor CausalSelfAttention::forward(const Tensor& x) {
  if (x.dim() != 3 || x.size(2) != dim_) {
    DTRAIN_THROW(ValueError, describe(), ": input ", x.describe(), "; expected [N, T, ", dim_, "]");
  }
  const int64_t t = x.size(1);
  if (!mask_.defined() || mask_.size(0) != t || mask_.dtype() != x.dtype() ||
      mask_.device() != x.device()) {
    mask_ = causal_mask(t, x.dtype(), x.device());
  }
  return proj->forward(attend(qkv->forward(x)));
}

Tensor CausalSelfAttention::attend(const Tensor& qkv_out) {
  // One autograd node from [N, T, 3D] to [N, T, D]. Head j of sequence i reads its q, k and v as
  // T x hd matrices inside qkv_out (rows 3D apart) and writes its output into [N, T, D] the same
  // way, so no head is permuted out into a batch or back, and the backward writes the three
  // gradients into one [N, T, 3D] tensor: softmax(q k^T / sqrt(hd) + mask) (dropped out) v.
  const Tensor h = qkv_out.detach();
  const int64_t n = h.size(0), t = h.size(1), d = dim_, hd = dim_ / heads_, hs = heads_;
  // The [N, H] grid of the heads' T x hd matrices inside [N, T, parts * D]: part 0, 1, 2 of qkv
  // (q, k, v), part 0 of the output and its gradient.
  const auto in_rows = [t, hd, d](const Tensor& tensor, int64_t part, int64_t parts) {
    return ops::MatrixGrid{tensor, part * d, t * parts * d, hd, parts * d};
  };
  // Their T x T scores and probabilities, [N, H, T, T].
  const auto square = [t, hs](const Tensor& tensor) {
    return ops::MatrixGrid{tensor, 0, hs * t * t, t * t, t};
  };
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  const Shape scores_shape{n, hs, t, t};
  Tensor scores(scores_shape, h.dtype(), h.device());
  ops::gemm_grid(false, true, t, t, hd, scale, in_rows(h, 0, 3), in_rows(h, 1, 3), 0.f,
                 square(scores), n, hs);
  Tensor keep;  // the dropout mask (already scaled by 1 / (1 - p)), when training
  if (attn_drop->is_training() && dropout_ > 0) {
    keep = ops::dropout_mask(scores_shape, dropout_, attn_drop->generator(), h.dtype(), h.device());
  }
  const CausalProbs out = causal_softmax(scores, mask_, keep);
  Tensor y({n, t, d}, h.dtype(), h.device());
  ops::gemm_grid(false, false, t, hd, t, 1.f, square(out.dropped), in_rows(h, 2, 3), 0.f,
                 in_rows(y, 0, 1), n, hs);
  return autograd::record(y, "causal_self_attention", {qkv_out},
                          [h, probs = out.probs, dropped = out.dropped, keep, scale, in_rows,
                           square, n, t, hd, hs](const Tensor& g) {
                            Tensor d_qkv(h.shape(), h.dtype(), h.device());
                            // dv = dropped^T g, d_probs = g v^T, then dq = scale d_scores k, dk =
                            // scale d_scores^T q.
                            ops::gemm_grid(true, false, t, hd, t, 1.f, square(dropped),
                                           in_rows(g, 0, 1), 0.f, in_rows(d_qkv, 2, 3), n, hs);
                            Tensor d_probs(probs.shape(), probs.dtype(), probs.device());
                            ops::gemm_grid(false, true, t, t, hd, 1.f, in_rows(g, 0, 1),
                                           in_rows(h, 2, 3), 0.f, square(d_probs), n, hs);
                            const Tensor d_scores = causal_softmax_backward(probs, d_probs, keep);
                            ops::gemm_grid(false, false, t, hd, t, scale, square(d_scores),
                                           in_rows(h, 1, 3), 0.f, in_rows(d_qkv, 0, 3), n, hs);
                            ops::gemm_grid(true, false, t, hd, t, scale, square(d_scores),
                                           in_rows(h, 0, 3), 0.f, in_rows(d_qkv, 1, 3), n, hs);
                            return std::vector<Tensor>{d_qkv};
                          });
}

std::shared_ptr<Module> CausalSelfAttention::make_empty() const {
  auto copy = std::make_shared<CausalSelfAttention>(dim_, heads_, dropout_, seed_);
  copy->attn_drop->generator().set_offset(attn_drop->generator().offset());
  return copy;
}

// ---- TransformerBlock -----------------------------------------------------------------------
TransformerBlock::TransformerBlock(int64_t dim, int64_t heads, int64_t mlp_ratio, double dropout,
                                   uint64_t seed, Generator& gen)
    : dim_(dim), heads_(heads), mlp_ratio_(mlp_ratio), dropout_(dropout), seed_(seed) {
  DTRAIN_CHECK(dim_ > 0 && mlp_ratio_ > 0,
               "TransformerBlock: dim and mlp_ratio must be positive; got ", dim_, " and ",
               mlp_ratio_);
  ln1 = register_module("ln1", std::make_shared<LayerNorm>(Shape{dim_}));
  attn = register_module("attn",
                         std::make_shared<CausalSelfAttention>(dim_, heads_, dropout_, seed_, gen));
  ln2 = register_module("ln2", std::make_shared<LayerNorm>(Shape{dim_}));
  fc1 = register_module("fc1", std::make_shared<Linear>(dim_, mlp_ratio_ * dim_, true, gen));
  fc2 = register_module("fc2", std::make_shared<Linear>(mlp_ratio_ * dim_, dim_, true, gen));
}

std::string TransformerBlock::describe() const {
  return "TransformerBlock(dim " + std::to_string(dim_) + ", heads " + std::to_string(heads_) +
         ", mlp_ratio " + std::to_string(mlp_ratio_) + ")";
}

Tensor TransformerBlock::forward(const Tensor& x) {
  if (x.dim() != 3 || x.size(2) != dim_) {
    DTRAIN_THROW(ValueError, describe(), ": input ", x.describe(), "; expected [N, T, ", dim_, "]");
  }
  const Tensor h = add(x, attn->forward(ln1->forward(x)));
  return add(h, fc2->forward(gelu(fc1->forward(ln2->forward(h)))));
}

std::shared_ptr<Module> TransformerBlock::make_empty() const {
  auto copy = std::make_shared<TransformerBlock>(dim_, heads_, mlp_ratio_, dropout_, seed_);
  copy->attn->attn_drop->generator().set_offset(attn->attn_drop->generator().offset());
  return copy;
}

}  // namespace dtrain::nn
