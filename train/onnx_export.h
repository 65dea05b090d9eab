// ONNX export of a model's inference graph (eval mode: dropout is the identity, batch norm uses its
// running statistics), written with the ONNX schema compiled by protobuf. Parameters keep their
// state-dict names as ONNX initializers, so the file's weights can be matched to a checkpoint's.
#pragma once

#include <string>
#include <vector>

#include "dtrain/nn/module.h"
#include "dtrain/tensor/tensor.h"

namespace dtrain::train {

struct OnnxExportOptions {
  std::string input_name = "input";     // [batch, example shape...]; batch is the symbolic "batch"
  std::string output_name = "output";   // the model's output (logits for the classifiers)
  DType input_dtype = DType::kFloat32;  // int64 for token models
  std::string graph_name = "dtrain";
  /// Written into the model's metadata_props (e.g. the checkpoint's step and model section).
  std::vector<std::pair<std::string, std::string>> metadata;
};

/// The opset the graphs use (LayerNormalization needs 17).
inline constexpr int kOnnxOpset = 17;

/// Writes `model` (Sequential, Residual and the layers of dtrain/nn/layers.h; its parameters on the
/// CPU) for inputs of `example_shape` per example. A module without an ONNX form (attention, a
/// program's own module) is an error naming its path and what can be exported. One example of zeros
/// goes through the model (in eval mode; its mode is restored) for the output's shape. The file is
/// written whole or not at all.
void write_onnx(const std::string& path, nn::Module& model, const Shape& example_shape,
                const OnnxExportOptions& options = {});

}  // namespace dtrain::train
