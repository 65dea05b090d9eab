// dist::Job: the world communicator from the registry, replica groups, watchdogs, replica threads.
#include "dtrain/distributed/job.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <thread>

#include "dtrain/distributed/backends/local/local_communicator.h"
#include "dtrain/distributed/device_routed_communicator.h"
#include "dtrain/distributed/heartbeat.h"
#include "dtrain/distributed/hierarchical_communicator.h"
#include "dtrain/distributed/registry.h"
#include "dtrain/distributed/socket.h"
#include "dtrain/distributed/watchdog.h"
#include "dtrain/tensor/check.h"
#include "dtrain/tensor/cuda/cuda_backend.h"

namespace dtrain::dist {
namespace {

/// A progress report that the Store does not take within this long is dropped: the watchdog
/// must keep watching its collectives.
constexpr std::chrono::milliseconds kWatchdogStoreTimeout{5000};

/// The host backend "auto" means for this job.
std::string auto_host_backend(const JobSpec& spec) {
  if (spec.world.size == 1) return "local";
  return spec.world.source == "dtrain" || spec.world.source == "cluster" ? "tcp" : "mpi";
}

/// The first collective of a job, before any training: every rank adds 1, so a wrong world
/// size, a rank missing or a network that drops data shows here with the ranks at fault.
void preflight_all_reduce(HostCommunicator& comm, const WorldInfo& world, Timeout timeout) {
  Tensor one({1}, DType::kInt64);
  *static_cast<int64_t*>(one.data_ptr()) = 1;
  AllReduceOptions o;
  o.timeout = timeout;
  comm.all_reduce(one, o)->wait(o.timeout + std::chrono::seconds(5));
  const int64_t got = *static_cast<int64_t*>(one.data_ptr());
  if (got != world.size) {
    DTRAIN_THROW(DistError, "pre-flight all-reduce over the ", comm.backend_name(),
                 " backend: ", world.describe(), " counted ", got, " ranks instead of ", world.size,
                 "; do all ranks see the same world size?");
  }
}

std::string device_list(const std::vector<Device>& devices) {
  std::string out;
  for (const Device& d : devices) out += (out.empty() ? "" : ", ") + d.str();
  return out;
}

/// Throws unless the devices are all cpu, or distinct GPUs this process can use with NCCL.
void check_replica_devices(const std::vector<Device>& devices) {
  DTRAIN_CHECK(!devices.empty(), "replica devices: needs at least one device");
  const bool gpus = devices[0].is_cuda();
  for (size_t i = 0; i < devices.size(); ++i) {
    if (devices[i].is_cuda() != gpus) {
      DTRAIN_THROW(ValueError, "replica devices ", device_list(devices),
                   " mix cpu and cuda; give all cpu (replica threads) or one GPU per replica");
    }
    for (size_t j = 0; gpus && j < i; ++j) {
      if (devices[j] == devices[i]) {
        DTRAIN_THROW(ValueError, "replica devices ", device_list(devices), " name ",
                     devices[i].str(), " twice; NCCL needs a distinct GPU per replica");
      }
    }
  }
  if (!gpus) return;
  if (const std::string why = backend_unavailable_reason("nccl"); !why.empty()) {
    DTRAIN_THROW(UnsupportedError, "replicas on ", device_list(devices), ": ", why);
  }
  for (const Device& d : devices) {
    if (d.index >= cuda::device_count()) {
      DTRAIN_THROW(ValueError, "replica device ", d.str(), " does not exist; this machine has ",
                   cuda::device_count(), " GPU(s)");
    }
  }
}

}  // namespace

Job::Job(JobSpec spec) : spec_(std::move(spec)) {
  const auto names = available_backends();
  if (spec_.backend != "auto" &&
      std::find(names.begin(), names.end(), spec_.backend) == names.end()) {
    DTRAIN_THROW(UnsupportedError, backend_unavailable_reason(spec_.backend));
  }
  heartbeat_ = std::make_unique<WorkerHeartbeat>();
}

Job Job::from_env(std::string_view backend) {
  JobSpec spec = job_spec_from_env();
  spec.backend = std::string(backend);
  return Job(std::move(spec));
}

Job::~Job() {
  // Nothing may call a watchdog once it is gone.
  for (auto& [comm, dog] : watched_) comm->remove_observer(dog.get());
}

Job::Job(Job&&) noexcept = default;

std::string Job::backend() const {
  return spec_.backend == "auto" ? auto_host_backend(spec_) : spec_.backend;
}

Device Job::device() const {
  if (!is_device_backend(backend())) return Device::cpu();
  return device_for_local_rank(spec_.world, cuda::device_count());
}

std::shared_ptr<StoreClient> Job::store_client() const {
  return store_client(StoreClientOptions{}.request_timeout);
}

std::shared_ptr<StoreClient> Job::store_client(std::chrono::milliseconds request_timeout) const {
  if (spec_.store_address.empty()) return nullptr;
  const auto [host, port] = net::split_host_port(spec_.store_address, "the job's store address");
  StoreClientOptions o;
  o.host = host;
  o.port = port;
  o.token = spec_.store_token;
  o.connect_timeout = std::chrono::seconds(60);
  o.request_timeout = request_timeout;
  return std::make_shared<StoreClient>(o);
}

std::shared_ptr<HostCommunicator> Job::host_world() {
  if (host_world_) return host_world_;
  const std::string chosen = is_device_backend(backend()) ? auto_host_backend(spec_) : backend();
  if (spec_.world.size == 1 && chosen == "local") {
    host_world_ = make_local_group(1)[0];
    return host_world_;
  }
  auto comm = create_world_communicator(chosen, spec_, store_client());
  if (comm->rank() != spec_.world.rank || comm->size() != spec_.world.size) {
    DTRAIN_THROW(ValueError, "job: the environment says ", spec_.world.describe(), " but the ",
                 chosen, " backend has rank ", comm->rank(), " of ", comm->size(),
                 "; check the launcher's environment variables");
  }
  preflight_all_reduce(*comm, spec_.world, spec_.timeout);
  host_world_ = std::move(comm);
  return host_world_;
}

CommunicatorPtr Job::make_world() {
  if (world_) return world_;
  const std::string name = backend();
  if (const std::string why = backend_unavailable_reason(name); !why.empty()) {
    DTRAIN_THROW(UnsupportedError, why);
  }
  std::shared_ptr<HostCommunicator> host = host_world();
  if (is_device_backend(name)) {
    // Host tensors (DDP's checks, metrics) stay on the host backend; device tensors use NCCL.
    // The process's GPU becomes current first: otherwise this thread's first CUDA call creates a
    // context on GPU 0, in every rank of the machine.
    const Device gpu_device = device();
    cuda::set_device(gpu_device.index);
    CommunicatorPtr gpu = create_device_communicator(name, *host, gpu_device.index, spec_.timeout);
    world_ = std::make_shared<DeviceRoutedCommunicator>(host, gpu);
  } else {
    world_ = host;
  }
  return world_;
}

CommunicatorPtr Job::world() {
  CommunicatorPtr world = make_world();
  watch(host_world(), /*publish=*/true);
  return world;
}

std::vector<CommunicatorPtr> Job::replica_communicators(int n, bool span_processes) {
  DTRAIN_CHECK(n >= 1, "replicas per process must be >= 1; got ", n);
  if (n == 1 && span_processes) return {world()};
  auto local = make_local_group(n);
  replica_group_ = std::static_pointer_cast<LocalCommunicator>(local[0])->group_ptr();
  std::vector<CommunicatorPtr> out;
  if (!span_processes) {
    for (auto& c : local) {
      // Threads of this process only: their progress stays here (every process would use the
      // same ranks in the Store).
      watch(c, /*publish=*/false);
      out.push_back(c);
    }
    return out;
  }
  // Replica threads in every process: the local group reduces first, and local replica 0
  // carries the process's part across processes.
  CommunicatorPtr cross = make_world();
  for (int r = 0; r < n; ++r) {
    auto comm = std::make_shared<HierarchicalCommunicator>(local[r], r == 0 ? cross : nullptr,
                                                           rank(), world_size());
    watch(comm, /*publish=*/true);
    out.push_back(comm);
  }
  return out;
}

std::vector<CommunicatorPtr> Job::replica_communicators(const std::vector<Device>& devices) {
  check_replica_devices(devices);
  const int n = static_cast<int>(devices.size());
  auto local = make_local_group(n);
  replica_group_ = std::static_pointer_cast<LocalCommunicator>(local[0])->group_ptr();
  std::vector<CommunicatorPtr> out(local.begin(), local.end());
  if (devices[0].is_cpu()) return out;
  std::vector<int> ids;
  for (const Device& d : devices) ids.push_back(d.index);
  auto nccl = create_local_device_communicators("nccl", ids);
  for (int r = 0; r < n; ++r) out[r] = std::make_shared<DeviceRoutedCommunicator>(out[r], nccl[r]);
  return out;
}

void Job::run_replicas(int n, const std::function<void(int)>& fn) {
  DTRAIN_CHECK(n >= 1, "run_replicas: needs at least one replica; got ", n);
  if (n == 1) {
    fn(0);
    return;
  }
  std::vector<std::exception_ptr> errors(n);
  std::atomic<int> first_failure{-1};
  std::shared_ptr<LocalGroup> group = replica_group_;
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(r);
      } catch (...) {
        errors[r] = std::current_exception();
        int none = -1;
        if (first_failure.compare_exchange_strong(none, r) && group) {
          // The others would wait for this replica in their next collective until the timeout.
          group->abort("replica " + std::to_string(r) + " of this process failed");
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  if (first_failure >= 0) std::rethrow_exception(errors[first_failure]);
}

void Job::watch(const CommunicatorPtr& comm, bool publish) {
  if (!comm->observes_collectives()) return;  // nccl: its collectives run on the GPU
  for (const auto& [c, dog] : watched_) {
    if (c == comm) return;
  }
  // Under dtrain launch the watchdog publishes progress to the job's Store and its report names
  // the ranks that did not arrive. Without a Store (plain mpirun) the report covers this rank's
  // own progress; the timeout still turns a hang into a non-zero exit.
  WatchdogOptions w;
  w.key_prefix += std::to_string(spec_.restart_count) + "/";
  w.timeout = spec_.timeout;
  w.stall_warning = spec_.stall_warning;
  auto dog = std::make_unique<Watchdog>(comm->rank(), comm->size(), w,
                                        publish ? store_client(kWatchdogStoreTimeout) : nullptr);
  comm->add_observer(dog.get());
  watched_.emplace_back(comm, std::move(dog));
}

}  // namespace dtrain::dist
