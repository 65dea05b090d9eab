#include "dtrain/train/device.h"

#include "dtrain/tensor/check.h"
#include "dtrain/tensor/cuda/cuda_backend.h"
#include "dtrain/train/config.h"

namespace dtrain::train {

bool wants_cuda(const DeviceRequest& r) {
  return r.setting == "cuda" || (r.setting == "auto" && r.gpus > 0);
}

Device replica_device(const DeviceRequest& r, int replica) {
  if (!wants_cuda(r)) return Device::cpu();
  if (r.gpus <= 0) {
    throw ConfigError("train.device: cuda, but no GPU can be used here: " +
                          (r.why_no_gpu.empty() ? std::string("no device") : r.why_no_gpu) +
                          "; use train.device=cpu (or auto, which takes a GPU only when one is "
                          "present)",
                      __FILE__, __LINE__);
  }
  const int index = r.local_rank * r.replicas_per_process + replica;
  if (index >= r.gpus) {
    throw ConfigError(
        "train.device: cuda: local rank " + std::to_string(r.local_rank) + ", replica " +
            std::to_string(replica) + " needs GPU " + std::to_string(index) +
            ", but this machine has " + std::to_string(r.gpus) + " GPU(s); start at most " +
            std::to_string(r.gpus / r.replicas_per_process) + " process(es) per machine with " +
            std::to_string(r.replicas_per_process) +
            " replica(s) each, or set CUDA_VISIBLE_DEVICES",
        __FILE__, __LINE__);
  }
  return Device::cuda(index);
}

DeviceRequest device_request(const std::string& setting, int local_rank, int replicas_per_process) {
  DeviceRequest r;
  r.setting = setting;
  r.local_rank = local_rank;
  r.replicas_per_process = replicas_per_process;
  if (setting != "cpu") {  // a cpu run never touches the CUDA runtime
    r.gpus = cuda::available() ? cuda::device_count() : 0;
    if (r.gpus == 0) r.why_no_gpu = cuda::unavailable_reason();
  }
  return r;
}

}  // namespace dtrain::train
