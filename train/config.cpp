// The config schema (one table: key, type, default, allowed values, meaning), YAML parsing with
// yaml-cpp, validation that reports every problem with file:line and a suggestion, overrides.
#include "dtrain/train/config.h"

#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "dtrain/distributed/registry.h"
#include "dtrain/distributed/socket.h"
#include "dtrain/tensor/hash.h"
#include "dtrain/tensor/tensor.h"

namespace dtrain::train {
namespace {

/// Error text, or nullopt when the value was accepted and stored.
using SetResult = std::optional<std::string>;

struct Field {
  std::string section, key, type, allowed, doc;
  std::function<std::string(const Config&)> show;            // the value as YAML
  std::function<SetResult(Config&, const YAML::Node&)> set;  // parse, validate, store
  std::string name() const { return section + "." + key; }
};

std::string format_double(double v) {
  std::ostringstream os;
  os << std::setprecision(15) << v;
  std::string s = os.str();
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";  // keep it a float in YAML
  return s;
}

std::string scalar_text(const YAML::Node& n) {
  if (n.IsScalar()) return "'" + n.Scalar() + "'";
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a mapping";
  return "nothing";
}

/// The node as a T, or nullopt when it is not a scalar that reads as one.
template <class T>
std::optional<T> scalar_as(const YAML::Node& n) {
  if (!n.IsScalar()) return std::nullopt;
  try {
    return n.as<T>();
  } catch (const YAML::Exception&) {
    return std::nullopt;
  }
}

template <class Get>
Field int_field(std::string section, std::string key, Get get, int64_t lo, int64_t hi,
                std::string doc) {
  std::string allowed = "integer >= " + std::to_string(lo);
  if (hi != INT64_MAX)
    allowed = "integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  Field f{std::move(section), std::move(key), "int", allowed, std::move(doc), nullptr, nullptr};
  f.show = [get](const Config& c) { return std::to_string(get(const_cast<Config&>(c))); };
  f.set = [get, lo, hi, allowed](Config& c, const YAML::Node& n) -> SetResult {
    const std::optional<int64_t> v = scalar_as<int64_t>(n);
    if (!v) return "expected an " + allowed + ", got " + scalar_text(n);
    if (*v < lo || *v > hi) return std::to_string(*v) + " is out of range; allowed: " + allowed;
    get(c) = *v;
    return std::nullopt;
  };
  return f;
}

template <class Get>
Field float_field(std::string section, std::string key, Get get, double lo, double hi,
                  std::string doc, bool lo_open = false) {
  std::ostringstream allowed;
  allowed << "number " << (lo_open ? "> " : ">= ") << lo;
  if (std::isfinite(hi)) allowed << " and <= " << hi;
  Field f{std::move(section), std::move(key), "float", allowed.str(),
          std::move(doc),     nullptr,        nullptr};
  f.show = [get](const Config& c) { return format_double(get(const_cast<Config&>(c))); };
  f.set = [get, lo, hi, lo_open, a = allowed.str()](Config& c, const YAML::Node& n) -> SetResult {
    const std::optional<double> v = scalar_as<double>(n);
    if (!v) return "expected a " + a + ", got " + scalar_text(n);
    if (!std::isfinite(*v) || *v < lo || (lo_open && *v == lo) || *v > hi) {
      return format_double(*v) + " is out of range; allowed: " + a;
    }
    get(c) = *v;
    return std::nullopt;
  };
  return f;
}

template <class Get>
Field bool_field(std::string section, std::string key, Get get, std::string doc) {
  Field f{std::move(section), std::move(key), "bool", "true | false",
          std::move(doc),     nullptr,        nullptr};
  f.show = [get](const Config& c) { return get(const_cast<Config&>(c)) ? "true" : "false"; };
  f.set = [get](Config& c, const YAML::Node& n) -> SetResult {
    const std::optional<bool> v = scalar_as<bool>(n);
    if (!v) return "expected true or false, got " + scalar_text(n);
    get(c) = *v;
    return std::nullopt;
  };
  return f;
}

/// A positive duration in seconds, kept as the milliseconds that timeouts are stored in.
template <class Get>
Field seconds_field(std::string section, std::string key, Get get, std::string doc) {
  const std::string allowed = "number > 0";
  constexpr double kMaxSeconds = 1e9;  // about 30 years: no overflow in milliseconds
  Field f{std::move(section), std::move(key), "float", allowed, std::move(doc), nullptr, nullptr};
  f.show = [get](const Config& c) {
    return format_double(static_cast<double>(get(const_cast<Config&>(c)).count()) / 1000.0);
  };
  f.set = [get, allowed](Config& c, const YAML::Node& n) -> SetResult {
    const std::optional<double> v = scalar_as<double>(n);
    if (!v) return "expected a " + allowed + ", got " + scalar_text(n);
    if (!std::isfinite(*v) || *v <= 0 || *v > kMaxSeconds) {
      return format_double(*v) + " is out of range; allowed: " + allowed;
    }
    get(c) = std::chrono::milliseconds(std::max<int64_t>(1, std::llround(*v * 1000)));
    return std::nullopt;
  };
  return f;
}

/// `choices` lists the allowed values; `free_text` accepts any non-empty string instead (any
/// string at all with `allow_empty`, for keys whose empty value means "not set").
template <class Get>
Field string_field(std::string section, std::string key, Get get, std::vector<std::string> choices,
                   std::string doc, std::string free_text = "", bool allow_empty = false) {
  std::string allowed = free_text;
  if (allowed.empty()) {
    for (size_t i = 0; i < choices.size(); ++i) allowed += (i ? " | " : "") + choices[i];
  }
  Field f{std::move(section), std::move(key), "string", allowed, std::move(doc), nullptr, nullptr};
  f.show = [get](const Config& c) {
    const std::string& v = get(const_cast<Config&>(c));
    return v.empty() ? std::string("\"\"") : YAML::Dump(YAML::Node(v));
  };
  f.set = [get, choices, allowed, allow_empty](Config& c, const YAML::Node& n) -> SetResult {
    if (!n.IsScalar()) return "expected a string (" + allowed + "), got " + scalar_text(n);
    const std::string v = n.Scalar();
    if (!choices.empty() && std::find(choices.begin(), choices.end(), v) == choices.end()) {
      return "'" + v + "' is not one of " + allowed + did_you_mean(v, choices);
    }
    if (choices.empty() && v.empty() && !allow_empty) return "must not be empty";
    get(c) = v;
    return std::nullopt;
  };
  return f;
}

/// The most elements a shape-like list may describe (`max_elements` of int_list_field): one
/// example of 2^31 float32 values is 8 GiB, far beyond any data set this trains on.
constexpr int64_t kMaxShapeElements = int64_t{1} << 31;

/// `max_elements` > 0: the list is a shape, and the product of its elements must not exceed it.
template <class Get>
Field int_list_field(std::string section, std::string key, Get get, int64_t lo, bool allow_empty,
                     std::string doc, int64_t max_elements = 0) {
  const std::string allowed = std::string(allow_empty ? "list" : "non-empty list") +
                              " of integers >= " + std::to_string(lo);
  Field f{std::move(section), std::move(key), "int list", allowed,
          std::move(doc),     nullptr,        nullptr};
  f.show = [get](const Config& c) {
    std::string s = "[";
    const auto& v = get(const_cast<Config&>(c));
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
    return s + "]";
  };
  f.set = [get, lo, allow_empty, allowed, max_elements](Config& c,
                                                        const YAML::Node& n) -> SetResult {
    if (!n.IsSequence()) return "expected a " + allowed + " like [256, 128], got " + scalar_text(n);
    std::vector<int64_t> v;
    for (size_t i = 0; i < n.size(); ++i) {
      const std::optional<int64_t> element = scalar_as<int64_t>(n[i]);
      if (!element) {
        return "element " + std::to_string(i) + ": expected an integer, got " + scalar_text(n[i]);
      }
      v.push_back(*element);
      if (v.back() < lo) {
        return "element " + std::to_string(i) + " is " + std::to_string(v.back()) +
               "; allowed: " + allowed;
      }
    }
    if (v.empty() && !allow_empty) return "must not be empty; allowed: " + allowed;
    if (max_elements > 0) {
      const Shape shape(v.begin(), v.end());
      const std::string limit =
          "; allowed: at most " + std::to_string(max_elements) + " elements in all";
      const std::optional<int64_t> elements = try_shape_numel(shape);
      if (!elements) {
        return shape_str(shape) + ": the product of the dimensions overflows int64" + limit;
      }
      if (*elements > max_elements) {
        return shape_str(shape) + " has " + std::to_string(*elements) + " elements" + limit;
      }
    }
    get(c) = v;
    return std::nullopt;
  };
  return f;
}

template <class Get>
Field string_list_field(std::string section, std::string key, Get get, std::string doc) {
  const std::string allowed = "list of strings";
  Field f{std::move(section), std::move(key), "string list", allowed,
          std::move(doc),     nullptr,        nullptr};
  f.show = [get](const Config& c) {
    std::string s = "[";
    const auto& v = get(const_cast<Config&>(c));
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + YAML::Dump(YAML::Node(v[i]));
    return s + "]";
  };
  f.set = [get, allowed](Config& c, const YAML::Node& n) -> SetResult {
    if (!n.IsSequence())
      return "expected a " + allowed + " like [bias, norm], got " + scalar_text(n);
    std::vector<std::string> v;
    for (size_t i = 0; i < n.size(); ++i) {
      if (!n[i].IsScalar() || n[i].Scalar().empty()) {
        return "element " + std::to_string(i) + ": expected a non-empty string, got " +
               scalar_text(n[i]);
      }
      v.push_back(n[i].Scalar());
    }
    get(c) = v;
    return std::nullopt;
  };
  return f;
}

#define DTRAIN_GET(member) \
  [](Config & c) -> auto& { return c.member; }
constexpr double kInf = HUGE_VAL;

/// strategy.bucket_cap_mb: a size in MiB, or auto.
Field bucket_cap_field() {
  Field f{"strategy",
          "bucket_cap_mb",
          "float or auto",
          "number > 0, or auto",
          "Gradient bucket size for the reductions, MiB (after a first bucket of 1 MiB). `auto`: "
          "DDP tries 1, 4, 16 and 64 MiB for 5 steps each after 2 warm-up steps, the same trials "
          "on every replica, keeps the one with the least exposed communication (averaged over "
          "the replicas) and prints the trial table. Not with shard_optimizer.",
          nullptr,
          nullptr};
  f.show = [](const Config& c) {
    return c.strategy.bucket_cap_auto ? std::string("auto")
                                      : format_double(c.strategy.ddp.bucket_cap_mb);
  };
  f.set = [](Config& c, const YAML::Node& n) -> SetResult {
    if (n.IsScalar() && n.Scalar() == "auto") {
      c.strategy.bucket_cap_auto = true;
      return std::nullopt;
    }
    const std::optional<double> v = scalar_as<double>(n);
    if (!v) return "expected a number > 0 or auto, got " + scalar_text(n);
    if (!std::isfinite(*v) || *v <= 0) {
      return format_double(*v) + " is out of range; allowed: number > 0, or auto";
    }
    c.strategy.bucket_cap_auto = false;
    c.strategy.ddp.bucket_cap_mb = *v;
    return std::nullopt;
  };
  return f;
}

/// strategy.backend: auto, then every backend dtrain has, so that the reference (docs/config.md)
/// is the same for every build. One this build lacks is refused here, with how to get it, rather
/// than at start-up.
Field backend_field(std::string doc) {
  std::vector<std::string> choices = {"auto"};
  for (const std::string& b : dist::known_backends()) choices.push_back(b);
  Field f =
      string_field("strategy", "backend", DTRAIN_GET(strategy.backend), choices, std::move(doc));
  f.set = [choose = f.set](Config& c, const YAML::Node& n) -> SetResult {
    if (SetResult problem = choose(c, n)) return problem;
    if (c.strategy.backend != "auto" && !dist::built_with(c.strategy.backend)) {
      return dist::backend_unavailable_reason(c.strategy.backend);
    }
    return std::nullopt;
  };
  return f;
}

const std::vector<Field>& schema() {
  static const std::vector<Field> fields = {
      // model
      string_field("model", "type", DTRAIN_GET(model.type), {},
                   "Model family: `mlp` (flatten, hidden layers, linear head), `cnn` (conv5x5, "
                   "pool, conv5x5, pool, fully connected, linear head), or a registered model "
                   "(see the end of this page), which may read keys of its own in this section.",
                   "a registered model: mlp | cnn | ..."),
      int_list_field("model", "hidden", DTRAIN_GET(model.hidden), 1, true,
                     "mlp: widths of the hidden layers, input side first."),
      string_field("model", "activation", DTRAIN_GET(model.activation),
                   {"relu", "gelu", "tanh", "sigmoid"}, "Activation after each hidden layer."),
      float_field("model", "dropout", DTRAIN_GET(model.dropout), 0, 0.99,
                  "Dropout probability after each hidden activation (0: none)."),
      bool_field("model", "batch_norm", DTRAIN_GET(model.batch_norm),
                 "Batch normalisation after each hidden linear or convolution layer."),
      bool_field("model", "sync_batch_norm", DTRAIN_GET(model.sync_batch_norm),
                 "SyncBatchNorm: with several replicas (ddp, mirrored, multi_worker_mirrored), "
                 "every BatchNorm layer normalises training batches with the mean and variance "
                 "of the global batch, through the replicas' communicator (two small "
                 "all-reduces per layer in forward, two in backward), and the running statistics "
                 "stay identical on every replica. For small per-replica batches. A model "
                 "without BatchNorm refuses it."),
      int_list_field("model", "channels", DTRAIN_GET(model.channels), 1, false,
                     "cnn: output channels of the two 5x5 convolutions (exactly two values)."),
      int_field("model", "fc_units", DTRAIN_GET(model.fc_units), 1, INT64_MAX,
                "cnn: width of the hidden fully connected layer."),
      Field{"model", "layers", "layer list", "list of layers (see \"Sequential layers\" below)",
            "sequential: the layers, input side first; `residual: [...]` adds its input to its "
            "output.",
            [](const Config& c) { return layers_yaml(c.model.layers); },
            [](Config& c, const YAML::Node& n) -> SetResult {
              std::vector<std::string> problems;
              c.model.layers = parse_layers(n, "config", problems);
              if (problems.empty()) return std::nullopt;
              std::string all;
              for (const auto& line : problems) all += (all.empty() ? "" : "; ") + line;
              return all;
            }},
      // data
      string_field("data", "name", DTRAIN_GET(data.name), {},
                   "Data set: Fashion-MNIST from IDX files, a seeded synthetic set with a "
                   "learnable target, or another registered dataset (see the end of this page), "
                   "which may read keys of its own in this section.",
                   "a registered dataset: fashion_mnist | synthetic | ..."),
      string_field("data", "path", DTRAIN_GET(data.path), {},
                   "Directory with the Fashion-MNIST IDX files (.gz or plain).", "directory path"),
      string_field("data", "normalize", DTRAIN_GET(data.normalize), {"none", "unit", "standard"},
                   "Pixel scaling: raw 0..255, /255, or standardised with the training set's mean "
                   "and standard deviation."),
      int_field("data", "synthetic_train_size", DTRAIN_GET(data.synthetic_train_size), 1, INT64_MAX,
                "synthetic: training examples."),
      int_field("data", "synthetic_test_size", DTRAIN_GET(data.synthetic_test_size), 1, INT64_MAX,
                "synthetic: test examples."),
      int_list_field("data", "synthetic_shape", DTRAIN_GET(data.synthetic_shape), 1, false,
                     "synthetic: shape of one example, e.g. [1, 28, 28].", kMaxShapeElements),
      int_field("data", "synthetic_classes", DTRAIN_GET(data.synthetic_classes), 2, INT64_MAX,
                "synthetic: number of classes."),
      int_field("data", "crop_padding", DTRAIN_GET(data.crop_padding), 0, 64,
                "Training images are padded with this many zero pixels on each side and cropped "
                "back at a random offset (0: off). Random choices depend only on train.seed, the "
                "epoch and the example, so runs resume exactly on any number of replicas."),
      bool_field("data", "horizontal_flip", DTRAIN_GET(data.horizontal_flip),
                 "Training images are mirrored left-right with probability 1/2 (same rule)."),
      int_field("data", "prefetch", DTRAIN_GET(data.prefetch), 1, 64,
                "Batches the loader thread prepares ahead of training."),
      // optimizer
      string_field("optimizer", "type", DTRAIN_GET(optimizer.type),
                   {"sgd", "adam", "adamw", "rmsprop"}, "Optimiser (PyTorch's update rules)."),
      float_field("optimizer", "lr", DTRAIN_GET(optimizer.lr), 0, kInf,
                  "Base learning rate (the schedule scales it).", true),
      float_field("optimizer", "momentum", DTRAIN_GET(optimizer.momentum), 0, 1,
                  "sgd, rmsprop: momentum factor."),
      float_field("optimizer", "dampening", DTRAIN_GET(optimizer.dampening), 0, 1,
                  "sgd: dampening of the momentum."),
      bool_field("optimizer", "nesterov", DTRAIN_GET(optimizer.nesterov),
                 "sgd: Nesterov momentum (needs momentum > 0 and dampening 0)."),
      float_field("optimizer", "weight_decay", DTRAIN_GET(optimizer.weight_decay), 0, kInf,
                  "L2 penalty (sgd, adam, rmsprop) or decoupled decay (adamw)."),
      float_field("optimizer", "beta1", DTRAIN_GET(optimizer.beta1), 0, 0.999999,
                  "adam, adamw: first-moment decay."),
      float_field("optimizer", "beta2", DTRAIN_GET(optimizer.beta2), 0, 0.999999,
                  "adam, adamw: second-moment decay."),
      float_field("optimizer", "eps", DTRAIN_GET(optimizer.eps), 0, 1,
                  "adam, adamw, rmsprop: term added to the denominator.", true),
      float_field("optimizer", "clip_grad_norm", DTRAIN_GET(optimizer.clip_grad_norm), 0, kInf,
                  "Scale the gradients down when their global L2 norm exceeds this, after the "
                  "replicas' reduction so that every replica clips alike (0: off)."),
      string_list_field("optimizer", "no_decay", DTRAIN_GET(optimizer.no_decay),
                        "Parameters without weight decay: `bias`, `norm` (batch and layer norm "
                        "weights), `embedding`, or part of a parameter's name. An entry that "
                        "matches no parameter is an error."),
      float_field("optimizer", "alpha", DTRAIN_GET(optimizer.alpha), 0, 1,
                  "rmsprop: smoothing constant of the squared-gradient average."),
      // schedule
      string_field("schedule", "type", DTRAIN_GET(schedule.type),
                   {"constant", "step", "multistep", "cosine"},
                   "Learning-rate schedule over optimiser steps; cosine decays to eta_min at the "
                   "last step."),
      int_field("schedule", "warmup_steps", DTRAIN_GET(schedule.warmup_steps), 0, INT64_MAX,
                "Linear warm-up steps before the schedule starts."),
      float_field("schedule", "warmup_start_factor", DTRAIN_GET(schedule.warmup_start_factor), 0, 1,
                  "Warm-up starts at this fraction of the learning rate."),
      bool_field("schedule", "scale_lr_with_replicas", DTRAIN_GET(schedule.scale_lr_with_replicas),
                 "Linear scaling rule: multiply lr by the number of replicas."),
      int_field("schedule", "step_size", DTRAIN_GET(schedule.step_size), 1, INT64_MAX,
                "step: steps between decays."),
      float_field("schedule", "gamma", DTRAIN_GET(schedule.gamma), 0, 1,
                  "step, multistep: decay factor.", true),
      int_list_field("schedule", "milestones", DTRAIN_GET(schedule.milestones), 1, true,
                     "multistep: steps at which lr is multiplied by gamma (increasing)."),
      float_field("schedule", "eta_min", DTRAIN_GET(schedule.eta_min), 0, kInf,
                  "cosine: learning rate at the end."),
      // train
      int_field("train", "epochs", DTRAIN_GET(train.epochs), 1, INT64_MAX,
                "Passes over the training set (unless max_steps ends the run first)."),
      int_field("train", "max_steps", DTRAIN_GET(train.max_steps), 0, INT64_MAX,
                "Optimiser steps for the whole run; 0: epochs decide."),
      int_field("train", "batch_size", DTRAIN_GET(train.batch_size), 1, INT64_MAX,
                "Examples per replica per forward pass."),
      int_field("train", "grad_accum_steps", DTRAIN_GET(train.grad_accum_steps), 1, INT64_MAX,
                "Batches whose gradients are summed (and averaged) before each optimiser step."),
      int_field("train", "seed", DTRAIN_GET(train.seed), 0, INT64_MAX,
                "Seeds initialisation, shuffling and dropout: the same seed gives the same run."),
      float_field("train", "label_smoothing", DTRAIN_GET(train.label_smoothing), 0, 0.99,
                  "Label smoothing of the cross-entropy loss."),
      bool_field("train", "drop_last", DTRAIN_GET(train.drop_last),
                 "Drop the last incomplete batch of each epoch."),
      string_field("train", "checkpoint_dir", DTRAIN_GET(train.checkpoint_dir), {},
                   "Directory for checkpoints (created when missing); empty: checkpoints/<run "
                   "id>, the run id being the config file's name and a hash of the model, data, "
                   "optimizer and schedule sections and train.seed (printed at the start).",
                   "directory path or empty", true),
      int_field("train", "checkpoint_every_steps", DTRAIN_GET(train.checkpoint_every_steps), 0,
                INT64_MAX, "Checkpoint every this many steps (0: only at the end)."),
      int_field("train", "keep_checkpoints", DTRAIN_GET(train.keep_checkpoints), 1, INT64_MAX,
                "Newest checkpoints kept; older ones are deleted."),
      string_field("train", "resume", DTRAIN_GET(train.resume), {},
                   "`auto`: continue from the newest valid checkpoint in checkpoint_dir if any; "
                   "`never`: start fresh; otherwise the path of a checkpoint to continue from.",
                   "auto | never | checkpoint path"),
      string_field("train", "init_from", DTRAIN_GET(train.init_from), {},
                   "A safetensors file of weights (from `dtrain export`, PyTorch's or Hugging "
                   "Face's safetensors) that a fresh run starts from instead of the seed's "
                   "initialisation: fine-tuning. Every parameter and buffer of the model must be "
                   "in it with the same shape, and nothing else; every mismatch is listed. A run "
                   "that resumes from a checkpoint ignores it.",
                   "safetensors path or empty", true),
      int_field("train", "stop_at_step", DTRAIN_GET(train.stop_at_step), 0, INT64_MAX,
                "Stop with a checkpoint after this step, as if preempted; the schedule still spans "
                "the whole run (0: off)."),
      int_field("train", "threads", DTRAIN_GET(train.threads), 0, 1024,
                "Kernel threads per process; 0: all cores."),
      string_field("train", "precision", DTRAIN_GET(train.precision), {"fp32", "bf16", "fp16"},
                   "Mixed precision, autocast-style: `bf16` or `fp16` runs matrix products and "
                   "convolutions (forward and backward) on 16-bit operands with float32 "
                   "accumulation, while weights (the optimiser's master copy), activations and "
                   "gradients stay float32. `fp16` adds dynamic loss scaling: steps whose "
                   "gradients overflow are skipped and counted, the scale halves, and doubles "
                   "after 2000 good steps. On a GPU the products use tensor cores; on the CPU the "
                   "rounded operands go through float32 kernels (the numerics, not the speed: "
                   "docs/performance.md). Evaluation runs in float32."),
      float_field("train", "loss_scale", DTRAIN_GET(train.loss_scale), 0, kInf,
                  "fp16: the loss scale to start from (dynamic afterwards).", true),
      string_field("train", "device", DTRAIN_GET(train.device), {"cpu", "cuda", "auto"},
                   "Where replicas compute. `cuda`: each process takes the GPUs after those of "
                   "lower local ranks (cuda:LOCAL_RANK with ddp; strategy.devices consecutive "
                   "GPUs with mirrored), gradients go over NCCL, checkpoints stay "
                   "device-independent; exits 2 naming the reason when no GPU can be used. "
                   "`auto`: cuda when a GPU is present, else cpu. The GPU path has not yet run "
                   "on a real GPU (docs/training.md)."),
      int_field("train", "early_stop_patience", DTRAIN_GET(train.early_stop_patience), 0, INT64_MAX,
                "Stop after this many evaluations (one per epoch) without a better "
                "early_stop_metric; the best model is kept as best.dtck in checkpoint_dir (0: "
                "off)."),
      string_field("train", "early_stop_metric", DTRAIN_GET(train.early_stop_metric),
                   {"accuracy", "loss"}, "What early stopping watches on the test split."),
      string_field("train", "on_nonfinite", DTRAIN_GET(train.on_nonfinite), {"stop", "skip_step"},
                   "A NaN or infinite loss or gradient: `stop` ends the run with an error naming "
                   "the step; `skip_step` leaves the parameters and optimiser state as they are "
                   "for that step (every replica alike, as they share the reduced gradients) "
                   "and goes on."),
      bool_field("train", "detect_anomaly", DTRAIN_GET(train.detect_anomaly),
                 "Check every gradient in backward: the first NaN or Inf stops the run with an "
                 "error naming the step, the backward op and its forward op with the input "
                 "shapes (whatever on_nonfinite says). Slow: for finding where a run diverges."),
      bool_field("train", "checkpoint_on_signal", DTRAIN_GET(train.checkpoint_on_signal),
                 "SIGTERM or SIGUSR1 (Slurm's --signal, a launcher's stop) ends the run after "
                 "the next step every replica agrees on, with a checkpoint at that step; the "
                 "process then exits with 128 + the signal (143, 138) and a run started again "
                 "resumes from it. false: the signals end the process at once."),
      // strategy
      string_field(
          "strategy", "type", DTRAIN_GET(strategy.type), strategy_names(),
          "How replicas are kept in sync: `single` is one process, one replica; `ddp` "
          "is one replica per process of a dtrain launch, mpirun or srun job, gradients "
          "averaged by DistributedDataParallel; `mirrored` runs `strategy.devices` replicas as "
          "threads of one process; `multi_worker_mirrored` runs that many in every process of "
          "such a job (local reduction, then across processes)."),
      backend_field("Communication backend (`auto`: tcp under dtrain launch or a cluster "
                    "section, mpi under mpirun or srun; `nccl` needs a GPU and carries device "
                    "tensors, host tensors going through the auto backend). A build without MPI "
                    "or CUDA refuses `mpi` or `nccl`, saying how to get it."),
      bool_field("strategy", "find_unused_parameters",
                 DTRAIN_GET(strategy.ddp.find_unused_parameters),
                 "ddp: reduce the zero gradients of parameters the forward pass did not use "
                 "(otherwise they are an error naming them)."),
      bool_field(
          "strategy", "broadcast_buffers", DTRAIN_GET(strategy.ddp.broadcast_buffers),
          "ddp: rank 0's buffers (batch-norm statistics) are broadcast before each forward."),
      string_field("strategy", "comm_hook", DTRAIN_GET(strategy.ddp.comm_hook),
                   {"none", "fp16", "bf16"},
                   "ddp: compress gradient buckets to 16 bits for the all-reduce."),
      bool_field("strategy", "overlap", DTRAIN_GET(strategy.ddp.overlap),
                 "ddp: start each gradient bucket's all-reduce during backward. Turn off when "
                 "every rank has a single core: the communicator's progress then competes with "
                 "backward for it."),
      int_field("strategy", "devices", DTRAIN_GET(strategy.devices), 1, 1024,
                "mirrored, multi_worker_mirrored: replicas per process (logical CPU devices "
                "cpu:0..N-1, each a thread)."),
      bool_field("strategy", "shard_optimizer", DTRAIN_GET(strategy.shard_optimizer),
                 "ZeRO-1 (ddp, mirrored, multi_worker_mirrored): gradients are reduce-scattered, "
                 "each replica keeps and updates only its 1/N of the optimiser state, then the "
                 "parameters are all-gathered; same communication as plain DDP. Checkpoints hold "
                 "the whole state, so a run resumes on any number of replicas, sharded or not."),
      bucket_cap_field(),
      seconds_field("strategy", "timeout_s", DTRAIN_GET(strategy.ddp.timeout),
                    "A collective that does not finish in this many seconds stops the job."),
      int_field("strategy", "check_parameters_every_steps",
                DTRAIN_GET(strategy.check_parameters_every_steps), 0, INT64_MAX,
                "Replicas compare a checksum of their parameters every this many steps; drift "
                "is an error naming the replicas (0: never)."),
      seconds_field("strategy", "stall_warning_s", DTRAIN_GET(strategy.stall_warning),
                    "A collective running this long logs a progress report and keeps waiting."),
      // launcher
      int_field("launcher", "nproc_per_node", DTRAIN_GET(launcher.nproc_per_node), 1, 1024,
                "Worker processes per node for `dtrain launch`."),
      int_field("launcher", "nnodes", DTRAIN_GET(launcher.nnodes), 1, 65536,
                "Machines in the job, each running `dtrain launch` with its own `--node-rank`."),
      string_field("launcher", "rdzv_endpoint", DTRAIN_GET(launcher.rdzv_endpoint), {},
                   "HOST:PORT of the Store that node 0's launcher hosts; needed with more than "
                   "one node. Empty on one node: a free port on 127.0.0.1.",
                   "host:port or empty", true),
      int_field("launcher", "max_restarts", DTRAIN_GET(launcher.max_restarts), 0, 1'000'000,
                "Restarts of the whole job after a worker fails; workers resume from the latest "
                "checkpoint."),
      float_field("launcher", "heartbeat_timeout_s", DTRAIN_GET(launcher.heartbeat_timeout_s), 0,
                  kInf,
                  "A worker that sends no heartbeat for this long (stopped, swapped out, hung) "
                  "counts as failed; 0: never.",
                  false),
      float_field("launcher", "stop_grace_s", DTRAIN_GET(launcher.stop_grace_s), 0, kInf,
                  "After SIGTERM, workers get this long to exit before SIGKILL.", false),
      float_field("launcher", "rdzv_timeout_s", DTRAIN_GET(launcher.rdzv_timeout_s), 0, kInf,
                  "How long launchers wait for every node at start-up and between restarts.", true),
      string_field("launcher", "cpu_bind", DTRAIN_GET(launcher.cpu_bind), {"auto", "none"},
                   "auto: when this node has at least one core per worker, each worker runs on "
                   "its own cores (cores / nproc_per_node of them, as `mpirun` binds by default); "
                   "none: workers may run on every core.",
                   "auto | none", true),
      string_field("launcher", "log_dir", DTRAIN_GET(launcher.log_dir), {},
                   "Write each worker's output to LOG_DIR/rank_N.log instead of the launcher's "
                   "output with a [rank N] prefix.",
                   "directory path or empty", true),
      // cluster
      int_field("cluster", "world_size", DTRAIN_GET(cluster.world_size), 0, 1 << 20,
                "Processes in the job when no launcher, mpirun or srun describes it; each is "
                "started with this config and its own cluster.rank (0: from the environment)."),
      int_field("cluster", "rank", DTRAIN_GET(cluster.rank), -1, 1 << 20,
                "This process's rank with cluster.world_size, usually an override "
                "(cluster.rank=1); -1: unset. Not part of the config hash."),
      string_field("cluster", "store", DTRAIN_GET(cluster.store), {},
                   "HOST:PORT where rank 0 hosts the Store that the processes meet at (an "
                   "address of rank 0's machine that every process can reach). The processes "
                   "need the same DTRAIN_STORE_TOKEN (16 characters or more) when there are "
                   "several.",
                   "host:port or empty", true),
      // log
      string_field("log", "dir", DTRAIN_GET(log.dir), {},
                   "Directory for metrics.jsonl and TensorBoard event files; empty: runs/<run id>.",
                   "directory path or empty", true),
      int_field("log", "every_steps", DTRAIN_GET(log.every_steps), 1, INT64_MAX,
                "Steps between metric records and progress lines."),
      bool_field("log", "tensorboard", DTRAIN_GET(log.tensorboard),
                 "Write TensorBoard event files next to metrics.jsonl."),
      string_field("log", "progress", DTRAIN_GET(log.progress), {"auto", "bar", "lines", "off"},
                   "Progress display: `auto` redraws a bar on a terminal and prints plain lines "
                   "otherwise."),
      bool_field(
          "log",
          "trace", DTRAIN_GET(log.trace),
          "Write <log.dir>/trace.json, a Chrome trace (open it in Perfetto or "
          "chrome://tracing) of `trace_steps` steps: a lane per replica with data wait, "
          "forward, backward, the wait for gradients, optimiser and checkpoint writes, and a "
          "lane with each gradient bucket's reduction (bytes, hidden or exposed). Clocks "
          "are aligned by a barrier at start-up."),
      int_field("log", "trace_steps", DTRAIN_GET(log.trace_steps), 1, 100000,
                "Steps the trace covers (its size grows with them)."),
      int_field("log", "trace_first_step", DTRAIN_GET(log.trace_first_step), 0, INT64_MAX,
                "First step of the trace; 0: the run's first step (after a resume, the first "
                "step it takes)."),
      bool_field("log", "stragglers", DTRAIN_GET(log.stragglers),
                 "With several replicas, every every_steps: a table per replica (step time p50 "
                 "and p90, data wait, compute, exposed communication, waiting for the slowest "
                 "replica) in metrics.jsonl and TensorBoard, naming the slowest replica; a line "
                 "when it is 25% slower than the median. One small all-reduce each time."),
  };
  return fields;
}
#undef DTRAIN_GET

const std::vector<std::string>& section_names() {
  static const std::vector<std::string> names = {
      "model", "data", "optimizer", "schedule", "train", "strategy", "launcher", "cluster", "log"};
  return names;
}

/// A key under `model:` or `data:` that is not in the schema: it may belong to the registered
/// model or dataset, which is known once every key and override has been read.
struct PendingOption {
  std::string section, key;
  YAML::Node value;
  std::string at;
  size_t slot = 0;  // its place among the problems, so they stay in file order
};

/// Collects every problem, then throws them together.
struct Problems {
  std::string source;  // the config file, for problems found inside a value (model.layers)
  std::vector<std::string> lines;
  std::vector<PendingOption> pending;
  std::map<std::string, std::string> origin;  // "section.key" -> where its value was last set
  void add(const std::string& where, const std::string& what) {
    lines.push_back(where.empty() ? what : where + ": " + what);
  }
  /// "file:line" or "override '...'" that set `key`, so rules over several keys can point there.
  std::string where_set(const std::string& key, const std::string& fallback) const {
    const auto it = origin.find(key);
    return it == origin.end() ? fallback : it->second;
  }
};

std::string where(const std::string& source, const YAML::Node& n) {
  const YAML::Mark m = n.Mark();
  if (m.is_null() || m.line < 0) return source;
  return source + ":" + std::to_string(m.line + 1);
}

const Field* find_field(const std::string& section, const std::string& key) {
  for (const Field& f : schema()) {
    if (f.section == section && f.key == key) return &f;
  }
  return nullptr;
}

std::vector<std::string> keys_of(const std::string& section) {
  std::vector<std::string> keys;
  for (const Field& f : schema()) {
    if (f.section == section) keys.push_back(f.key);
  }
  return keys;
}

void apply_node(Config& c, const std::string& section, const std::string& key,
                const YAML::Node& value, const std::string& at, Problems& p) {
  if (section == "model" && key == "layers") {
    // Each layer's problem names its own line and index.
    std::vector<std::string> problems;
    const bool from_file = at.rfind("override", 0) != 0;
    std::vector<LayerSpec> layers = parse_layers(value, from_file ? p.source : at, problems);
    p.lines.insert(p.lines.end(), problems.begin(), problems.end());
    if (problems.empty()) {
      c.model.layers = std::move(layers);
      p.origin["model.layers"] = at;
    }
    return;
  }
  const Field* f = find_field(section, key);
  if (f == nullptr && (section == "model" || section == "data")) {
    p.pending.push_back({section, key, value, at, p.lines.size()});
    p.lines.emplace_back();  // filled in by resolve_registered if the key is a problem
    return;
  }
  if (f == nullptr) {
    std::vector<std::string> qualified;
    for (const auto& k : keys_of(section)) qualified.push_back(section + "." + k);
    p.add(at, "unknown key '" + section + "." + key + "'" +
                  did_you_mean(section + "." + key, qualified));
    return;
  }
  if (auto err = f->set(c, value)) {
    p.add(at, f->name() + ": " + *err);
  } else {
    p.origin[f->name()] = at;
  }
}

void apply_document(Config& c, const YAML::Node& root, const std::string& source, Problems& p) {
  if (!root || root.IsNull()) return;  // an empty file: all defaults
  if (!root.IsMap()) {
    p.add(where(source, root), "the config must be a mapping of sections (model, data, ...)");
    return;
  }
  // A key that is a list, a mapping or empty is reported here: as<std::string>() would throw.
  std::set<std::string> seen_sections;
  for (const auto& entry : root) {
    if (!entry.first.IsScalar()) {
      p.add(where(source, entry.first),
            "a section name must be a word (model, data, ...), got " + scalar_text(entry.first));
      continue;
    }
    const std::string section = entry.first.Scalar();
    const auto& names = section_names();
    if (std::find(names.begin(), names.end(), section) == names.end()) {
      p.add(where(source, entry.first),
            "unknown section '" + section + "'" + did_you_mean(section, names));
      continue;
    }
    // YAML forbids duplicate keys; yaml-cpp keeps both, and the later one would silently win.
    if (!seen_sections.insert(section).second) {
      p.add(where(source, entry.first), "section '" + section + "' appears twice");
      continue;
    }
    if (entry.second.IsNull()) continue;
    if (!entry.second.IsMap()) {
      p.add(where(source, entry.second), "section '" + section + "' must be a mapping of keys");
      continue;
    }
    std::set<std::string> seen_keys;
    for (const auto& kv : entry.second) {
      if (!kv.first.IsScalar()) {
        p.add(where(source, kv.first),
              "a key in section '" + section + "' must be a word, got " + scalar_text(kv.first));
        continue;
      }
      const std::string key = kv.first.Scalar();
      if (!seen_keys.insert(key).second) {
        p.add(where(source, kv.first), section + "." + key + ": appears twice");
        continue;
      }
      apply_node(c, section, key, kv.second, where(source, kv.first), p);
    }
  }
}

/// What went wrong in a YAML text. yaml-cpp reports nesting past its recursion limit as "bad
/// file", which would send the user looking for a missing file.
std::string yaml_problem(const YAML::Exception& e) {
  if (const auto* deep = dynamic_cast<const YAML::DeepRecursion*>(&e)) {
    return "nested deeper than yaml-cpp's limit of " + std::to_string(deep->depth()) +
           " levels; a config needs only a few (an unclosed '[' or '{'?)";
  }
  return e.msg;
}

void apply_overrides(Config& c, const std::vector<std::string>& overrides, Problems& p) {
  for (const std::string& o : overrides) {
    const std::string at = "override '" + o + "'";
    const size_t eq = o.find('='), dot = o.find('.');
    if (eq == std::string::npos || dot == std::string::npos || dot > eq) {
      p.add(at, "expected section.key=value, e.g. train.epochs=3");
      continue;
    }
    const std::string section = o.substr(0, dot), key = o.substr(dot + 1, eq - dot - 1);
    const auto& names = section_names();
    if (std::find(names.begin(), names.end(), section) == names.end()) {
      p.add(at, "unknown section '" + section + "'" + did_you_mean(section, names));
      continue;
    }
    YAML::Node value;
    try {
      value = YAML::Load(o.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      p.add(at, "the value is not valid YAML: " + yaml_problem(e));
      continue;
    }
    if (!value || value.IsNull()) value = YAML::Node(std::string());
    apply_node(c, section, key, value, at, p);
  }
}

/// The option's value as the config keeps it (strings unquoted), or the problem.
SetResult option_value(const OptionKey& k, const YAML::Node& n, std::string& out) {
  using Kind = OptionKey::Kind;
  const auto in_range = [&](double v) { return v >= k.lo && v <= k.hi; };
  switch (k.kind) {
    case Kind::kInt: {
      const std::optional<int64_t> v = scalar_as<int64_t>(n);
      if (!v) return "expected an " + k.allowed() + ", got " + scalar_text(n);
      if (!in_range(static_cast<double>(*v))) {
        return std::to_string(*v) + " is out of range; allowed: " + k.allowed();
      }
      out = std::to_string(*v);
      return std::nullopt;
    }
    case Kind::kFloat: {
      const std::optional<double> v = scalar_as<double>(n);
      if (!v) return "expected a " + k.allowed() + ", got " + scalar_text(n);
      if (!std::isfinite(*v) || !in_range(*v)) {
        return format_double(*v) + " is out of range; allowed: " + k.allowed();
      }
      out = format_double(*v);
      return std::nullopt;
    }
    case Kind::kBool: {
      const std::optional<bool> v = scalar_as<bool>(n);
      if (!v) return "expected true or false, got " + scalar_text(n);
      out = *v ? "true" : "false";
      return std::nullopt;
    }
    case Kind::kString: {
      if (!n.IsScalar()) return "expected a string (" + k.allowed() + "), got " + scalar_text(n);
      const std::string v = n.Scalar();
      if (!k.choices.empty() &&
          std::find(k.choices.begin(), k.choices.end(), v) == k.choices.end()) {
        return "'" + v + "' is not one of " + k.allowed() + did_you_mean(v, k.choices);
      }
      if (v.empty()) return "must not be empty";
      out = v;
      return std::nullopt;
    }
    case Kind::kIntList: {
      if (!n.IsSequence())
        return "expected a " + k.allowed() + " like [64, 32], got " + scalar_text(n);
      std::string text = "[";
      for (size_t i = 0; i < n.size(); ++i) {
        const std::optional<int64_t> v = scalar_as<int64_t>(n[i]);
        if (!v)
          return "element " + std::to_string(i) + ": expected an integer, got " + scalar_text(n[i]);
        if (!in_range(static_cast<double>(*v))) {
          return "element " + std::to_string(i) + " is " + std::to_string(*v) +
                 "; allowed: " + k.allowed();
        }
        text += (i ? ", " : "") + std::to_string(*v);
      }
      out = text + "]";
      return std::nullopt;
    }
  }
  return "unsupported key kind";
}

/// The keys that the registered model or dataset of `section` declares, or nullptr when the
/// name is not registered.
const std::vector<OptionKey>* registered_keys(const Config& c, const std::string& section) {
  if (section == "model") {
    const ModelEntry* e = find_model(c.model.type);
    return e ? &e->keys : nullptr;
  }
  const DatasetEntry* e = find_dataset(c.data.name);
  return e ? &e->keys : nullptr;
}

/// Checks model.type and data.name against the registries, then reads the keys their entries
/// declare (from the pending keys, or their defaults) into the sections' options.
void resolve_registered(Config& c, const std::string& source, Problems& p) {
  const std::string file = source.empty() ? "config" : source;
  struct Section {
    std::string name, choice_key, choice;
    std::vector<std::string> registered;
    Options* options;
  };
  std::vector<std::string> model_names, dataset_names;
  for (const ModelEntry* e : model_entries()) model_names.push_back(e->name);
  for (const DatasetEntry* e : dataset_entries()) dataset_names.push_back(e->name);
  Section sections[] = {{"model", "model.type", c.model.type, model_names, &c.model.options},
                        {"data", "data.name", c.data.name, dataset_names, &c.data.options}};
  for (Section& s : sections) {
    const std::vector<OptionKey>* keys = registered_keys(c, s.name);
    if (keys == nullptr) {
      std::string list;
      for (const auto& n : s.registered) list += (list.empty() ? "" : " | ") + n;
      p.add(p.where_set(s.choice_key, file), s.choice_key + ": '" + s.choice + "' is not one of " +
                                                 list + did_you_mean(s.choice, s.registered));
    }
    Options resolved(s.name);
    std::map<std::string, std::string> given;
    for (const PendingOption& o : p.pending) {
      if (o.section != s.name) continue;
      // k points into *keys itself: `keys ? *keys : std::vector<OptionKey>{}` would iterate a
      // temporary copy, gone before k is used.
      const OptionKey* k = nullptr;
      for (size_t i = 0; keys != nullptr && i < keys->size(); ++i) {
        if ((*keys)[i].key == o.key) k = &(*keys)[i];
      }
      const std::string name = s.name + "." + o.key;
      if (k == nullptr) {
        if (keys == nullptr) continue;  // the unregistered name is the problem to report
        std::vector<std::string> qualified;
        for (const auto& key : keys_of(s.name)) qualified.push_back(s.name + "." + key);
        for (const OptionKey& candidate : *keys) qualified.push_back(s.name + "." + candidate.key);
        std::string own;
        for (const OptionKey& candidate : *keys) own += (own.empty() ? "" : ", ") + candidate.key;
        p.lines[o.slot] =
            o.at + ": unknown key '" + name + "'" + did_you_mean(name, qualified) +
            (own.empty() ? "" : "; " + s.choice_key + " " + s.choice + " also reads: " + own);
        continue;
      }
      std::string value;
      if (auto err = option_value(*k, o.value, value)) {
        p.lines[o.slot] = o.at + ": " + name + ": " + *err;
      } else {
        given[o.key] = value;
        p.origin[name] = o.at;
      }
    }
    if (keys == nullptr) continue;
    for (const OptionKey& k : *keys) {
      const auto it = given.find(k.key);
      resolved.set(k.key, it != given.end() ? it->second : k.default_value);
    }
    *s.options = std::move(resolved);
  }
}

/// model.type sequential: layers given, and (for the built-in data sets, whose shapes the config
/// fixes) a dry shape inference from the examples to the classifier's logits.
void check_sequential(const Config& c, const std::function<std::string(const std::string&)>& at,
                      Problems& p) {
  if (c.model.layers.empty()) {
    p.add(at("model.type"),
          "model.layers: model.type sequential needs a list of layers, e.g. "
          "[flatten, {linear: {out: 128}}, relu, {linear: {out: classes}}]");
    return;
  }
  Shape example;
  int64_t classes = 0;
  if (c.data.name == "fashion_mnist") {
    example = {1, 28, 28};
    classes = 10;
  } else if (c.data.name == "synthetic") {
    example = Shape(c.data.synthetic_shape.begin(), c.data.synthetic_shape.end());
    classes = c.data.synthetic_classes;
  } else {
    return;  // a registered data set's shape is known once it is built
  }
  try {
    const std::string source = c.source.empty() ? "config" : c.source;
    const Shape out = infer_output_shape(c.model.layers, example, classes, false, source);
    check_classifier_output(out, example, classes, false, source);
  } catch (const ValueError& e) {
    p.add(at("model.layers"), e.message());
  }
}

/// Rules that involve more than one key.
void check_combinations(const Config& c, const std::string& source, Problems& p) {
  const std::string file = source.empty() ? "config" : source;
  // Each rule points at the line (or override) that set the key it names.
  const auto at = [&](const std::string& key) { return p.where_set(key, file); };
  if (c.model.type == "cnn" && c.model.channels.size() != 2) {
    p.add(at("model.channels"),
          "model.channels: cnn needs exactly two values (conv1 and conv2 output channels); got " +
              std::to_string(c.model.channels.size()));
  }
  if (c.optimizer.nesterov && (c.optimizer.momentum <= 0 || c.optimizer.dampening != 0)) {
    p.add(at("optimizer.nesterov"),
          "optimizer.nesterov: needs optimizer.momentum > 0 and optimizer.dampening = 0");
  }
  if (c.schedule.type == "multistep" &&
      !std::is_sorted(c.schedule.milestones.begin(), c.schedule.milestones.end())) {
    p.add(at("schedule.milestones"), "schedule.milestones: must be increasing for multistep");
  }
  if (c.schedule.type == "multistep" && c.schedule.milestones.empty()) {
    p.add(at("schedule.type"), "schedule.milestones: multistep needs at least one milestone");
  }
  if (c.train.stop_at_step > 0 && c.train.max_steps > 0 &&
      c.train.stop_at_step > c.train.max_steps) {
    p.add(at("train.stop_at_step"), "train.stop_at_step (" + std::to_string(c.train.stop_at_step) +
                                        ") is after train.max_steps (" +
                                        std::to_string(c.train.max_steps) + ")");
  }
  if (c.model.type == "sequential") check_sequential(c, at, p);
  const ClusterConfig& k = c.cluster;
  if (k.world_size == 0 && (k.rank >= 0 || !k.store.empty())) {
    p.add(at(k.rank >= 0 ? "cluster.rank" : "cluster.store"),
          "cluster.world_size: cluster.rank and cluster.store need it (the number of processes)");
  }
  if (k.world_size > 0 && (k.rank < 0 || k.rank >= k.world_size)) {
    p.add(at("cluster.rank"), "cluster.rank: must be in [0, " + std::to_string(k.world_size) +
                                  ") with cluster.world_size " + std::to_string(k.world_size) +
                                  " (give each process its own, e.g. cluster.rank=0)");
  }
  if (k.world_size > 1 && k.store.empty()) {
    p.add(at("cluster.world_size"),
          "cluster.store: several processes need HOST:PORT of the Store that rank 0 hosts");
  }
  if (!k.store.empty()) {
    try {
      dist::net::split_host_port(k.store, "cluster.store");
    } catch (const ValueError& e) {
      p.add(at("cluster.store"), e.message());
    }
  }
}

Config parse_checked(const std::function<YAML::Node()>& load, const std::string& source,
                     const std::vector<std::string>& overrides) {
  Config c;
  c.source = source;
  Problems p;
  p.source = source;
  try {
    apply_document(c, load(), source, p);
  } catch (const YAML::ParserException& e) {
    p.add(source + ":" + std::to_string(e.mark.line + 1), "YAML syntax error: " + yaml_problem(e));
  } catch (const YAML::BadFile&) {
    p.add(source, "cannot read the config file (does it exist?)");
  }
  apply_overrides(c, overrides, p);
  resolve_registered(c, source, p);
  c.resolve_run_dirs();
  p.lines.erase(std::remove(p.lines.begin(), p.lines.end(), std::string()), p.lines.end());
  if (p.lines.empty()) check_combinations(c, source, p);
  if (!p.lines.empty()) {
    std::string msg =
        std::to_string(p.lines.size()) + " config problem" + (p.lines.size() > 1 ? "s" : "") + ":";
    for (const auto& l : p.lines) msg += "\n  " + l;
    ConfigError err(msg, __FILE__, __LINE__);
    err.problems = p.lines;
    throw err;
  }
  return c;
}

}  // namespace

namespace {

/// Levenshtein distance.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1])});
      diag = up;
    }
  }
  return row[b.size()];
}

}  // namespace

std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::max<size_t>(2, word.size() / 3) + 1;
  for (const auto& c : candidates) {
    const size_t d = edit_distance(word, c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  return best.empty() ? "" : " (did you mean '" + best + "'?)";
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  return parse_checked([&] { return YAML::LoadFile(path); }, path, overrides);
}

Config parse_config(const std::string& yaml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides) {
  return parse_checked([&] { return YAML::Load(yaml_text); }, source_name, overrides);
}

namespace {

/// Every (section, key, value as YAML) of `c` in schema order, each section's registered keys
/// after its schema keys.
void for_each_value(
    const Config& c, bool per_process,
    const std::function<void(const std::string&, const std::string&, const std::string&)>& fn) {
  const auto registered = [&](const std::string& section) {
    if (section != "model" && section != "data") return;
    const Options& options = section == "model" ? c.model.options : c.data.options;
    const std::vector<OptionKey>* keys = registered_keys(c, section);
    for (const auto& [key, value] : options.values()) {
      bool is_string = false;
      for (const OptionKey& k : keys ? *keys : std::vector<OptionKey>{}) {
        if (k.key == key) is_string = k.kind == OptionKey::Kind::kString;
      }
      fn(section, key, is_string ? YAML::Dump(YAML::Node(value)) : value);
    }
  };
  std::string current;
  for (const Field& f : schema()) {
    if (!per_process && f.name() == "cluster.rank") continue;
    if (f.section != current) {
      registered(current);
      current = f.section;
    }
    fn(f.section, f.key, f.show(c));
  }
  registered(current);
}

}  // namespace

ConfigEntries Config::entries(bool per_process) const {
  ConfigEntries out;
  for_each_value(*this, per_process,
                 [&](const std::string& section, const std::string& key, const std::string& value) {
                   out.emplace_back(section + "." + key, value);
                 });
  return out;
}

std::string Config::to_yaml(bool per_process) const {
  std::string out;
  std::string current;
  for_each_value(*this, per_process,
                 [&](const std::string& section, const std::string& key, const std::string& value) {
                   if (section != current) {
                     out += section + ":\n";
                     current = section;
                   }
                   out += "  " + key + ": " + value + "\n";
                 });
  return out;
}

std::string Config::hash() const {
  const uint64_t h = fnv1a(to_yaml(false));
  std::ostringstream os;
  os << std::hex << std::setw(16) << std::setfill('0') << h;
  return os.str();
}

std::string Config::run_id() const {
  std::string what;
  for (const auto& [key, value] : entries(false)) {
    const std::string section = key.substr(0, key.find('.'));
    if (section == "model" || section == "data" || section == "optimizer" ||
        section == "schedule" || key == "train.seed") {
      what += key + "=" + value + "\n";
    }
  }
  std::string stem = source.empty() ? "run" : std::filesystem::path(source).stem().string();
  if (stem.empty()) stem = "run";
  std::ostringstream os;
  os << stem << '-' << std::hex << std::setw(8) << std::setfill('0') << (fnv1a(what) & 0xffffffffu);
  return os.str();
}

void Config::resolve_run_dirs() {
  if (!train.checkpoint_dir.empty() && !log.dir.empty()) return;
  const std::string id = run_id();
  if (train.checkpoint_dir.empty()) train.checkpoint_dir = "checkpoints/" + id;
  if (log.dir.empty()) log.dir = "runs/" + id;
}

std::vector<std::string> config_keys() {
  std::vector<std::string> keys;
  for (const Field& f : schema()) keys.push_back(f.name());
  return keys;
}

std::string config_reference_markdown() {
  const Config defaults;
  std::ostringstream os;
  os << "# Configuration reference\n\n"
     << "A run is configured by one YAML file with the sections below; every key is optional and "
        "takes the default shown. `dtrain config check CONFIG` prints the resolved configuration "
        "or every problem found (file:line, key, what is allowed, and the nearest valid key for "
        "a misspelling). Command-line overrides `section.key=value` (values in YAML syntax, e.g. "
        "`model.hidden=[512,256]`) go through the same checks.\n\n"
     << "This page is generated from the schema in `train/config.cpp` by "
        "`dtrain config reference`; a test fails when they disagree.\n";
  std::string current;
  for (const Field& f : schema()) {
    if (f.section != current) {
      os << "\n## `" << f.section << "`\n\n| key | type | default | allowed | meaning |\n"
         << "| --- | --- | --- | --- | --- |\n";
      current = f.section;
    }
    const auto cell = [](const std::string& text) {  // a '|' would end the table cell
      std::string escaped;
      for (char ch : text) {
        if (ch == '|') escaped += '\\';
        escaped += ch;
      }
      return escaped;
    };
    os << "| `" << f.name() << "` | " << f.type << " | `" << f.show(defaults) << "` | "
       << cell(f.allowed) << " | " << cell(f.doc) << " |\n";
  }
  os << "\n## Registered models and datasets\n\n"
     << "`model.type` and `data.name` choose an entry of the model and dataset registries "
        "(`train/registry.h`). A program that registers its own (DTRAIN_REGISTER_MODEL, "
        "DTRAIN_REGISTER_DATASET) lists them here too with `config reference`. The keys an entry "
        "declares are read from its section with the same checks as the keys above.\n";
  const auto entry_table = [&](const std::string& kind, const std::string& section,
                               const std::string& name, const std::string& doc,
                               const std::vector<OptionKey>& keys) {
    os << "\n### " << kind << " `" << name << "`\n\n" << doc << "\n";
    if (keys.empty()) return;
    os << "\n| key | type | default | allowed | meaning |\n| --- | --- | --- | --- | --- |\n";
    for (const OptionKey& k : keys) {
      os << "| `" << section << "." << k.key << "` | " << k.type_name() << " | `" << k.default_value
         << "` | " << k.allowed() << " | " << k.doc << " |\n";
    }
  };
  for (const ModelEntry* e : model_entries())
    entry_table("model", "model", e->name, e->doc, e->keys);
  os << "\n### Sequential layers\n\nThe layers `model.layers` may list. An item is a bare "
        "name (`relu`) or a one-key mapping (`linear: {out: 128}`); `classes` stands for the "
        "data's number of classes.\n\n"
     << sequential_layers_markdown();
  for (const DatasetEntry* e : dataset_entries()) {
    entry_table("dataset", "data", e->name, e->doc, e->keys);
  }
  return os.str();
}

}  // namespace dtrain::train
