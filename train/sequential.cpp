// model.layers: the layer table (types, args, defaults, ranges), YAML parsing that reports every
// problem with file:line, shape inference, and the builder; inference and building share one walk.
#include "dtrain/train/sequential.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
#include <optional>
#include <set>
#include <sstream>

#include "dtrain/nn/attention.h"
#include "dtrain/train/config.h"

namespace dtrain::train {
namespace {

enum class ArgKind { kInt, kIntOrClasses, kBool, kProbability, kPositive, kUnit };

struct ArgDef {
  std::string name;
  ArgKind kind;
  bool required;
  std::string default_text;  // shown in the reference; "" when required
  int64_t min = 1;           // kInt, kIntOrClasses
};

struct TypeDef {
  std::string name;
  std::vector<ArgDef> args;
  std::string shapes;  // per example, for the reference
};

ArgDef required_int(std::string name) { return {std::move(name), ArgKind::kInt, true, "", 1}; }
ArgDef out_arg() { return {"out", ArgKind::kIntOrClasses, true, "", 1}; }
ArgDef int_arg(std::string name, std::string def, int64_t min) {
  return {std::move(name), ArgKind::kInt, false, std::move(def), min};
}
ArgDef bias_arg() { return {"bias", ArgKind::kBool, false, "true"}; }
ArgDef eps_arg() { return {"eps", ArgKind::kPositive, false, "1e-5"}; }
ArgDef dropout_arg() { return {"dropout", ArgKind::kProbability, false, "0"}; }

const std::vector<TypeDef>& layer_table() {
  static const std::vector<TypeDef> table = {
      {"linear", {out_arg(), bias_arg()}, "[F] -> [out]; [T, F] -> [T, out]"},
      {"conv2d",
       {out_arg(), required_int("kernel"), int_arg("stride", "1", 1), int_arg("padding", "0", 0),
        bias_arg()},
       "[C, H, W] -> [out, H', W']"},
      {"conv1d",
       {out_arg(), required_int("kernel"), int_arg("stride", "1", 1), int_arg("padding", "0", 0),
        bias_arg()},
       "[C, L] -> [out, L']"},
      {"max_pool2d",
       {required_int("kernel"), int_arg("stride", "kernel", 1), int_arg("padding", "0", 0)},
       "[C, H, W] -> [C, H', W']"},
      {"avg_pool2d",
       {required_int("kernel"), int_arg("stride", "kernel", 1), int_arg("padding", "0", 0)},
       "[C, H, W] -> [C, H', W'] (padding counts towards the divisor)"},
      {"global_avg_pool", {}, "[C, ...] -> [C]"},
      {"batch_norm",
       {eps_arg(), {"momentum", ArgKind::kUnit, false, "0.1"}},
       "[F] (BatchNorm1d) or [C, H, W] (BatchNorm2d) -> same"},
      {"layer_norm", {eps_arg()}, "[..., D] -> same, over the last dim"},
      {"dropout", {{"p", ArgKind::kProbability, true, ""}}, "any -> same"},
      {"relu", {}, "any -> same"},
      {"gelu", {}, "any -> same"},
      {"tanh", {}, "any -> same"},
      {"sigmoid", {}, "any -> same"},
      {"flatten", {}, "[d1, d2, ...] -> [d1 * d2 * ...]"},
      {"embedding",
       {{"vocab", ArgKind::kIntOrClasses, true, "", 1}, required_int("dim")},
       "int64 token ids [T] -> [T, dim]; first layer only"},
      {"positional_embedding", {required_int("max_len")}, "[T, D] -> same, T <= max_len"},
      {"attention",
       {required_int("heads"), dropout_arg()},
       "causal multi-head self-attention [T, D] -> same; D % heads == 0"},
      {"transformer_block",
       {required_int("heads"), int_arg("mlp_ratio", "4", 1), dropout_arg()},
       "pre-norm attention and MLP block [T, D] -> same; D % heads == 0"},
      {"residual", {}, "a list of layers; x -> x + layers(x), which must keep the shape"},
  };
  return table;
}

const TypeDef* find_type(const std::string& name) {
  for (const TypeDef& t : layer_table()) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

const ArgDef* find_arg(const TypeDef& t, const std::string& name) {
  for (const ArgDef& a : t.args) {
    if (a.name == name) return &a;
  }
  return nullptr;
}

std::vector<std::string> arg_names(const TypeDef& t) {
  std::vector<std::string> names;
  for (const ArgDef& a : t.args) names.push_back(a.name);
  return names;
}

std::string join(const std::vector<std::string>& words, const std::string& sep = ", ") {
  std::string s;
  for (size_t i = 0; i < words.size(); ++i) s += (i ? sep : "") + words[i];
  return s;
}

template <class T>
std::optional<T> parse_scalar(const std::string& text) {
  try {
    return YAML::Node(text).as<T>();
  } catch (const YAML::Exception&) {
    return std::nullopt;
  }
}

std::string allowed_text(const ArgDef& a) {
  switch (a.kind) {
    case ArgKind::kInt:
      return "an integer >= " + std::to_string(a.min);
    case ArgKind::kIntOrClasses:
      return "an integer >= " + std::to_string(a.min) + " or 'classes'";
    case ArgKind::kBool:
      return "true or false";
    case ArgKind::kProbability:
      return "a number in [0, 1)";
    case ArgKind::kPositive:
      return "a number > 0";
    case ArgKind::kUnit:
      return "a number in [0, 1]";
  }
  return "";
}

/// The problem with `text` as a value of `a`, or nullopt when it is valid.
std::optional<std::string> check_value(const ArgDef& a, const std::string& text) {
  const std::string got = ", got '" + text + "'";
  switch (a.kind) {
    case ArgKind::kIntOrClasses:
      if (text == "classes") return std::nullopt;
      [[fallthrough]];
    case ArgKind::kInt: {
      const auto v = parse_scalar<int64_t>(text);
      if (!v) {
        const std::string hint =
            a.kind == ArgKind::kIntOrClasses ? did_you_mean(text, {"classes"}) : "";
        return "expected " + allowed_text(a) + got + hint;
      }
      if (*v < a.min) return std::to_string(*v) + " is out of range; allowed: " + allowed_text(a);
      return std::nullopt;
    }
    case ArgKind::kBool:
      if (!parse_scalar<bool>(text)) return "expected " + allowed_text(a) + got;
      return std::nullopt;
    case ArgKind::kProbability:
    case ArgKind::kPositive:
    case ArgKind::kUnit: {
      const auto v = parse_scalar<double>(text);
      if (!v) return "expected " + allowed_text(a) + got;
      const bool ok = std::isfinite(*v) && (a.kind == ArgKind::kPositive ? *v > 0
                                            : a.kind == ArgKind::kUnit   ? *v >= 0 && *v <= 1
                                                                         : *v >= 0 && *v < 1);
      if (!ok) return text + " is out of range; allowed: " + allowed_text(a);
      return std::nullopt;
    }
  }
  return std::nullopt;
}

/// Args that other libraries take but that the incoming shape decides here.
const std::set<std::string>& inferred_args() {
  static const std::set<std::string> names = {"in",           "in_features", "in_channels",
                                              "num_features", "features",    "normalized_shape",
                                              "embed_dim",    "d_model",     "input_size"};
  return names;
}

/// Checks the args of one layer: `report(arg name or "", what)` for each problem.
/// `present` holds args given with a value that is not a scalar (already reported).
void check_args(const TypeDef& t, const std::vector<std::pair<std::string, std::string>>& args,
                const std::function<void(const std::string&, const std::string&)>& report,
                const std::set<std::string>& present = {}) {
  std::set<std::string> seen;
  for (const auto& [name, text] : args) {
    const ArgDef* a = find_arg(t, name);
    if (a == nullptr) {
      std::string what = "unknown arg '" + name + "' for " + t.name;
      if (inferred_args().count(name) || (name == "dim" && t.name != "embedding")) {
        what += "; it is inferred from the incoming shape, leave it out";
      } else {
        const std::string hint = did_you_mean(name, arg_names(t));
        what += hint.empty() ? (t.args.empty() ? "; " + t.name + " takes no args"
                                               : "; " + t.name + " takes " + join(arg_names(t)))
                             : hint;
      }
      report(name, what);
      continue;
    }
    if (!seen.insert(name).second) {
      report(name, t.name + "." + name + " appears twice");
      continue;
    }
    if (auto err = check_value(*a, text)) report(name, t.name + "." + name + ": " + *err);
  }
  for (const ArgDef& a : t.args) {
    if (a.required && !seen.count(a.name) && !present.count(a.name)) {
      std::string example;
      for (const ArgDef& r : t.args) {
        if (r.required) example += (example.empty() ? "" : ", ") + r.name + ": N";
      }
      report("", t.name + " needs '" + a.name + "' (" + allowed_text(a) + "), e.g. " + t.name +
                     ": {" + example + "}");
    }
  }
}

// ---- parsing --------------------------------------------------------------------------------

int line_of(const YAML::Node& n) {
  const YAML::Mark m = n.Mark();
  return m.is_null() || m.line < 0 ? 0 : m.line + 1;
}

std::string at(const std::string& source, int line) {
  if (line <= 0) return source;
  return source + ":" + std::to_string(line);
}

std::string node_text(const YAML::Node& n) {
  if (n.IsScalar()) return "'" + n.Scalar() + "'";
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a mapping";
  return "nothing";
}

struct Parser {
  const std::string& source;
  std::vector<std::string>& problems;

  void add(int line, const std::string& path, const std::string& what) {
    const std::string where = at(source, line);
    problems.push_back((where.empty() ? "" : where + ": ") + path + ": " + what);
  }

  std::vector<LayerSpec> list(const YAML::Node& node, const std::string& path) {
    std::vector<LayerSpec> layers;
    if (!node || node.IsNull()) return layers;
    if (!node.IsSequence()) {
      add(line_of(node), path,
          "expected a list of layers like [flatten, {linear: {out: classes}}], got " +
              node_text(node));
      return layers;
    }
    for (size_t i = 0; i < node.size(); ++i) {
      if (auto spec = item(node[i], path + "[" + std::to_string(i) + "]")) {
        layers.push_back(std::move(*spec));
      }
    }
    return layers;
  }

  std::optional<LayerSpec> item(const YAML::Node& n, const std::string& path) {
    LayerSpec spec;
    spec.line = line_of(n);
    YAML::Node value;
    if (n.IsScalar()) {
      spec.type = n.Scalar();
    } else if (n.IsMap() && n.size() == 1 && n.begin()->first.IsScalar()) {
      spec.type = n.begin()->first.Scalar();
      spec.line = line_of(n.begin()->first);
      value = n.begin()->second;
    } else if (n.IsMap() && n.size() > 1) {
      std::vector<std::string> keys;
      for (const auto& kv : n) keys.push_back(kv.first.IsScalar() ? kv.first.Scalar() : "?");
      const YAML::Node type = n["type"];
      const std::string fix =
          type && type.IsScalar()
              ? "write it as " + type.Scalar() + ": {args}, without the key 'type'"
              : "indent the args under the type, e.g. " + keys[0] + ": {" + keys[1] + ": ...}";
      add(spec.line, path,
          "a layer is one key, {type: {args}}; got the keys " + join(keys) + " (" + fix + ")");
      return std::nullopt;
    } else {
      add(spec.line, path,
          "expected a layer: a type (relu) or {type: {args}} (linear: {out: 10}), got " +
              node_text(n));
      return std::nullopt;
    }
    const TypeDef* t = find_type(spec.type);
    if (t == nullptr) {
      const std::string hint = did_you_mean(spec.type, sequential_layer_types());
      add(spec.line, path,
          "unknown layer type '" + spec.type + "'" +
              (hint.empty() ? "; known: " + join(sequential_layer_types()) : hint));
      return std::nullopt;
    }
    if (spec.type == "residual") {
      if (!value.IsSequence() || value.size() == 0) {
        add(spec.line, path,
            "residual needs a non-empty list of layers, e.g. residual: [{conv2d: {out: 32, "
            "kernel: 3, padding: 1}}, relu]; got " +
                node_text(value));
        return std::nullopt;
      }
      const size_t before = problems.size();
      spec.body = list(value, path + ".residual");
      if (problems.size() != before) return std::nullopt;
      return spec;
    }
    bool ok = true;
    std::set<std::string> not_scalar;
    if (value && !value.IsNull()) {
      if (!value.IsMap()) {
        const std::string first = t->args.empty() ? "" : t->args[0].name;
        add(spec.line, path,
            t->name + ": args must be a mapping" +
                (first.empty() ? " (it takes none)"
                               : " like {" + first + ": " +
                                     (value.IsScalar() ? value.Scalar() : "...") + "}") +
                ", got " + node_text(value));
        return std::nullopt;
      }
      for (const auto& kv : value) {
        if (kv.first.IsScalar() && find_arg(*t, kv.first.Scalar()) == nullptr) {
          spec.args.emplace_back(kv.first.Scalar(), "");  // check_args reports it as unknown
          continue;
        }
        if (!kv.first.IsScalar() || !kv.second.IsScalar()) {
          const std::string name = kv.first.IsScalar() ? kv.first.Scalar() : "?";
          add(line_of(kv.first), path,
              t->name + "." + name + ": expected a single value, got " + node_text(kv.second));
          not_scalar.insert(name);
          ok = false;
          continue;
        }
        spec.args.emplace_back(kv.first.Scalar(), kv.second.Scalar());
      }
    }
    const auto arg_line = [&](const std::string& name) {
      for (const auto& kv : value.IsMap() ? value : YAML::Node()) {
        if (kv.first.IsScalar() && kv.first.Scalar() == name) return line_of(kv.first);
      }
      return spec.line;
    };
    check_args(
        *t, spec.args,
        [&](const std::string& name, const std::string& what) {
          add(name.empty() ? spec.line : arg_line(name), path, what);
          ok = false;
        },
        not_scalar);
    if (!ok) return std::nullopt;
    return spec;
  }
};

// ---- the flow text --------------------------------------------------------------------------

/// Plain when it reads back as the same scalar, else double-quoted.
std::string scalar_yaml(const std::string& text) {
  const bool plain = !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-' ||
           c == '+';
  });
  const bool null_word = text == "null" || text == "Null" || text == "NULL" || text == "~";
  if (plain && !null_word) return text;
  YAML::Emitter out;
  out << YAML::DoubleQuoted << text;
  return out.c_str();
}

void append_yaml(const std::vector<LayerSpec>& layers, std::string& out) {
  out += "[";
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerSpec& l = layers[i];
    out += i ? ", " : "";
    if (l.type == "residual") {
      out += "{residual: ";
      append_yaml(l.body, out);
      out += "}";
    } else if (l.args.empty()) {
      out += scalar_yaml(l.type);
    } else {
      out += "{" + scalar_yaml(l.type) + ": {";
      for (size_t j = 0; j < l.args.size(); ++j) {
        out +=
            (j ? ", " : "") + scalar_yaml(l.args[j].first) + ": " + scalar_yaml(l.args[j].second);
      }
      out += "}}";
    }
  }
  out += "]";
}

// ---- shape inference and building ----------------------------------------------------------

/// What flows between layers: the per-example shape, and whether it is still int64 token ids.
struct Flow {
  Shape shape;
  bool tokens = false;
};

std::string divisor_hint(int64_t d, int64_t heads) {
  int64_t below = heads, above = heads;
  while (below > 1 && d % below != 0) --below;
  while (above < d && d % above != 0) ++above;
  std::string hint = "Use heads " + std::to_string(below);
  if (above != below && above <= d) hint += " or " + std::to_string(above);
  return hint + " (a divisor of " + std::to_string(d) + ")";
}

/// How to make a residual body that turns `in` into `out` keep the shape.
std::string residual_fix(const Shape& in, const Shape& out) {
  if (in.size() != out.size()) return "Move flatten and global pooling out of the residual";
  // The width is the channel dim of [C, H, W] and [C, L] or the feature dim of [F] and [T, D].
  const size_t width = in.size() == 2 && out[0] == in[0] ? 1 : 0;
  if (out[width] != in[width]) {
    return "Give its last conv2d, conv1d or linear out: " + std::to_string(in[width]);
  }
  return "Use stride 1 and padding (kernel - 1) / 2 in its convolutions, and no pooling";
}

/// Walks the layers, inferring shapes; with `build`, also makes the modules.
class Walker {
 public:
  Walker(int64_t num_classes, std::string source, bool build, uint64_t seed)
      : num_classes_(num_classes),
        source_(std::move(source)),
        build_(build),
        seed_(seed),
        gen_(seed, /*stream=*/0) {}

  std::shared_ptr<nn::Sequential> walk(const std::vector<LayerSpec>& layers,
                                       const std::string& path, Flow& flow) {
    auto seq = build_ ? std::make_shared<nn::Sequential>() : nullptr;
    for (size_t i = 0; i < layers.size(); ++i) {
      nn::ModulePtr m = layer(layers[i], path + "[" + std::to_string(i) + "]", flow);
      if (seq) seq->add(m);
    }
    return seq;
  }

 private:
  std::string label(const LayerSpec& l, const std::string& path) const {
    const std::string where = at(source_, l.line);
    return path + " (" + l.type + (where.empty() ? "" : ", " + where) + ")";
  }

  [[noreturn]] void fail(const LayerSpec& l, const std::string& path,
                         const std::string& what) const {
    DTRAIN_THROW(ValueError, label(l, path), ": ", what);
  }

  std::string text(const LayerSpec& l, const std::string& name) const {
    for (const auto& [k, v] : l.args) {
      if (k == name) return v;
    }
    return "";
  }
  int64_t get_int(const LayerSpec& l, const std::string& name, int64_t def) const {
    const std::string t = text(l, name);
    if (t.empty()) return def;
    if (t == "classes") return num_classes_;
    return *parse_scalar<int64_t>(t);
  }
  double get_double(const LayerSpec& l, const std::string& name, double def) const {
    const std::string t = text(l, name);
    return t.empty() ? def : *parse_scalar<double>(t);
  }
  bool get_bool(const LayerSpec& l, const std::string& name, bool def) const {
    const std::string t = text(l, name);
    return t.empty() ? def : *parse_scalar<bool>(t);
  }

  /// Output size of a convolution or pooling window along one dim, or fails.
  int64_t window_out(const LayerSpec& l, const std::string& path, const Shape& in, int64_t size,
                     int64_t kernel, int64_t stride, int64_t padding) const {
    if (size + 2 * padding < kernel) {
      fail(l, path,
           "gets " + shape_str(in) + "; kernel " + std::to_string(kernel) +
               " is larger than the padded input (" + std::to_string(size) + " + 2 * padding " +
               std::to_string(padding) + "). Use a smaller kernel or more padding, or remove a " +
               "pooling layer before it");
    }
    return (size + 2 * padding - kernel) / stride + 1;
  }

  void need_dims(const LayerSpec& l, const std::string& path, const Shape& in, size_t dims,
                 const std::string& needs, const std::string& fix) const {
    if (in.size() != dims) fail(l, path, "gets " + shape_str(in) + "; needs " + needs + ". " + fix);
  }

  void check_heads(const LayerSpec& l, const std::string& path, const Shape& in) const {
    need_dims(l, path, in, 2, "[T, D]", "Put embedding (and positional_embedding) before it");
    const int64_t heads = get_int(l, "heads", 1);
    if (in[1] % heads != 0) {
      fail(l, path,
           "gets " + shape_str(in) +
               "; needs [T, D] with D divisible by heads, but D = " + std::to_string(in[1]) +
               " and heads = " + std::to_string(heads) + ". " + divisor_hint(in[1], heads));
    }
  }

  uint64_t next_dropout_stream() { return dropout_stream_++; }

  nn::ModulePtr layer(const LayerSpec& l, const std::string& path, Flow& flow) {
    const TypeDef* t = find_type(l.type);
    if (t == nullptr) {
      fail(l, path,
           "unknown layer type '" + l.type + "'" + did_you_mean(l.type, sequential_layer_types()));
    }
    check_args(*t, l.args,
               [&](const std::string&, const std::string& what) { fail(l, path, what); });
    for (const auto& [k, v] : l.args) {
      if (v == "classes" && num_classes_ <= 0) {
        fail(l, path, k + ": classes needs the number of classes, and the data gives none");
      }
    }
    const Shape in = flow.shape;
    const std::string& type = l.type;
    if (flow.tokens && type != "embedding") {
      fail(l, path,
           "gets int64 token ids " + shape_str(in) +
               "; the data gives token ids, so the first layer must be embedding, e.g. "
               "embedding: {vocab: classes, dim: 64}");
    }
    if (!flow.tokens && type == "embedding") {
      fail(l, path,
           "gets float values " + shape_str(in) +
               "; embedding needs int64 token ids, so it can only be the first layer of a model "
               "whose data gives tokens");
    }
    nn::ModulePtr m;
    const auto make = [&](auto&& factory) {
      if (build_) m = factory();
    };

    if (type == "linear") {
      if (in.size() != 1 && in.size() != 2) {
        fail(l, path,
             "gets " + shape_str(in) + "; needs [F] or [T, F]. Add flatten before it" +
                 (in.size() == 3 ? " (or global_avg_pool)" : ""));
      }
      const int64_t out = get_int(l, "out", 0);
      make([&] {
        return std::make_shared<nn::Linear>(in.back(), out, get_bool(l, "bias", true), gen_);
      });
      flow.shape.back() = out;
    } else if (type == "conv2d" || type == "conv1d") {
      const bool two_d = type == "conv2d";
      need_dims(l, path, in, two_d ? 3 : 2, two_d ? "[C, H, W]" : "[C, L]",
                two_d ? (in.size() == 2 ? "Use conv1d for [C, L]"
                                        : "conv2d needs image examples [C, H, W]")
                      : (in.size() == 3 ? "Use conv2d for [C, H, W]"
                                        : "conv1d needs sequences of vectors [C, L]"));
      const int64_t out = get_int(l, "out", 0), k = get_int(l, "kernel", 1);
      const int64_t s = get_int(l, "stride", 1), p = get_int(l, "padding", 0);
      Shape next = {out};
      for (size_t d = 1; d < in.size(); ++d)
        next.push_back(window_out(l, path, in, in[d], k, s, p));
      const bool bias = get_bool(l, "bias", true);
      if (two_d) {
        make([&] { return std::make_shared<nn::Conv2d>(in[0], out, k, s, p, bias, gen_); });
      } else {
        make([&] { return std::make_shared<nn::Conv1d>(in[0], out, k, s, p, bias, gen_); });
      }
      flow.shape = next;
    } else if (type == "max_pool2d" || type == "avg_pool2d") {
      need_dims(l, path, in, 3, "[C, H, W]", "Pooling needs image examples [C, H, W]");
      const int64_t k = get_int(l, "kernel", 1);
      const int64_t s = get_int(l, "stride", k), p = get_int(l, "padding", 0);
      if (2 * p > k) {
        fail(l, path,
             "padding " + std::to_string(p) + " is more than half the kernel " + std::to_string(k) +
                 "; use padding <= " + std::to_string(k / 2));
      }
      flow.shape = {in[0], window_out(l, path, in, in[1], k, s, p),
                    window_out(l, path, in, in[2], k, s, p)};
      if (type == "max_pool2d") {
        make([&] { return std::make_shared<nn::MaxPool2d>(k, s, p); });
      } else {
        make([&] { return std::make_shared<nn::AvgPool2d>(k, s, p); });
      }
    } else if (type == "global_avg_pool") {
      if (in.size() < 2) {
        fail(l, path,
             "gets " + shape_str(in) +
                 "; needs [C, ...] with spatial dims ([C, H, W] or [C, L]). The input has no "
                 "spatial dims left to pool; remove it");
      }
      flow.shape = {in[0]};
      make([&] { return std::make_shared<nn::GlobalAvgPool>(); });
    } else if (type == "batch_norm") {
      if (in.size() != 1 && in.size() != 3) {
        fail(l, path,
             "gets " + shape_str(in) + "; needs [F] (BatchNorm1d) or [C, H, W] (BatchNorm2d)." +
                 (in.size() == 2 ? " Use layer_norm for [T, D]" : " Add flatten before it"));
      }
      const double eps = get_double(l, "eps", 1e-5), momentum = get_double(l, "momentum", 0.1);
      if (in.size() == 1) {
        make([&] { return std::make_shared<nn::BatchNorm1d>(in[0], eps, momentum); });
      } else {
        make([&] { return std::make_shared<nn::BatchNorm2d>(in[0], eps, momentum); });
      }
    } else if (type == "layer_norm") {
      if (in.empty()) fail(l, path, "gets a scalar per example; needs at least one dim");
      make([&] {
        return std::make_shared<nn::LayerNorm>(Shape{in.back()}, get_double(l, "eps", 1e-5));
      });
    } else if (type == "dropout") {
      const uint64_t stream = next_dropout_stream();
      make([&] { return std::make_shared<nn::Dropout>(get_double(l, "p", 0), seed_, stream); });
    } else if (type == "relu") {
      make([] { return std::make_shared<nn::ReLU>(); });
    } else if (type == "gelu") {
      make([] { return std::make_shared<nn::GELU>(); });
    } else if (type == "tanh") {
      make([] { return std::make_shared<nn::Tanh>(); });
    } else if (type == "sigmoid") {
      make([] { return std::make_shared<nn::Sigmoid>(); });
    } else if (type == "flatten") {
      flow.shape = {shape_numel(in)};
      make([] { return std::make_shared<nn::Flatten>(); });
    } else if (type == "embedding") {
      const int64_t vocab = get_int(l, "vocab", 0), dim = get_int(l, "dim", 0);
      flow.shape.push_back(dim);
      flow.tokens = false;
      make([&] { return std::make_shared<nn::Embedding>(vocab, dim, gen_); });
    } else if (type == "positional_embedding") {
      need_dims(l, path, in, 2, "[T, D]", "Put embedding before it");
      const int64_t max_len = get_int(l, "max_len", 1);
      if (in[0] > max_len) {
        fail(l, path,
             "gets " + shape_str(in) + "; needs [T, D] with T <= max_len " +
                 std::to_string(max_len) + ", but T = " + std::to_string(in[0]) +
                 ". Raise max_len to at least " + std::to_string(in[0]));
      }
      make([&] { return std::make_shared<nn::PositionalEmbedding>(max_len, in[1], gen_); });
    } else if (type == "attention") {
      check_heads(l, path, in);
      const uint64_t stream = next_dropout_stream();
      make([&] {
        return std::make_shared<nn::CausalSelfAttention>(
            in[1], get_int(l, "heads", 1), get_double(l, "dropout", 0), dropout_seed(stream), gen_);
      });
    } else if (type == "transformer_block") {
      check_heads(l, path, in);
      const uint64_t stream = next_dropout_stream();
      make([&] {
        return std::make_shared<nn::TransformerBlock>(
            in[1], get_int(l, "heads", 1), get_int(l, "mlp_ratio", 4), get_double(l, "dropout", 0),
            dropout_seed(stream), gen_);
      });
    } else if (type == "residual") {
      if (l.body.empty()) fail(l, path, "residual needs at least one layer in its list");
      Flow inner = flow;
      auto body = walk(l.body, path + ".residual", inner);
      if (inner.shape != in) {
        fail(l, path,
             "its layers turn " + shape_str(in) + " into " + shape_str(inner.shape) +
                 ", but a residual adds its input to their output, so they must keep the shape " +
                 shape_str(in) + ". " + residual_fix(in, inner.shape));
      }
      make([&] { return std::make_shared<nn::Residual>(body); });
    } else {
      fail(l, path, "layer type '" + type + "' is not handled");
    }
    return m;
  }

  /// Attention layers take a seed, not a stream (their dropout uses stream 1 of it), so the run
  /// seed and the layer's stream are mixed (splitmix64): the stream alone would give every run
  /// the same masks.
  uint64_t dropout_seed(uint64_t stream) const {
    uint64_t z = seed_ + stream * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }

  int64_t num_classes_;
  std::string source_;
  bool build_;
  uint64_t seed_;
  Generator gen_;
  uint64_t dropout_stream_ = 100;  // streams 100, 101, ...: one per layer with dropout
};

std::shared_ptr<nn::Sequential> run_walk(const std::vector<LayerSpec>& layers,
                                         const Shape& example_shape, int64_t num_classes,
                                         bool input_is_tokens, bool build, uint64_t seed,
                                         const std::string& source, Shape* out) {
  if (layers.empty()) {
    DTRAIN_THROW(ValueError, "model.layers", source.empty() ? std::string() : " (" + source + ")",
                 ": model.type sequential needs at least one layer in model.layers");
  }
  Walker walker(num_classes, source, build, seed);
  Flow flow{example_shape, input_is_tokens};
  auto model = walker.walk(layers, "model.layers", flow);
  if (out) *out = flow.shape;
  return model;
}

}  // namespace

std::vector<LayerSpec> parse_layers(const YAML::Node& node, const std::string& source,
                                    std::vector<std::string>& problems) {
  Parser parser{source, problems};
  return parser.list(node, "model.layers");
}

std::string layers_yaml(const std::vector<LayerSpec>& layers) {
  std::string out;
  append_yaml(layers, out);
  return out;
}

Shape infer_output_shape(const std::vector<LayerSpec>& layers, const Shape& example_shape,
                         int64_t num_classes, bool input_is_tokens, const std::string& source) {
  Shape out;
  run_walk(layers, example_shape, num_classes, input_is_tokens, false, 0, source, &out);
  return out;
}

void check_classifier_output(const Shape& output_shape, const Shape& example_shape,
                             int64_t num_classes, bool input_is_tokens, const std::string& source) {
  Shape want = {num_classes};
  if (input_is_tokens) want = {example_shape.empty() ? 1 : example_shape[0], num_classes};
  if (output_shape == want) return;
  DTRAIN_THROW(ValueError, "model.layers", source.empty() ? std::string() : " (" + source + ")",
               ": the model's output per example is ", shape_str(output_shape),
               "; the loss needs logits ", shape_str(want), " (one per class",
               input_is_tokens ? ", per token" : "", "). End the list with linear: {out: classes}",
               output_shape.size() > (input_is_tokens ? 2u : 1u) ? " after flatten" : "");
}

std::shared_ptr<nn::Sequential> build_sequential(const std::vector<LayerSpec>& layers,
                                                 const Shape& example_shape, int64_t num_classes,
                                                 bool input_is_tokens, uint64_t seed,
                                                 const std::string& source) {
  // The dry walk first: a shape error is reported before any parameter is allocated.
  run_walk(layers, example_shape, num_classes, input_is_tokens, false, seed, source, nullptr);
  return run_walk(layers, example_shape, num_classes, input_is_tokens, true, seed, source, nullptr);
}

std::vector<std::string> sequential_layer_types() {
  std::vector<std::string> names;
  for (const TypeDef& t : layer_table()) names.push_back(t.name);
  return names;
}

std::string sequential_layers_markdown() {
  std::ostringstream os;
  os << "| layer | args (default) | shape per example |\n| --- | --- | --- |\n";
  for (const TypeDef& t : layer_table()) {
    std::vector<std::string> args;
    for (const ArgDef& a : t.args) {
      args.push_back("`" + a.name + "`" + (a.required ? " (required)" : " = " + a.default_text));
    }
    if (t.name == "residual") args.push_back("a list of layers");
    os << "| `" << t.name << "` | " << (args.empty() ? "-" : join(args)) << " | " << t.shapes
       << " |\n";
  }
  return os.str();
}

}  // namespace dtrain::train
