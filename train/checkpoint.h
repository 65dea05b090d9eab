// Checkpoints: everything needed to continue a run exactly, in a Protocol Buffers file written
// atomically (temp file, fsync, rename, fsync of the directory) with a CRC-32C of the payload.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dtrain/tensor/tensor.h"

namespace dtrain::train {

/// What a checkpoint holds, in dtrain types (the protobuf schema stays inside checkpoint.cpp).
struct CheckpointData {
  int64_t step = 0;            // optimiser steps completed
  int64_t epoch = 0;           // epoch in progress
  int64_t batch_in_epoch = 0;  // batches of `epoch` already consumed (sampler position)
  int32_t world_size = 1;
  std::string config_yaml;                            // the resolved config
  std::vector<std::pair<std::string, Tensor>> model;  // parameters and buffers by name
  std::map<std::string, Tensor> optimizer_tensors;    // OptimizerState::tensors
  std::map<std::string, double> optimizer_scalars;    // OptimizerState::scalars
  int64_t schedule_step = 0;
  std::map<std::string, uint64_t> rng_offsets;  // Philox generator offsets by name
  std::map<std::string, double> metrics;        // e.g. last loss, for the record
};

/// Writes `data` to `path` atomically: `path` either keeps its old content or gets the complete
/// new one, never a partial file. Throws (naming the path and the system error) on failure, e.g.
/// a read-only directory; the previous checkpoint is untouched then.
void save_checkpoint(const std::string& path, const CheckpointData& data);

/// Reads and verifies a checkpoint; throws naming the path and what is wrong (not a regular file,
/// bad magic, unknown version, truncated, checksum mismatch, unparsable payload, names with control
/// characters). The header is checked against the file's size before the payload is read.
CheckpointData load_checkpoint(const std::string& path);

/// Writes the concatenation of `pieces` to `path` atomically: a new temp file
/// "<path>.tmp.<pid>.<16 random hex digits>" (O_EXCL, never through a link), fsync, rename over
/// `path`, fsync of the directory. On failure throws dtrain::Error naming the path and
/// the system error, removes the temp file and leaves `path` as it was. Also used by safetensors.
void write_file_atomic(const std::string& path, const std::vector<std::string_view>& pieces);

/// Checkpoints in `dir` named ckpt-<step>.dtck, newest (highest step) first, as "<dir>/<name>".
/// Temp files and other names are ignored; a missing directory gives an empty list.
std::vector<std::string> list_checkpoints(const std::string& dir);
/// "<dir>/ckpt-<step zero-padded to 10>.dtck".
std::string checkpoint_path(const std::string& dir, int64_t step);
/// Deletes all but the newest `keep` (>= 0) checkpoints in dir.
/// Removes the temp files ("<name>.tmp.<pid>.<hex>") that a process killed while writing left in
/// `dir`: those of processes of this machine that no longer run. Returns their paths.
std::vector<std::string> remove_stale_temp_files(const std::string& dir);

/// Deletes checkpoints of `dir` older than its `keep` newest valid ones (keep >= 1; 0 deletes
/// every checkpoint). Validity is checked by loading, newest first; files that do not load are
/// left alone, and never counted, so a corrupt or foreign file can never push a valid one out.
/// Only checkpoints up to `up_to_step` (the one just written) are considered: a file of a higher
/// step (another run's, or a copy) is never counted, so it can never push that one out.
void prune_checkpoints(const std::string& dir, int keep,
                       int64_t up_to_step = std::numeric_limits<int64_t>::max());

/// The newest checkpoint in dir that loads and verifies, and that `fits` (which returns "" or why
/// the checkpoint cannot be used, e.g. for another model). Each one that does not is reported
/// through `warn` (path and reason) and skipped. nullopt when none is valid.
struct LoadedCheckpoint {
  std::string path;
  CheckpointData data;
};
std::optional<LoadedCheckpoint> load_latest_valid(
    const std::string& dir, void (*warn)(const std::string&) = nullptr,
    const std::function<std::string(const CheckpointData&)>& fits = {});

}  // namespace dtrain::train
