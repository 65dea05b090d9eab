// MirroredStrategy: DistributedDataParallel per replica over the communicators a one-process job
// gives its replica threads; the job runs the threads.
#include "dtrain/strategies/mirrored.h"

#include <algorithm>

#include "dtrain/tensor/cuda/cuda_backend.h"

namespace dtrain {

namespace {

/// Replica threads are new on every run_replicas: each makes its GPU current before any CUDA call,
/// so its copies and launches come from that GPU's context, not GPU 0's.
void use_device(const Device& device) {
  if (device.is_cuda()) cuda::set_device(device.index);
}

std::vector<Device> cpu_devices(int replicas) {
  DTRAIN_CHECK(replicas >= 1, "MirroredStrategy: replicas must be >= 1; got ", replicas);
  return std::vector<Device>(static_cast<size_t>(replicas), Device::cpu());
}

}  // namespace

MirroredStrategy::MirroredStrategy(nn::Module& model, int replicas, DdpOptions options)
    : MirroredStrategy(model, cpu_devices(replicas), options) {}

MirroredStrategy::MirroredStrategy(nn::Module& model, const std::vector<Device>& devices,
                                   DdpOptions options)
    : devices_(devices) {
  // The devices are checked before the model moves.
  std::vector<dist::CommunicatorPtr> comms = job_.replica_communicators(devices_);
  const int replicas = static_cast<int>(devices_.size());
  model.to(devices_[0]);
  models_.push_back(&model);
  for (int r = 1; r < replicas; ++r) {
    clones_.push_back(model.clone(devices_[r]));
    models_.push_back(clones_.back().get());
  }
  // Constructing DistributedDataParallel is collective: every replica's on its own thread.
  ddps_.resize(replicas);
  job_.run_replicas(replicas, [&](int r) {
    use_device(devices_[r]);
    ddps_[r] = std::make_unique<DistributedDataParallel>(*models_[r], comms[r], options);
  });
}

MirroredStrategy::~MirroredStrategy() = default;

void MirroredStrategy::run_each(const std::function<void(ReplicaContext&)>& step_fn) {
  const int n = num_replicas_in_sync();
  job_.run_replicas(n, [&](int r) {
    use_device(devices_[r]);
    ReplicaContext ctx{r, n, devices_[r], *models_[r], *ddps_[r]};
    step_fn(ctx);
  });
}

double MirroredStrategy::reduce(dist::ReduceOp op, const std::vector<double>& v) {
  DTRAIN_CHECK(!v.empty(), "MirroredStrategy::reduce: no values");
  double acc = v[0];
  for (size_t i = 1; i < v.size(); ++i) {
    switch (op) {
      case dist::ReduceOp::kSum:
      case dist::ReduceOp::kAvg:
        acc += v[i];
        break;
      case dist::ReduceOp::kMin:
        acc = std::min(acc, v[i]);
        break;
      case dist::ReduceOp::kMax:
        acc = std::max(acc, v[i]);
        break;
      case dist::ReduceOp::kProduct:
        acc *= v[i];
        break;
    }
  }
  return op == dist::ReduceOp::kAvg ? acc / static_cast<double>(v.size()) : acc;
}

}  // namespace dtrain
