// Where a replica computes: train.device (cpu | cuda | auto) resolved against the GPUs this
// process sees. With several processes per machine each takes the GPUs after those of the lower
// local ranks: cuda:LOCAL_RANK for ddp, strategy.devices consecutive GPUs per process for
// mirrored. Pure logic, so the placement rules are tested on machines without a GPU.
#pragma once

#include <string>

#include "dtrain/tensor/dtype.h"

namespace dtrain::train {

struct DeviceRequest {
  std::string setting = "cpu";   // train.device
  int local_rank = 0;            // this process among those of its machine
  int replicas_per_process = 1;  // replica threads of this process
  int gpus = 0;                  // GPUs this process can use
  std::string why_no_gpu;        // when gpus == 0: built without CUDA, no driver, no device
};

/// True when `r` places replicas on GPUs: "cuda", or "auto" with a GPU present.
bool wants_cuda(const DeviceRequest& r);

/// The device of replica `replica` of this process. Throws ConfigError (exit status 2) naming the
/// reason when "cuda" cannot be honoured: no usable GPU, or fewer GPUs than local replicas.
Device replica_device(const DeviceRequest& r, int replica);

/// The request of this process from the config and the GPUs the CUDA runtime reports.
DeviceRequest device_request(const std::string& setting, int local_rank, int replicas_per_process);

}  // namespace dtrain::train
