// The backend registry. Explicit on purpose: a static library drops self-registering objects
// that nothing references, so each backend is one line here instead.
#include "distributed/registry.h"

#include <atomic>
#include <cstdlib>
#include <sstream>

#include "distributed/backends/local/local_communicator.h"
#include "distributed/backends/tcp/tcp_communicator.h"
#include "distributed/device_routed_communicator.h"
#include "distributed/environment.h"
#include "distributed/socket.h"
#include "tensor/check.h"
#include "tensor/cuda/cuda_backend.h"

#ifdef DTRAIN_HAS_MPI
#include "distributed/backends/mpi/mpi_communicator.h"
#endif
#if defined(DTRAIN_HAS_NCCL)
#include "distributed/backends/nccl/nccl_communicator.h"
#endif

namespace dtrain::dist {
namespace {

std::string joined(const std::vector<std::string>& names) {
  std::ostringstream os;
  for (size_t i = 0; i < names.size(); ++i) os << (i ? ", " : "") << names[i];
  return os.str();
}

const char* env_or_empty(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

/// A new world group over tcp: the launcher's Store, one key prefix per group and restart.
std::shared_ptr<AsyncCommunicator> make_tcp_world() {
  auto store = job_store();
  if (!store) {
    DTRAIN_THROW(UnsupportedError,
                 "backend 'tcp' finds its peers through the Store of `dtrain launch`, and "
                 "DTRAIN_STORE_ADDR is not set; start the job with dtrain launch, or use "
                 "strategy.backend=mpi under mpirun or srun");
  }
  const WorldInfo world = detect_world();
  static std::atomic<int> groups{0};  // created in the same order on every rank
  TcpOptions options;
  options.key_prefix = std::string("dtrain/tcp/") + env_or_empty("DTRAIN_RESTART_COUNT") + "/" +
                       std::to_string(groups++) + "/";
  return std::make_shared<TcpCommunicator>(std::move(store), world.rank, world.size, options);
}

/// The first collective of a job, before any training: every rank adds 1, so a wrong world
/// size, a rank missing or a network that drops data shows here with the ranks at fault.
void preflight_all_reduce(AsyncCommunicator& comm, const WorldInfo& world) {
  Tensor one({1}, DType::kInt64);
  *static_cast<int64_t*>(one.data_ptr()) = 1;
  AllReduceOptions o;
  o.timeout = std::chrono::seconds(300);
  comm.all_reduce(one, o)->wait(o.timeout + std::chrono::seconds(5));
  const int64_t got = *static_cast<int64_t*>(one.data_ptr());
  if (got != world.size) {
    DTRAIN_THROW(DistError, "pre-flight all-reduce over the ", comm.backend_name(),
                 " backend: ", world.describe(), " counted ", got, " ranks instead of ", world.size,
                 "; do all ranks see the same world size?");
  }
}

}  // namespace

std::shared_ptr<StoreClient> job_store() {
  const std::string address = env_or_empty("DTRAIN_STORE_ADDR");
  if (address.empty()) return nullptr;
  const auto [host, port] = net::split_host_port(address, "DTRAIN_STORE_ADDR");
  StoreClientOptions o;
  o.host = host;
  o.port = port;
  o.connect_timeout = std::chrono::seconds(60);
  return std::make_shared<StoreClient>(o);
}

std::vector<std::string> available_backends() {
  std::vector<std::string> names = {"local", "tcp"};
#ifdef DTRAIN_HAS_MPI
  names.push_back("mpi");
#endif
  return names;
}

std::shared_ptr<AsyncCommunicator> create_world_communicator(std::string_view backend) {
  if (backend == "local") {
    DTRAIN_THROW(UnsupportedError,
                 "backend 'local' runs its ranks as threads of one process and has no world of "
                 "processes to join; create its communicators with make_local_group(size)");
  }
  if (backend == "tcp") return make_tcp_world();
#ifdef DTRAIN_HAS_MPI
  if (backend == "mpi") return MpiCommunicator::world();
#endif
  DTRAIN_THROW(
      UnsupportedError, "communicator backend '", backend,
      "' is not available in this build; available: ", joined(available_backends()),
      backend == "mpi" ? " (rebuild with MPI: install libopenmpi-dev, -DDTRAIN_MPI=ON)" : "");
}

GpuJob init_gpu_job_from_env(std::string_view backend) {
#if !defined(DTRAIN_HAS_NCCL)
  (void)backend;
  DTRAIN_THROW(UnsupportedError,
               "a GPU job needs the nccl backend; this dtrain was built without it (configure "
               "with CUDA and NCCL present)");
#else
  if (!cuda::available()) {
    DTRAIN_THROW(UnsupportedError, "a GPU job needs a GPU: ", cuda::unavailable_reason());
  }
  const WorldInfo world = detect_world();
  const Device device = Device::cuda(world.local_rank % cuda::device_count());
  std::shared_ptr<AsyncCommunicator> host = init_from_env(backend);
  auto gpu = NcclCommunicator::create(*host, device.index);
  return {std::make_shared<DeviceRoutedCommunicator>(host, gpu), device};
#endif
}

std::shared_ptr<AsyncCommunicator> init_from_env(std::string_view backend) {
  const WorldInfo world = detect_world();
  if (world.size == 1 && (backend == "auto" || backend == "local")) return make_local_group(1)[0];
  std::string chosen(backend);
  if (backend == "auto") chosen = world.source == "dtrain" ? "tcp" : "mpi";
  std::shared_ptr<AsyncCommunicator> comm = create_world_communicator(chosen);
  if (comm->rank() != world.rank || comm->size() != world.size) {
    DTRAIN_THROW(ValueError, "init_from_env: the environment says ", world.describe(), " but the ",
                 chosen, " backend has rank ", comm->rank(), " of ", comm->size(),
                 "; check the launcher's environment variables");
  }
  preflight_all_reduce(*comm, world);
  return comm;
}

}  // namespace dtrain::dist
