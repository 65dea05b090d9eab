// safetensors: the format Hugging Face tools, PyTorch and NumPy read and write; dtrain exports to
// it and starts runs from it (train.init_from).
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "dtrain/nn/module.h"
#include "dtrain/tensor/tensor.h"

namespace dtrain::train {

/// Writes tensors by name (8-byte little-endian header length, JSON header with dtype, shape and
/// data_offsets, then the raw bytes in order) with optional string metadata. Tensors on a device
/// are copied to the host first. Written to a temp file and renamed, so `path` is never left
/// half-written. Throws naming the path on failure; ValueError for an undefined tensor, a
/// duplicate name, or a name that is empty, "__metadata__" or contains '"'.
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

/// A safetensors file read back: tensors in the file's order, and its string metadata.
struct SafetensorsFile {
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::map<std::string, std::string> metadata;
};

/// Reads a safetensors file (ours, or one written by PyTorch, NumPy or Hugging Face tools): dtypes
/// F64, F32, F16, BF16, I64, I32, U8 and BOOL. Everything in the header is checked against the
/// file before any tensor is read: the header's size (at most 100 MB, as the format says), its
/// JSON, each tensor's dtype, shape and byte range (inside the data, and the size its shape
/// implies). Throws ValueError naming the file and the tensor or field at fault.
SafetensorsFile read_safetensors(const std::string& path);

/// Loads `tensors` into `model`'s parameters and buffers by name (fine-tuning from a file of
/// weights). Strict: every state-dict entry must be there with the same shape, and nothing else;
/// floating-point tensors convert to the model's dtype. All mismatches are listed in one
/// ValueError that names `source`; nothing is loaded then.
void load_weights(nn::Module& model, const std::vector<std::pair<std::string, Tensor>>& tensors,
                  const std::string& source);

}  // namespace dtrain::train
