// The standard layers. Each holds its configuration, registers its parameters and buffers by
// PyTorch's names, and initialises them as PyTorch does (from the default generator unless given).
#pragma once

#include <functional>
#include <initializer_list>

#include "dtrain/nn/module.h"

namespace dtrain::nn {

/// y = x W^T + b.
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true,
         Generator& gen = default_generator());
  std::string describe() const override;
  Tensor forward(const Tensor& x) override;  // [N, in] -> [N, out]
  Tensor weight, bias;                       // [out, in] Kaiming-uniform; [out]

 protected:
  std::shared_ptr<Module> make_empty() const override;

 private:
  int64_t in_, out_;
};

/// 2-D convolution over [N, C, H, W] with square kernels.
class Conv2d : public Module {
 public:
  Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride = 1,
         int64_t padding = 0, bool bias = true, Generator& gen = default_generator());
  std::string describe() const override;
  Tensor forward(const Tensor& x) override;  // [N, C, H, W] -> [N, O, OH, OW]
  Tensor weight, bias;                       // [O, C, K, K]; [O]
  int64_t kernel_size() const { return kernel_; }
  int64_t stride() const { return stride_; }
  int64_t padding() const { return padding_; }

 protected:
  std::shared_ptr<Module> make_empty() const override;

 private:
  int64_t in_, out_, kernel_, stride_, padding_;
};

/// 1-D convolution over [N, C, L]; PyTorch's Conv1d, with the same initialisation.
class Conv1d : public Module {
 public:
  Conv1d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride = 1,
         int64_t padding = 0, bool bias = true, Generator& gen = default_generator());
  std::string describe() const override;
  Tensor forward(const Tensor& x) override;  // [N, C, L] -> [N, O, (L + 2P - K) / S + 1]
  Tensor weight, bias;                       // [O, C, K]; [O]
  int64_t kernel_size() const { return kernel_; }
  int64_t stride() const { return stride_; }
  int64_t padding() const { return padding_; }

 protected:
  std::shared_ptr<Module> make_empty() const override;

 private:
  int64_t in_, out_, kernel_, stride_, padding_;
};

class MaxPool2d : public Module {
 public:
  explicit MaxPool2d(int64_t kernel_size, int64_t stride = -1, int64_t padding = 0);
  std::string describe() const override;
  Tensor forward(const Tensor& x) override;
  int64_t kernel_size() const { return kernel_; }
  int64_t stride() const { return stride_; }
  int64_t padding() const { return padding_; }

 protected:
  std::shared_ptr<Module> make_empty() const override;

 private:
  int64_t kernel_, stride_, padding_;
};

/// Average pooling; padding counts towards the divisor (count_include_pad=True).
class AvgPool2d : public Module {
 public:
  explicit AvgPool2d(int64_t kernel_size, int64_t stride = -1, int64_t padding = 0);
  std::string describe() const override;
  Tensor forward(const Tensor& x) override;
  int64_t kernel_size() const { return kernel_; }
  int64_t stride() const { return stride_; }
  int64_t padding() const { return padding_; }

 protected:
  std::shared_ptr<Module> make_empty() const override;

 private:
  int64_t kernel_, stride_, padding_;
};

/// Mean over every dim after the channels: [N, C, d1, d2, ...] -> [N, C] (PyTorch's
/// AdaptiveAvgPool2d(1) followed by Flatten, for any number of spatial dims).
class GlobalAvgPool : public Module {
 public:
  GlobalAvgPool() = default;
  std::string describe() const override { return "GlobalAvgPool"; }
  Tensor forward(const Tensor& x) override;

 protected:
  std::shared_ptr<Module> make_empty() const override;
};

/// Batch normalisation of [N, C] (BatchNorm1d) or [N, C, H, W] (BatchNorm2d); running statistics
/// are buffers ("running_mean", "running_var", "num_batches_tracked").
/// Sums a tensor over every replica of a data-parallel job, in place; a collective that every
/// replica calls in the same order (strategies/sync_batch_norm.h makes one over a communicator).
using ReplicaSum = std::function<void(Tensor&)>;

class BatchNorm : public Module {
 public:
  BatchNorm(int64_t num_features, int spatial_dims, double eps = 1e-5, double momentum = 0.1);
  std::string describe() const override;
  Tensor forward(const Tensor& x) override;
  Tensor weight, bias, running_mean, running_var, num_batches_tracked;
  double eps() const { return eps_; }
  /// SyncBatchNorm: with a replica sum set, training batches are normalised with the mean and
  /// variance of the global batch (every replica's batch together), taken through `sum` in
  /// forward and again in backward, and the running statistics follow the global batch, so
  /// they stay identical on every replica. Evaluation is unchanged. An empty function turns it
  /// off.
  void set_replica_sum(ReplicaSum sum) { replica_sum_ = std::move(sum); }
  bool synchronized() const { return static_cast<bool>(replica_sum_); }

 protected:
  std::shared_ptr<Module> make_empty() const override;

 private:
  Tensor synchronized_forward(const Tensor& x);
  int64_t features_;
  int spatial_dims_;
  double eps_, momentum_;
  ReplicaSum replica_sum_;
};
class BatchNorm1d : public BatchNorm {
 public:
  explicit BatchNorm1d(int64_t num_features, double eps = 1e-5, double momentum = 0.1)
      : BatchNorm(num_features, 0, eps, momentum) {}
};
class BatchNorm2d : public BatchNorm {
 public:
  explicit BatchNorm2d(int64_t num_features, double eps = 1e-5, double momentum = 0.1)
      : BatchNorm(num_features, 2, eps, momentum) {}
};

class LayerNorm : public Module {
 public:
  explicit LayerNorm(Shape normalized_shape, double eps = 1e-5);
  std::string describe() const override;
  Tensor forward(const Tensor& x) override;
  Tensor weight, bias;
  const Shape& normalized_shape() const { return shape_; }
  double eps() const { return eps_; }

 protected:
  std::shared_ptr<Module> make_empty() const override;

 private:
  Shape shape_;
  double eps_;
};

/// Lookup table: int64 indices [...] -> [..., dim], weights N(0, 1).
class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t embedding_dim, Generator& gen = default_generator());
  std::string describe() const override;
  Tensor forward(const Tensor& indices) override;
  Tensor weight;

 protected:
  std::shared_ptr<Module> make_empty() const override;

 private:
  int64_t num_, dim_;
};

/// Learned absolute positions: x [N, T, dim] -> x + weight[:T]; weight [max_len, dim] ~ N(0, 0.02).
class PositionalEmbedding : public Module {
 public:
  PositionalEmbedding(int64_t max_len, int64_t dim, Generator& gen = default_generator());
  std::string describe() const override;
  Tensor forward(const Tensor& x) override;
  Tensor weight;

 protected:
  std::shared_ptr<Module> make_empty() const override;

 private:
  int64_t max_len_, dim_;
};

/// Zeroes elements with probability p in training, from its own Philox stream.
class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.5, uint64_t seed = 0, uint64_t stream = 1);
  std::string describe() const override;
  Tensor forward(const Tensor& x) override;
  Generator& generator() { return gen_; }

 protected:
  std::shared_ptr<Module> make_empty() const override;

 private:
  double p_;
  Generator gen_;
};

/// Stateless elementwise layers.
enum class Activation { kReLU, kGELU, kTanh, kSigmoid };
class ActivationLayer : public Module {
 public:
  explicit ActivationLayer(Activation kind) : kind_(kind) {}
  std::string describe() const override;
  Tensor forward(const Tensor& x) override;
  Activation kind() const { return kind_; }

 protected:
  std::shared_ptr<Module> make_empty() const override;

 private:
  Activation kind_;
};
class ReLU : public ActivationLayer {
 public:
  ReLU() : ActivationLayer(Activation::kReLU) {}
};
class GELU : public ActivationLayer {
 public:
  GELU() : ActivationLayer(Activation::kGELU) {}
};
class Tanh : public ActivationLayer {
 public:
  Tanh() : ActivationLayer(Activation::kTanh) {}
};
class Sigmoid : public ActivationLayer {
 public:
  Sigmoid() : ActivationLayer(Activation::kSigmoid) {}
};

/// [N, d1, d2, ...] -> [N, d1 * d2 * ...].
class Flatten : public Module {
 public:
  explicit Flatten(int64_t start_dim = 1) : start_dim_(start_dim) {}
  std::string describe() const override { return "Flatten"; }
  Tensor forward(const Tensor& x) override { return flatten(x, start_dim_); }
  int64_t start_dim() const { return start_dim_; }

 protected:
  std::shared_ptr<Module> make_empty() const override;

 private:
  int64_t start_dim_;
};

/// Runs children in order; they are named "0", "1", ... unless named explicitly.
class Sequential : public Module {
 public:
  Sequential() = default;
  Sequential(std::initializer_list<ModulePtr> modules);
  /// Appends a child; returns *this for chaining.
  Sequential& add(ModulePtr m, std::string name = "");
  std::string describe() const override;
  Tensor forward(const Tensor& x) override;
  size_t size() const { return named_children().size(); }
  ModulePtr operator[](size_t i) const { return named_children().at(i).second; }

 protected:
  std::shared_ptr<Module> make_empty() const override;
};

/// y = x + body(x); the body is the child "body" and must keep the shape of its input.
class Residual : public Module {
 public:
  explicit Residual(ModulePtr body);
  std::string describe() const override;
  Tensor forward(const Tensor& x) override;
  ModulePtr body;

 protected:
  std::shared_ptr<Module> make_empty() const override;
};

}  // namespace dtrain::nn
