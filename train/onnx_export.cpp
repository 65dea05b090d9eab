#include "dtrain/train/onnx_export.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>

#include "dtrain/autograd/grad_mode.h"
#include "dtrain/nn/attention.h"
#include "dtrain/nn/layers.h"
#include "dtrain/tensor/check.h"
#include "dtrain/tensor/printable.h"
#include "dtrain/train/checkpoint.h"
#include "dtrain/version.h"
#include "train/onnx/onnx.pb.h"

namespace dtrain::train {
namespace {

constexpr const char* kSupported =
    "Sequential, Residual, Linear, Conv1d, Conv2d, MaxPool2d, AvgPool2d, GlobalAvgPool, BatchNorm, "
    "LayerNorm, Embedding, PositionalEmbedding, CausalSelfAttention, TransformerBlock, Dropout, "
    "Flatten(start_dim=1), ReLU, GELU, Tanh, Sigmoid";

int onnx_type(DType t) {
  switch (t) {
    case DType::kFloat32:
      return onnx::TensorProto::FLOAT;
    case DType::kFloat64:
      return onnx::TensorProto::DOUBLE;
    case DType::kInt64:
      return onnx::TensorProto::INT64;
    case DType::kInt32:
      return onnx::TensorProto::INT32;
    case DType::kUInt8:
      return onnx::TensorProto::UINT8;
    default:
      DTRAIN_THROW(ValueError, "ONNX export: no ONNX type for ", dtype_name(t));
  }
}

/// Builds the graph: each module adds nodes from its input value to a new output value.
class GraphBuilder {
 public:
  explicit GraphBuilder(onnx::GraphProto& graph) : graph_(graph) {}

  std::string add(const nn::Module& m, const std::string& path, const std::string& x) {
    const std::string at = path.empty() ? "" : path + ".";
    if (const auto* s = dynamic_cast<const nn::Sequential*>(&m)) {
      std::string y = x;
      for (const auto& [name, child] : s->named_children()) y = add(*child, at + name, y);
      return y;
    }
    if (const auto* r = dynamic_cast<const nn::Residual*>(&m)) {
      const std::string body = add(*r->body, at + "body", x);
      return node("Add", {x, body}, path);
    }
    if (const auto* l = dynamic_cast<const nn::Linear*>(&m)) {
      // MatMul with the transposed weight works for any leading dims ([N, in] or [N, T, in]).
      const std::string wt =
          node("Transpose", {initializer(at + "weight", l->weight)}, path + ".t");
      const std::string y = node("MatMul", {x, wt}, path);
      if (!l->bias.defined()) return y;
      return node("Add", {y, initializer(at + "bias", l->bias)}, path + ".bias");
    }
    if (const auto* c = dynamic_cast<const nn::Conv2d*>(&m)) {
      return conv(x, at, path, c->weight, c->bias, 2, c->kernel_size(), c->stride(), c->padding());
    }
    if (const auto* c = dynamic_cast<const nn::Conv1d*>(&m)) {
      return conv(x, at, path, c->weight, c->bias, 1, c->kernel_size(), c->stride(), c->padding());
    }
    if (const auto* p = dynamic_cast<const nn::MaxPool2d*>(&m)) {
      onnx::NodeProto& n = add_node("MaxPool", {x}, path);
      pool_attributes(n, p->kernel_size(), p->stride(), p->padding());
      return n.output(0);
    }
    if (const auto* p = dynamic_cast<const nn::AvgPool2d*>(&m)) {
      onnx::NodeProto& n = add_node("AveragePool", {x}, path);
      pool_attributes(n, p->kernel_size(), p->stride(), p->padding());
      int_attribute(n, "count_include_pad", 1);
      return n.output(0);
    }
    if (dynamic_cast<const nn::GlobalAvgPool*>(&m)) {
      const std::string pooled = node("GlobalAveragePool", {x}, path);
      onnx::NodeProto& n = add_node("Flatten", {pooled}, path + ".flatten");
      int_attribute(n, "axis", 1);
      return n.output(0);
    }
    if (const auto* b = dynamic_cast<const nn::BatchNorm*>(&m)) {
      onnx::NodeProto& n =
          add_node("BatchNormalization",
                   {x, initializer(at + "weight", b->weight), initializer(at + "bias", b->bias),
                    initializer(at + "running_mean", b->running_mean),
                    initializer(at + "running_var", b->running_var)},
                   path);
      float_attribute(n, "epsilon", b->eps());
      return n.output(0);
    }
    if (const auto* l = dynamic_cast<const nn::LayerNorm*>(&m)) {
      onnx::NodeProto& n = add_node(
          "LayerNormalization",
          {x, initializer(at + "weight", l->weight), initializer(at + "bias", l->bias)}, path);
      int_attribute(n, "axis", -static_cast<int64_t>(l->normalized_shape().size()));
      float_attribute(n, "epsilon", l->eps());
      return n.output(0);
    }
    if (const auto* e = dynamic_cast<const nn::Embedding*>(&m)) {
      return node("Gather", {initializer(at + "weight", e->weight), x}, path);
    }
    if (const auto* p = dynamic_cast<const nn::PositionalEmbedding*>(&m)) {
      // x [N, T, D] + weight[:T]: T from x's shape, so one file serves every length up to max_len.
      const std::string shape = node("Shape", {x}, path + ".shape");
      const std::string t = node(
          "Slice", {shape, int64s(path + ".one", {1}), int64s(path + ".two", {2})}, path + ".t");
      const std::string rows = node("Slice",
                                    {initializer(at + "weight", p->weight),
                                     int64s(path + ".zero", {0}), t, int64s(path + ".axis0", {0})},
                                    path + ".rows");
      return node("Add", {x, rows}, path);
    }
    if (const auto* a = dynamic_cast<const nn::CausalSelfAttention*>(&m)) {
      return attention(*a, at, path, x);
    }
    if (const auto* b = dynamic_cast<const nn::TransformerBlock*>(&m)) {
      // x + attn(ln1(x)), then h + fc2(gelu(fc1(ln2(h)))).
      const std::string h = node(
          "Add", {x, add(*b->attn, at + "attn", add(*b->ln1, at + "ln1", x))}, path + ".residual1");
      const std::string mlp =
          add(*b->fc2, at + "fc2",
              gelu(add(*b->fc1, at + "fc1", add(*b->ln2, at + "ln2", h)), path + ".gelu"));
      return node("Add", {h, mlp}, path);
    }
    if (dynamic_cast<const nn::Dropout*>(&m)) return node("Identity", {x}, path);
    if (const auto* f = dynamic_cast<const nn::Flatten*>(&m)) {
      // ONNX Flatten(axis) always makes 2 dims; it matches dtrain's only from dim 1.
      if (f->start_dim() != 1) unsupported(m, path, "Flatten exports only with start_dim 1");
      onnx::NodeProto& n = add_node("Flatten", {x}, path);
      int_attribute(n, "axis", 1);
      return n.output(0);
    }
    if (const auto* a = dynamic_cast<const nn::ActivationLayer*>(&m)) {
      return activation(a->kind(), x, path);
    }
    unsupported(m, path, "it has no ONNX form");
  }

 private:
  std::string activation(nn::Activation kind, const std::string& x, const std::string& path) {
    switch (kind) {
      case nn::Activation::kReLU:
        return node("Relu", {x}, path);
      case nn::Activation::kTanh:
        return node("Tanh", {x}, path);
      case nn::Activation::kSigmoid:
        return node("Sigmoid", {x}, path);
      case nn::Activation::kGELU:
        return gelu(x, path);
    }
    DTRAIN_THROW(ValueError, "ONNX export: unknown activation at '", path, "'");
  }

  std::string gelu(const std::string& x, const std::string& path) {
    // Opset 17 has no Gelu: 0.5 x (1 + erf(x / sqrt 2)), as dtrain computes it.
    const std::string scaled =
        node("Mul", {x, scalar(path + ".inv_sqrt2", 1.0 / std::numbers::sqrt2)}, path + ".s");
    const std::string erf = node("Erf", {scaled}, path + ".erf");
    const std::string one_plus = node("Add", {erf, scalar(path + ".one", 1.0)}, path + ".a");
    const std::string half_x = node("Mul", {x, scalar(path + ".half", 0.5)}, path + ".h");
    return node("Mul", {half_x, one_plus}, path);
  }

  /// CausalSelfAttention as dtrain computes it (nn/attention.cpp), for any N and T: Reshape's 0
  /// copies those dims, and the causal mask is built from the scores' shape.
  std::string attention(const nn::CausalSelfAttention& a, const std::string& at,
                        const std::string& path, const std::string& x) {
    const int64_t heads = a.heads(), head_dim = a.dim() / a.heads();
    const std::string qkv = add(*a.qkv, at + "qkv", x);  // [N, T, 3D]
    const std::string split =
        node("Reshape", {qkv, int64s(path + ".split_shape", {0, 0, 3, heads, head_dim})},
             path + ".split");
    onnx::NodeProto& t = add_node("Transpose", {split}, path + ".heads");  // [3, N, H, T, hd]
    ints_attribute(t, "perm", {2, 0, 3, 1, 4});
    const std::string all = t.output(0);
    const auto part = [&](int64_t i, const char* name) {
      return node("Gather", {all, int64_scalar(path + "." + name + "_index", i)},
                  path + "." + name);
    };
    const std::string q = part(0, "q"), k = part(1, "k"), v = part(2, "v");  // [N, H, T, hd]
    onnx::NodeProto& kt = add_node("Transpose", {k}, path + ".kt");
    ints_attribute(kt, "perm", {0, 1, 3, 2});
    const std::string q_scaled =
        node("Mul", {q, scalar(path + ".scale", 1.0 / std::sqrt(static_cast<double>(head_dim)))},
             path + ".q_scaled");
    const std::string scores = node("MatMul", {q_scaled, kt.output(0)}, path + ".scores");
    // Positions after t get -inf, the others keep their score (dtrain adds 0 there).
    const std::string shape = node("Shape", {scores}, path + ".scores_shape");
    const std::string tt = node(
        "Slice", {shape, int64s(path + ".minus2", {-2}), int64s(path + ".end", {4})}, path + ".tt");
    onnx::NodeProto& ones = add_node("ConstantOfShape", {tt}, path + ".ones");
    onnx::AttributeProto* value = ones.add_attribute();
    value->set_name("value");
    value->set_type(onnx::AttributeProto::TENSOR);
    value->mutable_t()->set_data_type(onnx::TensorProto::FLOAT);
    value->mutable_t()->add_dims(1);
    value->mutable_t()->add_float_data(1.0f);
    onnx::NodeProto& lower = add_node("Trilu", {ones.output(0)}, path + ".lower");
    int_attribute(lower, "upper", 0);
    onnx::NodeProto& keep = add_node("Cast", {lower.output(0)}, path + ".keep");
    int_attribute(keep, "to", onnx::TensorProto::BOOL);
    const std::string masked =
        node("Where",
             {keep.output(0), scores,
              scalar(path + ".minus_inf", -std::numeric_limits<double>::infinity())},
             path + ".masked");
    onnx::NodeProto& softmax = add_node("Softmax", {masked}, path + ".softmax");
    int_attribute(softmax, "axis", -1);
    const std::string y = node("MatMul", {softmax.output(0), v}, path + ".mix");  // [N, H, T, hd]
    onnx::NodeProto& back = add_node("Transpose", {y}, path + ".unheads");        // [N, T, H, hd]
    ints_attribute(back, "perm", {0, 2, 1, 3});
    const std::string merged =
        node("Reshape", {back.output(0), int64s(path + ".merge_shape", {0, 0, a.dim()})},
             path + ".merge");
    return add(*a.proj, at + "proj", merged);
  }

  std::string int64s(const std::string& name, const std::vector<int64_t>& values) {
    onnx::TensorProto* init = graph_.add_initializer();
    init->set_name(name);
    init->set_data_type(onnx::TensorProto::INT64);
    init->add_dims(static_cast<int64_t>(values.size()));
    for (int64_t v : values) init->add_int64_data(v);
    return name;
  }

  std::string int64_scalar(const std::string& name, int64_t value) {
    onnx::TensorProto* init = graph_.add_initializer();
    init->set_name(name);
    init->set_data_type(onnx::TensorProto::INT64);
    init->add_int64_data(value);
    return name;
  }

  [[noreturn]] static void unsupported(const nn::Module& m, const std::string& path,
                                       const std::string& why) {
    DTRAIN_THROW(ValueError, "ONNX export: module '", path.empty() ? "(the model)" : path, "' (",
                 printable(m.describe()), "): ", why, "; exportable: ", kSupported);
  }

  onnx::NodeProto& add_node(const std::string& op, const std::vector<std::string>& inputs,
                            const std::string& path) {
    onnx::NodeProto* n = graph_.add_node();
    n->set_op_type(op);
    n->set_name((path.empty() ? "model" : path) + "/" + op);
    for (const std::string& in : inputs) n->add_input(in);
    n->add_output("v" + std::to_string(next_value_++) + "/" + (path.empty() ? op : path));
    return *n;
  }

  std::string node(const std::string& op, const std::vector<std::string>& inputs,
                   const std::string& path) {
    return add_node(op, inputs, path).output(0);
  }

  std::string initializer(const std::string& name, const Tensor& t) {
    DTRAIN_CHECK(t.defined(), "ONNX export: parameter ", name, " is not defined");
    DTRAIN_CHECK(t.device().is_cpu(), "ONNX export: parameter ", name, " is on ", t.device().str(),
                 "; copy the model to the CPU first");
    onnx::TensorProto* init = graph_.add_initializer();
    init->set_name(name);
    for (int64_t d : t.shape()) init->add_dims(d);
    init->set_data_type(onnx_type(t.dtype()));
    init->set_raw_data(t.data_ptr(), static_cast<size_t>(t.numel()) * dtype_size(t.dtype()));
    return name;
  }

  std::string scalar(const std::string& name, double value) {
    onnx::TensorProto* init = graph_.add_initializer();
    init->set_name(name);
    init->set_data_type(onnx::TensorProto::FLOAT);
    init->add_float_data(static_cast<float>(value));
    return name;
  }

  std::string conv(const std::string& x, const std::string& at, const std::string& path,
                   const Tensor& weight, const Tensor& bias, int spatial, int64_t kernel,
                   int64_t stride, int64_t padding) {
    std::vector<std::string> inputs{x, initializer(at + "weight", weight)};
    if (bias.defined()) inputs.push_back(initializer(at + "bias", bias));
    onnx::NodeProto& n = add_node("Conv", inputs, path);
    ints_attribute(n, "kernel_shape", std::vector<int64_t>(spatial, kernel));
    ints_attribute(n, "strides", std::vector<int64_t>(spatial, stride));
    ints_attribute(n, "pads", std::vector<int64_t>(2 * spatial, padding));
    return n.output(0);
  }

  static void pool_attributes(onnx::NodeProto& n, int64_t kernel, int64_t stride, int64_t padding) {
    ints_attribute(n, "kernel_shape", {kernel, kernel});
    ints_attribute(n, "strides", {stride, stride});
    ints_attribute(n, "pads", {padding, padding, padding, padding});
  }

  static void int_attribute(onnx::NodeProto& n, const std::string& name, int64_t v) {
    onnx::AttributeProto* a = n.add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(v);
  }

  static void float_attribute(onnx::NodeProto& n, const std::string& name, double v) {
    onnx::AttributeProto* a = n.add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::FLOAT);
    a->set_f(static_cast<float>(v));
  }

  static void ints_attribute(onnx::NodeProto& n, const std::string& name,
                             const std::vector<int64_t>& v) {
    onnx::AttributeProto* a = n.add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INTS);
    for (int64_t i : v) a->add_ints(i);
  }

  onnx::GraphProto& graph_;
  int64_t next_value_ = 0;
};

void set_value_info(onnx::ValueInfoProto& info, const std::string& name, DType dtype,
                    const std::vector<int64_t>& dims) {
  info.set_name(name);
  onnx::TypeProto_Tensor* t = info.mutable_type()->mutable_tensor_type();
  t->set_elem_type(onnx_type(dtype));
  onnx::TensorShapeProto* shape = t->mutable_shape();
  shape->add_dim()->set_dim_param("batch");
  for (int64_t d : dims) shape->add_dim()->set_dim_value(d);
}

}  // namespace

void write_onnx(const std::string& path, nn::Module& model, const Shape& example_shape,
                const OnnxExportOptions& options) {
  onnx::ModelProto proto;
  proto.set_ir_version(onnx::IR_VERSION);  // 8, the version of opset 17
  proto.set_producer_name("dtrain");
  proto.set_producer_version(kVersion);
  onnx::OperatorSetIdProto* opset = proto.add_opset_import();
  opset->set_domain("");
  opset->set_version(kOnnxOpset);
  for (const auto& [key, value] : options.metadata) {
    onnx::StringStringEntryProto* e = proto.add_metadata_props();
    e->set_key(key);
    e->set_value(value);
  }
  onnx::GraphProto* graph = proto.mutable_graph();
  graph->set_name(options.graph_name);
  set_value_info(*graph->add_input(), options.input_name, options.input_dtype, example_shape);

  GraphBuilder builder(*graph);
  const std::string last = builder.add(model, "", options.input_name);
  // The last node writes the named output directly.
  bool renamed = false;
  for (int i = graph->node_size() - 1; i >= 0 && !renamed; --i) {
    onnx::NodeProto* n = graph->mutable_node(i);
    if (n->output(0) == last) {
      n->set_output(0, options.output_name);
      renamed = true;
    }
  }
  if (!renamed) {  // a model that returns its input unchanged
    onnx::NodeProto* n = graph->add_node();
    n->set_op_type("Identity");
    n->add_input(last);
    n->add_output(options.output_name);
  }
  // The output's shape from one example through the model in eval mode (the graph's mode), which
  // also shows that the model takes this example shape.
  Shape one{1};
  one.insert(one.end(), example_shape.begin(), example_shape.end());
  const bool was_training = model.is_training();
  model.eval();
  Tensor probe;
  try {
    NoGradGuard no_grad;
    probe = model(zeros(one, options.input_dtype));
  } catch (...) {
    model.train(was_training);
    throw;
  }
  model.train(was_training);
  const Shape out_dims(probe.shape().begin() + 1, probe.shape().end());
  set_value_info(*graph->add_output(), options.output_name, probe.dtype(), out_dims);

  std::string bytes;
  DTRAIN_CHECK(proto.SerializeToString(&bytes), "ONNX export: the model (",
               graph->initializer_size(),
               " initializers) does not fit one protobuf message (2 GiB)");
  write_file_atomic(path, {std::string_view(bytes)});
}

}  // namespace dtrain::train
