// Layer implementations.
#include "dtrain/nn/layers.h"

#include <cmath>

#include "dtrain/autograd/grad_mode.h"
#include "dtrain/autograd/node.h"
#include "dtrain/nn/init.h"
#include "dtrain/tensor/ops.h"

namespace dtrain::nn {

namespace {
std::string dims(std::initializer_list<int64_t> v) {
  std::string s;
  for (int64_t d : v) s += (s.empty() ? "" : ", ") + std::to_string(d);
  return s;
}
/// PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
void init_bias(Tensor& b, int64_t fan_in, Generator& gen) {
  const double bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
  init::uniform_(b, -bound, bound, gen);
}
}  // namespace

// ---- Linear ---------------------------------------------------------------------------------
Linear::Linear(int64_t in_features, int64_t out_features, bool with_bias, Generator& gen)
    : in_(in_features), out_(out_features) {
  DTRAIN_CHECK(in_ > 0 && out_ > 0, "Linear: features must be positive; got ", in_, " -> ", out_);
  Tensor w({out_, in_});
  init::kaiming_uniform_(w, std::sqrt(5.0), gen);
  weight = register_parameter("weight", w);
  if (with_bias) {
    Tensor b({out_});
    init_bias(b, in_, gen);
    bias = register_parameter("bias", b);
  }
}
std::string Linear::describe() const {
  return "Linear(" + std::to_string(in_) + " -> " + std::to_string(out_) + ")";
}
Tensor Linear::forward(const Tensor& x) { return linear(x, weight, bias); }
std::shared_ptr<Module> Linear::make_empty() const {
  return std::make_shared<Linear>(in_, out_, bias.defined());
}

// ---- Conv2d, pooling ------------------------------------------------------------------------
Conv2d::Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride,
               int64_t padding, bool with_bias, Generator& gen)
    : in_(in_channels),
      out_(out_channels),
      kernel_(kernel_size),
      stride_(stride),
      padding_(padding) {
  DTRAIN_CHECK(in_ > 0 && out_ > 0 && kernel_ > 0 && stride_ > 0 && padding_ >= 0,
               "Conv2d: invalid configuration (", dims({in_, out_, kernel_, stride_, padding_}),
               ")");
  Tensor w({out_, in_, kernel_, kernel_});
  init::kaiming_uniform_(w, std::sqrt(5.0), gen);
  weight = register_parameter("weight", w);
  if (with_bias) {
    Tensor b({out_});
    init_bias(b, in_ * kernel_ * kernel_, gen);
    bias = register_parameter("bias", b);
  }
}
std::string Conv2d::describe() const {
  return "Conv2d(" + std::to_string(in_) + " -> " + std::to_string(out_) + ", kernel " +
         std::to_string(kernel_) + ", stride " + std::to_string(stride_) + ", padding " +
         std::to_string(padding_) + ")";
}
Tensor Conv2d::forward(const Tensor& x) {
  if (x.dim() != 4 || x.size(1) != in_) {
    DTRAIN_THROW(ValueError, describe(), ": input ", x.describe(), "; expected [N, ", in_,
                 ", H, W]", x.dim() == 2 ? ". Reshape flat images to [N, C, H, W] first?" : "");
  }
  return conv2d(x, weight, bias, stride_, padding_);
}
std::shared_ptr<Module> Conv2d::make_empty() const {
  return std::make_shared<Conv2d>(in_, out_, kernel_, stride_, padding_, bias.defined());
}

Conv1d::Conv1d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride,
               int64_t padding, bool with_bias, Generator& gen)
    : in_(in_channels),
      out_(out_channels),
      kernel_(kernel_size),
      stride_(stride),
      padding_(padding) {
  DTRAIN_CHECK(in_ > 0 && out_ > 0 && kernel_ > 0 && stride_ > 0 && padding_ >= 0,
               "Conv1d: invalid configuration (", dims({in_, out_, kernel_, stride_, padding_}),
               ")");
  Tensor w({out_, in_, kernel_});
  init::kaiming_uniform_(w, std::sqrt(5.0), gen);
  weight = register_parameter("weight", w);
  if (with_bias) {
    Tensor b({out_});
    init_bias(b, in_ * kernel_, gen);
    bias = register_parameter("bias", b);
  }
}
std::string Conv1d::describe() const {
  return "Conv1d(" + std::to_string(in_) + " -> " + std::to_string(out_) + ", kernel " +
         std::to_string(kernel_) + ", stride " + std::to_string(stride_) + ", padding " +
         std::to_string(padding_) + ")";
}
Tensor Conv1d::forward(const Tensor& x) {
  if (x.dim() != 3 || x.size(1) != in_) {
    DTRAIN_THROW(ValueError, describe(), ": input ", x.describe(), "; expected [N, ", in_, ", L]",
                 x.dim() == 2 ? ". Reshape a single channel to [N, 1, L] first?" : "");
  }
  const int64_t n = x.size(0), length = x.size(2) + 2 * padding_;
  if (length < kernel_) {
    DTRAIN_THROW(ValueError, describe(), ": input ", x.describe(), " has length ", x.size(2),
                 ", shorter than the kernel ", kernel_, " even with padding ", padding_);
  }
  // conv2d pads both spatial dims alike, so the length is padded here and the input runs as a
  // [N, C, 1, L] image with [O, C, 1, K] kernels.
  Tensor padded = x;
  if (padding_ > 0) {
    const Tensor pad = zeros({n, in_, padding_}, x.dtype(), x.device());
    padded = cat({pad, x, pad}, 2);
  }
  const Tensor y = conv2d(reshape(padded, {n, in_, 1, length}),
                          reshape(weight, {out_, in_, 1, kernel_}), bias, stride_, 0);
  return reshape(y, {n, out_, y.size(3)});
}
std::shared_ptr<Module> Conv1d::make_empty() const {
  return std::make_shared<Conv1d>(in_, out_, kernel_, stride_, padding_, bias.defined());
}

MaxPool2d::MaxPool2d(int64_t kernel_size, int64_t stride, int64_t padding)
    : kernel_(kernel_size), stride_(stride < 0 ? kernel_size : stride), padding_(padding) {}
std::string MaxPool2d::describe() const {
  return "MaxPool2d(" + dims({kernel_, stride_, padding_}) + ")";
}
Tensor MaxPool2d::forward(const Tensor& x) { return max_pool2d(x, kernel_, stride_, padding_); }
std::shared_ptr<Module> MaxPool2d::make_empty() const {
  return std::make_shared<MaxPool2d>(kernel_, stride_, padding_);
}

AvgPool2d::AvgPool2d(int64_t kernel_size, int64_t stride, int64_t padding)
    : kernel_(kernel_size), stride_(stride < 0 ? kernel_size : stride), padding_(padding) {}
std::string AvgPool2d::describe() const {
  return "AvgPool2d(" + dims({kernel_, stride_, padding_}) + ")";
}
Tensor AvgPool2d::forward(const Tensor& x) { return avg_pool2d(x, kernel_, stride_, padding_); }
std::shared_ptr<Module> AvgPool2d::make_empty() const {
  return std::make_shared<AvgPool2d>(kernel_, stride_, padding_);
}

Tensor GlobalAvgPool::forward(const Tensor& x) {
  if (x.dim() < 3) {
    DTRAIN_THROW(ValueError, "GlobalAvgPool: input ", x.describe(),
                 "; expected [N, C, d1, ...] with at least one dim to average over");
  }
  std::vector<int64_t> spatial;
  for (int64_t d = 2; d < x.dim(); ++d) spatial.push_back(d);
  return mean(x, spatial);
}
std::shared_ptr<Module> GlobalAvgPool::make_empty() const {
  return std::make_shared<GlobalAvgPool>();
}

// ---- normalisation --------------------------------------------------------------------------
BatchNorm::BatchNorm(int64_t num_features, int spatial_dims, double eps, double momentum)
    : features_(num_features), spatial_dims_(spatial_dims), eps_(eps), momentum_(momentum) {
  DTRAIN_CHECK(features_ > 0, "BatchNorm: num_features must be positive; got ", features_);
  weight = register_parameter("weight", ones({features_}));
  bias = register_parameter("bias", zeros({features_}));
  running_mean = register_buffer("running_mean", zeros({features_}));
  running_var = register_buffer("running_var", ones({features_}));
  num_batches_tracked = register_buffer("num_batches_tracked", zeros({}, DType::kInt64));
}
std::string BatchNorm::describe() const {
  return std::string("BatchNorm") + (spatial_dims_ == 2 ? "2d(" : "1d(") +
         std::to_string(features_) + ")";
}
Tensor BatchNorm::forward(const Tensor& x) {
  const int64_t want = spatial_dims_ + 2;
  if (x.dim() != want || x.size(1) != features_) {
    DTRAIN_THROW(ValueError, describe(), ": input ", x.describe(), "; expected [N, ", features_,
                 spatial_dims_ == 2 ? ", H, W]" : "]");
  }
  if (is_training()) {
    // The counter is wherever Module::to put it, and CUDA adds floating-point types only: float64
    // holds every count below 2^53 exactly, so the increment runs through it on that device.
    num_batches_tracked.copy_(ops::unary(kernels::Unary::kAddScalar,
                                         to_dtype(num_batches_tracked, DType::kFloat64), {1.0}));
  }
  if (is_training() && replica_sum_) return synchronized_forward(x);
  return batch_norm(x, weight, bias, running_mean, running_var, is_training(), momentum_, eps_);
}

namespace {

/// `sum` over the replicas as a differentiable op: the gradient of a sum over replicas is the
/// sum over replicas of the gradients (each replica's loss depends on every replica's input).
Tensor summed_over_replicas(const Tensor& t, const ReplicaSum& sum) {
  Tensor out = t.detach().clone();
  sum(out);
  return autograd::record(out, "replica_sum", {t}, [sum](const Tensor& g) {
    Tensor total = g.clone();
    sum(total);
    return std::vector<Tensor>{total};
  });
}

}  // namespace

Tensor BatchNorm::synchronized_forward(const Tensor& x) {
  // Two passes, as batch_norm: the global mean first (with the global count in the same
  // reduction), then the global biased variance around it.
  std::vector<int64_t> dims = {0};
  Shape channel_shape = {1, features_};
  for (int d = 0; d < spatial_dims_; ++d) {
    dims.push_back(2 + d);
    channel_shape.push_back(1);
  }
  const int64_t local_count = x.numel() / features_;
  Tensor count = full({1}, static_cast<double>(local_count), x.dtype(), x.device());
  Tensor sums = summed_over_replicas(cat({sum(x, dims), count}), replica_sum_);
  const double n =
      to_device(slice(sums, 0, features_, features_ + 1).detach(), Device::cpu()).item<double>();
  DTRAIN_CHECK(n > 1, describe(), ": the global batch has ", n,
               " value(s) per channel; batch statistics need more than one");
  Tensor mean = slice(sums, 0, 0, features_) * (1.0 / n);
  Tensor centered = x - reshape(mean, channel_shape);
  Tensor var = summed_over_replicas(sum(centered * centered, dims), replica_sum_) * (1.0 / n);
  Tensor inv_std = pow(var + eps_, -0.5);
  Tensor y = centered * reshape(inv_std, channel_shape) * reshape(weight, channel_shape) +
             reshape(bias, channel_shape);
  {
    NoGradGuard no_grad;  // running statistics: unbiased variance of the global batch
    running_mean.copy_(running_mean.detach() * (1 - momentum_) + mean.detach() * momentum_);
    running_var.copy_(running_var.detach() * (1 - momentum_) +
                      var.detach() * (momentum_ * n / (n - 1)));
  }
  return y;
}
std::shared_ptr<Module> BatchNorm::make_empty() const {
  return std::make_shared<BatchNorm>(features_, spatial_dims_, eps_, momentum_);
}

LayerNorm::LayerNorm(Shape normalized_shape, double eps)
    : shape_(std::move(normalized_shape)), eps_(eps) {
  weight = register_parameter("weight", ones(shape_));
  bias = register_parameter("bias", zeros(shape_));
}
std::string LayerNorm::describe() const { return "LayerNorm(" + shape_str(shape_) + ")"; }
Tensor LayerNorm::forward(const Tensor& x) { return layer_norm(x, shape_, weight, bias, eps_); }
std::shared_ptr<Module> LayerNorm::make_empty() const {
  return std::make_shared<LayerNorm>(shape_, eps_);
}

// ---- embedding, dropout, activations --------------------------------------------------------
Embedding::Embedding(int64_t num_embeddings, int64_t embedding_dim, Generator& gen)
    : num_(num_embeddings), dim_(embedding_dim) {
  Tensor w({num_, dim_});
  init::normal_(w, 0, 1, gen);
  weight = register_parameter("weight", w);
}
std::string Embedding::describe() const { return "Embedding(" + dims({num_, dim_}) + ")"; }
Tensor Embedding::forward(const Tensor& indices) { return embedding(weight, indices); }
std::shared_ptr<Module> Embedding::make_empty() const {
  return std::make_shared<Embedding>(num_, dim_);
}

PositionalEmbedding::PositionalEmbedding(int64_t max_len, int64_t dim, Generator& gen)
    : max_len_(max_len), dim_(dim) {
  DTRAIN_CHECK(max_len_ > 0 && dim_ > 0,
               "PositionalEmbedding: max_len and dim must be positive; got ", max_len_, " and ",
               dim_);
  Tensor w({max_len_, dim_});
  init::normal_(w, 0, 0.02, gen);
  weight = register_parameter("weight", w);
}
std::string PositionalEmbedding::describe() const {
  return "PositionalEmbedding(" + dims({max_len_, dim_}) + ")";
}
Tensor PositionalEmbedding::forward(const Tensor& x) {
  if (x.dim() != 3 || x.size(2) != dim_) {
    DTRAIN_THROW(ValueError, describe(), ": input ", x.describe(), "; expected [N, T, ", dim_, "]");
  }
  const int64_t t = x.size(1);
  if (t > max_len_) {
    DTRAIN_THROW(ValueError, describe(), ": sequence length T = ", t,
                 " exceeds max_len = ", max_len_, " (input ", x.describe(),
                 "). Build it with a larger max_len?");
  }
  return add(x, slice(weight, 0, 0, t));
}
std::shared_ptr<Module> PositionalEmbedding::make_empty() const {
  return std::make_shared<PositionalEmbedding>(max_len_, dim_);
}

Dropout::Dropout(double p, uint64_t seed, uint64_t stream) : p_(p), gen_(seed, stream) {
  DTRAIN_CHECK(p >= 0 && p <= 1, "Dropout: p must be in [0, 1]; got ", p);
}
std::string Dropout::describe() const { return "Dropout(p=" + std::to_string(p_) + ")"; }
Tensor Dropout::forward(const Tensor& x) { return dropout(x, p_, is_training(), gen_); }
std::shared_ptr<Module> Dropout::make_empty() const {
  auto d = std::make_shared<Dropout>(p_, gen_.seed(), gen_.stream());
  d->gen_.set_offset(gen_.offset());
  return d;
}

std::string ActivationLayer::describe() const {
  switch (kind_) {
    case Activation::kReLU:
      return "ReLU";
    case Activation::kGELU:
      return "GELU";
    case Activation::kTanh:
      return "Tanh";
    case Activation::kSigmoid:
      return "Sigmoid";
  }
  return "Activation";
}
Tensor ActivationLayer::forward(const Tensor& x) {
  switch (kind_) {
    case Activation::kReLU:
      return relu(x);
    case Activation::kGELU:
      return gelu(x);
    case Activation::kTanh:
      return tanh(x);
    case Activation::kSigmoid:
      return sigmoid(x);
  }
  return x;
}
std::shared_ptr<Module> ActivationLayer::make_empty() const {
  return std::make_shared<ActivationLayer>(kind_);
}

std::shared_ptr<Module> Flatten::make_empty() const {
  return std::make_shared<Flatten>(start_dim_);
}

// ---- Sequential -----------------------------------------------------------------------------
Sequential::Sequential(std::initializer_list<ModulePtr> modules) {
  for (const auto& m : modules) add(m);
}
Sequential& Sequential::add(ModulePtr m, std::string name) {
  DTRAIN_CHECK(m != nullptr, "Sequential::add: null module");
  register_module(name.empty() ? std::to_string(size()) : std::move(name), std::move(m));
  return *this;
}
std::string Sequential::describe() const {
  return "Sequential(" + std::to_string(size()) + " modules)";
}
Tensor Sequential::forward(const Tensor& x) {
  Tensor y = x;
  for (const auto& [name, m] : named_children()) y = m->forward(y);
  return y;
}
std::shared_ptr<Module> Sequential::make_empty() const {
  auto copy = std::make_shared<Sequential>();
  for (const auto& [name, m] : named_children()) copy->add(m->clone(), name);
  return copy;
}

// ---- Residual -------------------------------------------------------------------------------
Residual::Residual(ModulePtr body_module) {
  DTRAIN_CHECK(body_module != nullptr, "Residual: null body");
  body = register_module("body", std::move(body_module));
}
std::string Residual::describe() const { return "Residual(" + body->describe() + ")"; }
Tensor Residual::forward(const Tensor& x) {
  const Tensor y = body->forward(x);
  if (y.shape() != x.shape()) {
    DTRAIN_THROW(ValueError, describe(), ": body output ", shape_str(y.shape()),
                 " differs from the input ", shape_str(x.shape()),
                 "; x + body(x) needs the same shape. Add a projection to the body?");
  }
  return add(x, y);
}
std::shared_ptr<Module> Residual::make_empty() const {
  return std::make_shared<Residual>(body->clone());
}

}  // namespace dtrain::nn
