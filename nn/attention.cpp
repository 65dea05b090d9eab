// Causal self-attention and the transformer block.
#include "dtrain/nn/attention.h"

#include <cmath>
#include <limits>
#include <vector>

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
  // [N, T, 3D] -> [3, N, H, T, hd]: q, k and v are then contiguous slices along dim 0.
  const Tensor heads =
      permute(reshape(qkv->forward(x), {n, t, 3, heads_, head_dim}), {2, 0, 3, 1, 4});
  const Shape per_head{n, heads_, t, head_dim};
  const Tensor q = reshape(slice(heads, 0, 0, 1), per_head);
  const Tensor k = reshape(slice(heads, 0, 1, 2), per_head);
  const Tensor v = reshape(slice(heads, 0, 2, 3), per_head);
  // The scale goes on q ([N, H, T, hd]) rather than on the scores ([N, H, T, T]): a quarter of the
  // elements at T = 4 hd.
  const Tensor scores =
      matmul(mul(q, 1.0 / std::sqrt(static_cast<double>(head_dim))), transpose(k, -2, -1));
  if (!mask_.defined() || mask_.size(0) != t || mask_.dtype() != x.dtype() ||
      mask_.device() != x.device()) {
    mask_ = causal_mask(t, x.dtype(), x.device());
  }
  const Tensor probs = attn_drop->forward(softmax(add(scores, mask_), -1));
  const Tensor y = permute(matmul(probs, v), {0, 2, 1, 3});  // [N, T, H, hd]
  return proj->forward(reshape(y, {n, t, dim_}));
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
