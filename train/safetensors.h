// safetensors export: the format Hugging Face tools, PyTorch and NumPy read.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

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

}  // namespace dtrain::train
