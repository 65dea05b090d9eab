// Causal (decoder-only) multi-head self-attention and the pre-norm transformer block built on it.
#pragma once

#include "dtrain/nn/layers.h"

namespace dtrain::nn {

/// Multi-head scaled dot-product self-attention where position t attends to positions 0..t.
/// Children "qkv" = Linear(D, 3D) (q, k, v in that order along the last dim), "attn_drop"
/// (dropout on the attention probabilities, its own stream from `seed`) and "proj" = Linear(D, D).
class CausalSelfAttention : public Module {
 public:
  CausalSelfAttention(int64_t dim, int64_t heads, double dropout = 0.0, uint64_t seed = 0,
                      Generator& gen = default_generator());
  std::string describe() const override;
  Tensor forward(const Tensor& x) override;  // [N, T, D] -> [N, T, D]
  std::shared_ptr<Linear> qkv, proj;
  std::shared_ptr<Dropout> attn_drop;
  int64_t dim() const { return dim_; }
  int64_t heads() const { return heads_; }

 protected:
  std::shared_ptr<Module> make_empty() const override;

 private:
  /// softmax(q k^T / sqrt(hd) + causal mask), dropped out, times v, for every head, from the
  /// qkv projection [N, T, 3D] (q, k, v, each [H, hd] per position); [N, T, D], heads side by side.
  Tensor attend(const Tensor& qkv_out);

  int64_t dim_, heads_;
  double dropout_;
  uint64_t seed_;
  Tensor mask_;  // the last causal mask built ([T, T], 0 / -inf), reused while T stays
};

/// GPT-style pre-norm block: x = x + attn(ln1(x)); x = x + fc2(gelu(fc1(ln2(x)))).
/// `dropout` applies to the attention probabilities. Children "ln1", "attn", "ln2", "fc1"
/// = Linear(D, mlp_ratio * D) and "fc2" = Linear(mlp_ratio * D, D).
class TransformerBlock : public Module {
 public:
  TransformerBlock(int64_t dim, int64_t heads, int64_t mlp_ratio = 4, double dropout = 0.0,
                   uint64_t seed = 0, Generator& gen = default_generator());
  std::string describe() const override;
  Tensor forward(const Tensor& x) override;  // [N, T, D] -> [N, T, D]
  std::shared_ptr<LayerNorm> ln1, ln2;
  std::shared_ptr<CausalSelfAttention> attn;
  std::shared_ptr<Linear> fc1, fc2;

 protected:
  std::shared_ptr<Module> make_empty() const override;

 private:
  int64_t dim_, heads_, mlp_ratio_;
  double dropout_;
  uint64_t seed_;
};

}  // namespace dtrain::nn
