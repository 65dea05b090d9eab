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

/// Part `i` of heads [3, N, H, T, hd] (q, k or v) as a view.
Tensor head_part(const Tensor& heads, int64_t i) {
  const Shape per_head(heads.shape().begin() + 1, heads.shape().end());
  const size_t part_bytes = heads.nbytes() / 3;
  return Tensor(heads.storage(), heads.storage_offset_bytes() + static_cast<size_t>(i) * part_bytes,
                per_head, heads.dtype());
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
  const int64_t n = x.size(0), t = x.size(1), head_dim = dim_ / heads_;
  // [N, T, 3D] -> [3, N, H, T, hd]: q, k and v are then contiguous parts along dim 0.
  const Tensor heads =
      permute(reshape(qkv->forward(x), {n, t, 3, heads_, head_dim}), {2, 0, 3, 1, 4});
  if (!mask_.defined() || mask_.size(0) != t || mask_.dtype() != x.dtype() ||
      mask_.device() != x.device()) {
    mask_ = causal_mask(t, x.dtype(), x.device());
  }
  const Tensor y = permute(attend(heads), {0, 2, 1, 3});  // [N, T, H, hd]
  return proj->forward(reshape(y, {n, t, dim_}));
}

Tensor CausalSelfAttention::attend(const Tensor& heads) {
  // One autograd node from [3, N, H, T, hd] to [N, H, T, hd], so the backward writes the three
  // gradients into one tensor (no slice gradients padded with zeros and summed) and no transposed
  // copies are made: softmax((q * scale) k^T + mask) (dropped out) v.
  using kernels::Binary;
  const Tensor h = heads.detach();
  const Tensor q = head_part(h, 0), k = head_part(h, 1), v = head_part(h, 2);
  // The scale goes on q ([N, H, T, hd]) rather than on the scores ([N, H, T, T]): a quarter of the
  // elements at T = 4 hd.
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  const Tensor q_scaled = ops::unary(kernels::Unary::kMulScalar, q, {scale});
  const Tensor scores = ops::matmul(q_scaled, k, false, true);
  Tensor keep;  // the dropout mask (already scaled by 1 / (1 - p)), when training
  if (attn_drop->is_training() && dropout_ > 0) {
    keep = ops::dropout_mask(scores.shape(), dropout_, attn_drop->generator(), scores.dtype(),
                             scores.device());
  }
  const CausalProbs out = causal_softmax(scores, mask_, keep);
  const Tensor probs = out.probs, dropped = out.dropped;
  return autograd::record(ops::matmul(dropped, v), "causal_self_attention", {heads},
                          [q_scaled, k, v, probs, keep, dropped, scale](const Tensor& g) {
                            const Tensor dv = ops::matmul(dropped, g, true, false);
                            Tensor d_probs = ops::matmul(g, v, false, true);
                            const Tensor d_scores = causal_softmax_backward(probs, d_probs, keep);
                            const Tensor dq = ops::unary(kernels::Unary::kMulScalar,
                                                         ops::matmul(d_scores, k), {scale});
                            const Tensor dk = ops::matmul(d_scores, q_scaled, true, false);
                            return std::vector<Tensor>{ops::stack({dq, dk, dv}, 0)};
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
