// MirroredStrategy: replica threads over a local group, or over NCCL and a local group on GPUs.
#include "strategies/mirrored.h"

#include <algorithm>
#include <exception>

#include "distributed/backends/local/local_communicator.h"
#include "distributed/backends/nccl/nccl_communicator.h"
#include "distributed/device_routed_communicator.h"
#include "tensor/cuda/cuda_backend.h"

namespace dtrain {

namespace {

std::vector<Device> cpu_devices(int replicas) {
  DTRAIN_CHECK(replicas >= 1, "MirroredStrategy: replicas must be >= 1; got ", replicas);
  return std::vector<Device>(static_cast<size_t>(replicas), Device::cpu());
}

std::string device_list(const std::vector<Device>& devices) {
  std::string out;
  for (const Device& d : devices) {
    if (!out.empty()) out += ", ";
    out += d.str();
  }
  return out;
}

/// Throws unless the devices are all cpu, or distinct GPUs this process can use with NCCL.
void check_devices(const std::vector<Device>& devices) {
  DTRAIN_CHECK(!devices.empty(), "MirroredStrategy: needs at least one device");
  const bool gpus = devices[0].is_cuda();
  for (size_t i = 0; i < devices.size(); ++i) {
    if (devices[i].is_cuda() != gpus) {
      DTRAIN_THROW(ValueError, "MirroredStrategy: devices ", device_list(devices),
                   " mix cpu and cuda; give all cpu (replica threads) or one GPU per replica");
    }
    for (size_t j = 0; gpus && j < i; ++j) {
      if (devices[j] == devices[i]) {
        DTRAIN_THROW(ValueError, "MirroredStrategy: devices ", device_list(devices), " name ",
                     devices[i].str(), " twice; NCCL needs a distinct GPU per replica");
      }
    }
  }
  if (!gpus) return;
#if !defined(DTRAIN_HAS_NCCL)
  DTRAIN_THROW(UnsupportedError, "MirroredStrategy on ", device_list(devices),
               ": this dtrain was built without NCCL (configure with CUDA and NCCL present)");
#endif
  if (!cuda::available()) {
    DTRAIN_THROW(UnsupportedError, "MirroredStrategy on ", device_list(devices),
                 ": no usable GPU (", cuda::unavailable_reason(), ")");
  }
  for (const Device& d : devices) {
    if (d.index >= cuda::device_count()) {
      DTRAIN_THROW(ValueError, "MirroredStrategy: ", d.str(), " does not exist; this machine has ",
                   cuda::device_count(), " GPU(s)");
    }
  }
}

/// One communicator per replica: the local group on the CPU; on GPUs NCCL for device tensors
/// and the local group for DDP's host-side checks.
std::vector<dist::CommunicatorPtr> replica_communicators(const std::vector<Device>& devices) {
  const int n = static_cast<int>(devices.size());
  auto local = dist::make_local_group(n);
  std::vector<dist::CommunicatorPtr> comms(local.begin(), local.end());
  if (devices[0].is_cpu()) return comms;
#if defined(DTRAIN_HAS_NCCL)
  std::vector<int> ids;
  for (const Device& d : devices) ids.push_back(d.index);
  auto nccl = dist::NcclCommunicator::create_local(ids);
  for (int r = 0; r < n; ++r) {
    comms[r] = std::make_shared<dist::DeviceRoutedCommunicator>(comms[r], nccl[r]);
  }
#endif
  return comms;
}

}  // namespace

MirroredStrategy::MirroredStrategy(nn::Module& model, int replicas, DdpOptions options)
    : MirroredStrategy(model, cpu_devices(replicas), options) {}

MirroredStrategy::MirroredStrategy(nn::Module& model, const std::vector<Device>& devices,
                                   DdpOptions options)
    : devices_(devices) {
  check_devices(devices_);
  const int replicas = static_cast<int>(devices_.size());
  model.to(devices_[0]);
  models_.push_back(&model);
  for (int r = 1; r < replicas; ++r) {
    clones_.push_back(model.clone(devices_[r]));
    models_.push_back(clones_.back().get());
  }
  // Constructing DistributedDataParallel is collective: every replica's on its own thread.
  auto comms = replica_communicators(devices_);
  ddps_.resize(replicas);
  std::vector<std::exception_ptr> errors(replicas);
  std::vector<std::thread> threads;
  for (int r = 0; r < replicas; ++r) {
    threads.emplace_back([&, r] {
      try {
        ddps_[r] = std::make_unique<DistributedDataParallel>(*models_[r], comms[r], options);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

MirroredStrategy::~MirroredStrategy() = default;

void MirroredStrategy::run_each(const std::function<void(ReplicaContext&)>& step_fn) {
  const int n = num_replicas_in_sync();
  std::vector<std::exception_ptr> errors(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      ReplicaContext ctx{r, n, devices_[r], *models_[r], *ddps_[r]};
      try {
        step_fn(ctx);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
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
