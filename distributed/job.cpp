// dist::Job: the world communicator from the registry, replica groups, watchdogs, replica threads.
#include "dtrain/distributed/job.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <exception>
#include <sstream>
#include <thread>

#include "dtrain/distributed/backends/local/local_communicator.h"
#if defined(DTRAIN_HAS_NCCL)
#include "dtrain/distributed/backends/nccl/nccl_communicator.h"
#endif
#include "dtrain/distributed/device_routed_communicator.h"
#include "dtrain/distributed/heartbeat.h"
#include "dtrain/distributed/hierarchical_communicator.h"
#include "dtrain/distributed/registry.h"
#include "dtrain/distributed/shared_memory.h"
#include "dtrain/distributed/socket.h"
#include "dtrain/distributed/watchdog.h"
#include "dtrain/tensor/check.h"
#include "dtrain/tensor/cuda/cuda_backend.h"

namespace dtrain::dist {
namespace {

/// A progress report that the Store does not take within this long is dropped: the watchdog
/// must keep watching its collectives.
constexpr std::chrono::milliseconds kWatchdogStoreTimeout{5000};
/// A report reads everyone's progress; a Store that does not answer this fast is taken as
/// stopped (the report then says so instead of arriving after the collective's own timeout).
constexpr std::chrono::milliseconds kWatchdogReportTimeout{1000};
/// How the Store rank 0 hosts for the watchdogs of an mpirun or srun job travels: text in a
/// broadcast int64 tensor of this many words.
constexpr int64_t kOwnStoreWords = 256;
/// How long rank 0 keeps that Store up at the end for the other ranks' watchdogs to stop.
constexpr std::chrono::milliseconds kOwnStoreLinger{3000};
constexpr char kLeavingKey[] = "dtrain/job/leaving";

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

/// This machine's IPv4 addresses (up, not loopback) in interface order: where the ranks of other
/// machines may reach a server bound to all of them.
std::vector<std::string> own_addresses() {
  std::vector<std::string> out;
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) return out;
  for (ifaddrs* a = list; a; a = a->ifa_next) {
    if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET || !(a->ifa_flags & IFF_UP) ||
        (a->ifa_flags & IFF_LOOPBACK)) {
      continue;
    }
    char text[INET_ADDRSTRLEN] = {};
    const auto* in = reinterpret_cast<const sockaddr_in*>(a->ifa_addr);
    if (::inet_ntop(AF_INET, &in->sin_addr, text, sizeof text)) out.emplace_back(text);
  }
  ::freeifaddrs(list);
  return out;
}

/// Whether a client with `token` can complete its handshake with the store at host:port.
bool store_answers(const std::string& host, uint16_t port, const std::string& token) {
  StoreClientOptions o;
  o.host = host;
  o.port = port;
  o.token = token;
  o.connect_timeout = std::chrono::milliseconds(2000);
  o.request_timeout = std::chrono::milliseconds(2000);
  try {
    StoreClient probe(o);
    return true;
  } catch (const Error&) {
    return false;
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
  if (!has_own_store_) return;
  // The Store rank 0 hosts must outlive every rank's watchdog, or their last progress reports
  // fail with a warning at the end of a good run: 1. each rank stops its watchdogs and counts
  // itself out; 2. rank 0 waits (bounded) for the others before its server goes. Not while an
  // error unwinds: the ranks may not all get here, and the error must reach the top at once.
  watched_.clear();
  if (std::uncaught_exceptions() > 0) return;
  try {
    if (spec_.store_address.empty()) return;  // this rank never reached it
    const auto [host, port] = net::split_host_port(spec_.store_address, "the job's store address");
    StoreClientOptions o;
    o.host = host;
    o.port = port;
    o.token = spec_.store_token;
    // Rank 0 may be gone already: no long retries at the end of a job.
    o.connect_timeout = kWatchdogReportTimeout;
    o.request_timeout = kWatchdogReportTimeout;
    auto store = std::make_unique<StoreClient>(o);
    store->add(kLeavingKey, 1);
    if (rank() != 0) return;
    const auto deadline = std::chrono::steady_clock::now() + kOwnStoreLinger;
    while (std::chrono::steady_clock::now() < deadline) {
      const auto n = store->try_get(kLeavingKey);
      if (n && std::stoll(*n) >= world_size()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  } catch (const std::exception&) {
    // Leaving without the handshake costs at most a warning on another rank.
  }
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
  if (spec_.store_address.empty()) start_own_store(*comm);
  host_world_ = std::move(comm);
  return host_world_;
}

// 1. Rank 0 starts a Store server with a fresh random token: on 127.0.0.1 when the whole job is
//    on its machine, else on every address. 2. It broadcasts "<host identity>\t<port>\t<token>\t
//    <its addresses>" (the token travels only inside the job's own communicator, never on a
//    command line or in the environment). 3. Every rank picks the first address that answers:
//    127.0.0.1 first on rank 0's machine. The Store only serves the watchdogs: a rank that
//    reaches none goes on without it.
void Job::start_own_store(HostCommunicator& comm) {
  Tensor message = zeros({kOwnStoreWords}, DType::kInt64);
  char* bytes = static_cast<char*>(message.data_ptr());
  const size_t capacity = kOwnStoreWords * sizeof(int64_t) - 1;
  if (comm.rank() == 0) {
    const bool one_machine = spec_.world.local_size == spec_.world.size;
    StoreServerOptions so;
    so.bind_address = one_machine ? "127.0.0.1" : "0.0.0.0";
    so.max_clients = store_max_clients(spec_.world.size);
    so.token = net::random_hex(16, "the token of the watchdogs' store");
    std::string text;
    try {
      own_store_ = std::make_unique<StoreServer>(so);
      text = host_identity() + "\t" + std::to_string(own_store_->port()) + "\t" + so.token + "\t";
      if (!one_machine) {
        // As many as fit: the first interfaces are the likeliest to be reachable.
        for (const std::string& a : own_addresses()) {
          if (text.size() + a.size() + 1 > capacity) break;
          text += a + ",";
        }
      }
    } catch (const Error& e) {
      std::fprintf(stderr, "warning: rank 0 cannot host a store for the watchdogs: %s\n",
                   e.message().c_str());
      text.clear();  // the others learn that there is none
    }
    // Never throw before the broadcast: the other ranks would wait in it until the timeout.
    std::memcpy(bytes, text.data(), std::min(text.size(), capacity));
  }
  BroadcastOptions o;
  o.root = 0;
  o.timeout = spec_.timeout;
  comm.broadcast(message, o)->wait(o.timeout + std::chrono::seconds(5));
  bytes[capacity] = '\0';
  std::vector<std::string> fields;
  {
    std::istringstream in{std::string(bytes)};
    for (std::string f; std::getline(in, f, '\t');) fields.push_back(f);
  }
  if (fields.size() < 3) return;  // rank 0 hosts none
  has_own_store_ = true;
  const uint16_t port = static_cast<uint16_t>(std::stoi(fields[1]));
  std::vector<std::string> candidates;
  if (fields[0] == host_identity()) candidates.push_back("127.0.0.1");
  if (fields.size() > 3) {
    std::istringstream in(fields[3]);
    for (std::string a; std::getline(in, a, ',');) {
      if (!a.empty()) candidates.push_back(a);
    }
  }
  if (comm.rank() == 0) candidates.insert(candidates.begin(), "127.0.0.1");
  for (const std::string& host : candidates) {
    if (comm.rank() == 0 || store_answers(host, port, fields[2])) {
      spec_.store_address = net::host_port(host, port);
      spec_.store_token = fields[2];
      return;
    }
  }
  std::fprintf(stderr,
               "warning: rank %d cannot reach the store rank 0 hosts for the watchdogs (port %u "
               "on %s); a hang report on this rank will know only its own progress\n",
               comm.rank(), static_cast<unsigned>(port),
               candidates.empty() ? "no address" : fields[3].c_str());
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

std::vector<CommunicatorPtr> Job::replica_communicators(const std::vector<Device>& devices,
                                                        bool span_processes) {
  check_replica_devices(devices);
  const int n = static_cast<int>(devices.size());
  auto local = make_local_group(n);
  replica_group_ = std::static_pointer_cast<LocalCommunicator>(local[0])->group_ptr();
  std::vector<CommunicatorPtr> out(local.begin(), local.end());
  if (devices[0].is_cpu()) return out;
  std::vector<int> ids;
  for (const Device& d : devices) ids.push_back(d.index);
#if defined(DTRAIN_HAS_NCCL)
  if (span_processes) {
    std::shared_ptr<HostCommunicator> cross = host_world();
    auto nccl = NcclCommunicator::create_across_processes(*cross, ids, spec_.timeout);
    for (int r = 0; r < n; ++r) {
      auto host = std::make_shared<HierarchicalCommunicator>(local[r], r == 0 ? cross : nullptr,
                                                             rank(), world_size());
      watch(host, /*publish=*/true);
      out[r] = std::make_shared<DeviceRoutedCommunicator>(host, nccl[r]);
    }
    return out;
  }
#endif
  DTRAIN_CHECK(!span_processes, "replicas on GPUs across processes need the nccl backend");
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
  // The watchdog publishes progress to the job's Store (the launcher's, the `cluster:` rank 0's,
  // or under mpirun and srun the one rank 0 started in host_world()) and its report names the
  // ranks that did not arrive. It gives up a little before the collectives' own timeout, so that
  // its report, not their anonymous timeout error, ends the job.
  WatchdogOptions w;
  w.key_prefix += std::to_string(spec_.restart_count) + "/";
  w.timeout = watchdog_timeout(spec_.timeout);
  w.stall_warning = spec_.stall_warning;
  if (has_own_store_ || spec_.world.source == "cluster") w.store_host_rank = 0;
  auto dog = std::make_unique<Watchdog>(
      comm->rank(), comm->size(), w, publish ? store_client(kWatchdogStoreTimeout) : nullptr,
      nullptr, nullptr, publish ? store_client(kWatchdogReportTimeout) : nullptr);
  comm->add_observer(dog.get());
  watched_.emplace_back(comm, std::move(dog));
}

}  // namespace dtrain::dist
