// The backend registry. Explicit on purpose: a static library drops self-registering objects
// that nothing references, so each backend is one line here instead.
#include "dtrain/distributed/registry.h"

#include <algorithm>
#include <sstream>

#include "dtrain/distributed/backends/tcp/tcp_communicator.h"
#include "dtrain/tensor/check.h"
#include "dtrain/tensor/cuda/cuda_backend.h"

#ifdef DTRAIN_HAS_MPI
#include "dtrain/distributed/backends/mpi/mpi_communicator.h"
#endif
#if defined(DTRAIN_HAS_NCCL)
#include "dtrain/distributed/backends/nccl/nccl_communicator.h"
#endif

namespace dtrain::dist {
namespace {

std::string joined(const std::vector<std::string>& names) {
  std::ostringstream os;
  for (size_t i = 0; i < names.size(); ++i) os << (i ? ", " : "") << names[i];
  return os.str();
}

/// A new world group over tcp: the job's Store, one key prefix per group and restart.
std::shared_ptr<HostCommunicator> make_tcp_world(const JobSpec& spec,
                                                 std::shared_ptr<StoreClient> store) {
  if (!store) {
    DTRAIN_THROW(UnsupportedError,
                 "backend 'tcp' finds its peers through the job's Store, and this job has none "
                 "(DTRAIN_STORE_ADDR is not set); start the job with dtrain launch or a cluster "
                 "section, or use strategy.backend=mpi under mpirun or srun");
  }
  // Ranks create their groups in the same order, so counting them in the Store per rank gives
  // every rank the same group number, whether the ranks are processes or threads of one.
  const std::string restart = "dtrain/tcp/" + std::to_string(spec.restart_count) + "/";
  const int64_t group =
      store->add(restart + "groups_of_rank/" + std::to_string(spec.world.rank), 1) - 1;
  TcpOptions options;
  options.key_prefix = restart + std::to_string(group) + "/";
  return std::make_shared<TcpCommunicator>(std::move(store), spec.world.rank, spec.world.size,
                                           options);
}

std::string not_in_build(std::string_view backend) {
  std::ostringstream os;
  os << "backend '" << backend << "' is not available in this build";
  if (backend == "mpi") {
    os << ": this build has no MPI; rebuild with MPI (install libopenmpi-dev, -DDTRAIN_MPI=ON)"
       << " or use one of " << joined(available_backends());
    return os.str();
  }
  if (backend == "nccl") {
#ifdef DTRAIN_HAS_CUDA
    os << ": this build has CUDA but no NCCL; install NCCL and rebuild (-DDTRAIN_CUDA=ON)";
#else
    os << ": this build has no CUDA; rebuild with CUDA and NCCL installed (-DDTRAIN_CUDA=ON)";
#endif
    os << " or use one of " << joined(available_backends());
    return os.str();
  }
  os << "; available: " << joined(available_backends());
  return os.str();
}

}  // namespace

std::vector<std::string> known_backends() { return {"local", "tcp", "mpi", "nccl"}; }

bool built_with(std::string_view backend) {
  const auto names = available_backends();
  return std::find(names.begin(), names.end(), backend) != names.end();
}

std::vector<std::string> available_backends() {
  std::vector<std::string> names = {"local", "tcp"};
#ifdef DTRAIN_HAS_MPI
  names.push_back("mpi");
#endif
#ifdef DTRAIN_HAS_NCCL
  names.push_back("nccl");
#endif
  return names;
}

bool is_device_backend(std::string_view backend) { return backend == "nccl"; }

std::string backend_unavailable_reason(std::string_view backend) {
  if (backend == "auto") return "";
  if (!built_with(backend)) return not_in_build(backend);
  if (is_device_backend(backend) && !cuda::available()) {
    return "backend '" + std::string(backend) + "' needs a GPU: " + cuda::unavailable_reason();
  }
  return "";
}

std::shared_ptr<HostCommunicator> create_world_communicator(std::string_view backend,
                                                            const JobSpec& spec,
                                                            std::shared_ptr<StoreClient> store) {
  if (backend == "local") {
    DTRAIN_THROW(UnsupportedError,
                 "backend 'local' runs its ranks as threads of one process and has no world of "
                 "processes to join; create its communicators with make_local_group(size)");
  }
  if (backend == "tcp") return make_tcp_world(spec, std::move(store));
#ifdef DTRAIN_HAS_MPI
  if (backend == "mpi") return MpiCommunicator::world();
#endif
  if (is_device_backend(backend) && built_with(backend)) {
    DTRAIN_THROW(UnsupportedError, "backend '", backend,
                 "' carries device tensors only; create it with create_device_communicator over "
                 "a host communicator");
  }
  DTRAIN_THROW(UnsupportedError, "communicator ", not_in_build(backend));
}

CommunicatorPtr create_device_communicator(std::string_view backend, Communicator& host, int device,
                                           Timeout init_timeout) {
  if (const std::string why = backend_unavailable_reason(backend); !why.empty()) {
    DTRAIN_THROW(UnsupportedError, why);
  }
#if defined(DTRAIN_HAS_NCCL)
  if (backend == "nccl") return NcclCommunicator::create(host, device, init_timeout);
#endif
  (void)host;
  (void)device;
  (void)init_timeout;
  DTRAIN_THROW(UnsupportedError, "backend '", backend, "' is not a device backend");
}

Device device_for_local_rank(const WorldInfo& world, int gpus) {
  if (gpus <= 0) {
    DTRAIN_THROW(UnsupportedError, world.describe(),
                 ": one process per GPU needs a GPU, and this machine has none usable (",
                 cuda::unavailable_reason(), ")");
  }
  const int local_ranks = std::max(world.local_size, world.local_rank + 1);
  if (local_ranks > gpus) {
    std::ostringstream without;  // the local ranks left without a GPU of their own
    for (int r = gpus; r < local_ranks && r < gpus + 8; ++r) without << (r > gpus ? ", " : "") << r;
    if (local_ranks > gpus + 8) without << ", ... " << local_ranks - 1;
    DTRAIN_THROW(ValueError, world.describe(), ": this machine runs ", local_ranks,
                 " local ranks but has ", gpus, " GPU", gpus == 1 ? "" : "s", ", so local ranks ",
                 without.str(),
                 " would share a GPU with another rank, which NCCL refuses; start at most ", gpus,
                 " process", gpus == 1 ? "" : "es", " per machine (dtrain launch --nproc-per-node ",
                 gpus, ", mpirun --npernode ", gpus, ", srun --ntasks-per-node ", gpus, ")");
  }
  return Device::cuda(world.local_rank);
}

std::vector<CommunicatorPtr> create_local_device_communicators(std::string_view backend,
                                                               const std::vector<int>& devices) {
  if (const std::string why = backend_unavailable_reason(backend); !why.empty()) {
    DTRAIN_THROW(UnsupportedError, why);
  }
#if defined(DTRAIN_HAS_NCCL)
  if (backend == "nccl") {
    auto comms = NcclCommunicator::create_local(devices);
    return {comms.begin(), comms.end()};
  }
#endif
  (void)devices;
  DTRAIN_THROW(UnsupportedError, "backend '", backend, "' is not a device backend");
}

}  // namespace dtrain::dist
