// `model.type: sequential`: models written in the config as a list of layers (model.layers).
// Parsing and validation with file:line problems, dry shape inference, and the builder.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dtrain/nn/layers.h"

namespace YAML {
class Node;
}

namespace dtrain::train {

/// One entry of model.layers.
struct LayerSpec {
  std::string type;  // "linear", "residual", ...
  std::vector<std::pair<std::string, std::string>>
      args;                     // given args as YAML scalar text, file order
  std::vector<LayerSpec> body;  // residual: its layers
  int line = 0;                 // 1-based line in the config, 0 if unknown
  bool operator==(const LayerSpec&) const = default;
};

/// Parses and validates model.layers (a list; null or [] gives no layers). Every problem is
/// appended to `problems` as "<source>:<line>: model.layers[<i>]: <what>" (nested:
/// model.layers[3].residual[1]): unknown types and args (with the nearest valid name), missing
/// required args, values of the wrong type or out of range. Returns the layers that parsed.
std::vector<LayerSpec> parse_layers(const YAML::Node& node, const std::string& source,
                                    std::vector<std::string>& problems);

/// Canonical YAML flow text of the list, e.g. `[{linear: {out: 10}}, relu]`; args keep their
/// order and text, so parse_layers of it gives equal specs (lines aside).
std::string layers_yaml(const std::vector<LayerSpec>& layers);

/// Dry shape inference from the per-example input shape (no batch dim): the output shape. Throws
/// ValueError naming the layer ("model.layers[3] (linear, <source>:<line>)"), the shape it got,
/// the shape it needs and a fix. `num_classes` is what `classes` stands for (out, vocab).
/// `input_is_tokens`: examples are int64 token ids, so the first layer must be embedding.
Shape infer_output_shape(const std::vector<LayerSpec>& layers, const Shape& example_shape,
                         int64_t num_classes, bool input_is_tokens, const std::string& source);

/// Throws ValueError unless `output_shape` is the classifier's logits: [num_classes] per example,
/// or [T, num_classes] for token examples [T].
void check_classifier_output(const Shape& output_shape, const Shape& example_shape,
                             int64_t num_classes, bool input_is_tokens, const std::string& source);

/// The model: nn::Sequential with children "0", "1", ... (residual: nn::Residual whose "body" is
/// a Sequential). Runs infer_output_shape first (it does not check the output is [classes]).
/// Parameters are drawn from Generator(seed, 0) in layer order, as build_model does; dropout,
/// attention and transformer_block layers get dropout streams (seeds) 100, 101, ... in order.
std::shared_ptr<nn::Sequential> build_sequential(const std::vector<LayerSpec>& layers,
                                                 const Shape& example_shape, int64_t num_classes,
                                                 bool input_is_tokens, uint64_t seed,
                                                 const std::string& source);

/// Names of the layer types, in the order of the reference.
std::vector<std::string> sequential_layer_types();

/// The layer reference as Markdown (type, args with defaults, shapes), for docs/config.md.
std::string sequential_layers_markdown();

}  // namespace dtrain::train
