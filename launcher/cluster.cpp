// ClusterJob: the job a `cluster:` section describes, as the JobSpec a dtrain launch worker gets.
#include "dtrain/launcher/cluster.h"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "dtrain/distributed/environment.h"
#include "dtrain/distributed/socket.h"
#include "dtrain/distributed/store.h"
#include "dtrain/tensor/check.h"

namespace dtrain::launch {

namespace {
namespace net = dist::net;
std::string finished_key(int64_t rank) { return "dtrain/cluster/finished/" + std::to_string(rank); }
}  // namespace

ClusterJob::ClusterJob(int64_t world_size, int64_t rank, const std::string& store, double timeout_s)
    : world_size_(world_size), rank_(rank), store_(store), timeout_s_(timeout_s) {
  if (world_size_ <= 1) return;
  const dist::WorldInfo env = dist::detect_world();
  if (env.source != "single") {
    DTRAIN_THROW(ValueError, "the config's cluster section (cluster.world_size ", world_size_,
                 ") and the environment (", env.describe(),
                 ") both describe the job; drop the cluster section under dtrain launch, mpirun "
                 "or srun, or start the processes without them");
  }
  const char* token = std::getenv("DTRAIN_STORE_TOKEN");
  if (token == nullptr || std::strlen(token) < 16) {
    DTRAIN_THROW(ValueError, "cluster.world_size ", world_size_,
                 ": every process needs the same secret in DTRAIN_STORE_TOKEN (16 or more "
                 "characters), e.g. `export DTRAIN_STORE_TOKEN=$(openssl rand -hex 16)` with the "
                 "same value for every process");
  }
  const auto [host, port] = net::split_host_port(store_, "cluster.store");
  if (rank_ == 0) {
    dist::StoreServerOptions o;
    o.bind_address = host;
    o.port = port;
    o.token = token;
    o.max_clients = dist::store_max_clients(world_size_);
    server_ = std::make_unique<dist::StoreServer>(o);
  }
  token_ = token;
}

dist::JobSpec ClusterJob::spec() const {
  if (world_size_ <= 1) return dist::job_spec_from_env();
  dist::JobSpec spec;
  spec.world.rank = static_cast<int>(rank_);
  spec.world.size = static_cast<int>(world_size_);
  // The section says nothing of machines: every process counts as one of a single host's.
  spec.world.local_rank = spec.world.rank;
  spec.world.local_size = spec.world.size;
  spec.world.source = "cluster";
  const auto [host, port] = net::split_host_port(store_, "cluster.store");
  spec.store_address = net::host_port(host, port);
  spec.store_token = token_;
  return spec;
}

ClusterJob::~ClusterJob() = default;

void ClusterJob::finish() {
  if (world_size_ <= 1) return;
  const auto [host, port] = net::split_host_port(store_, "cluster.store");
  dist::StoreClientOptions o;
  o.host = host;
  o.port = port;
  o.token = token_;
  dist::StoreClient client(o);
  client.set(finished_key(rank_), "1");
  if (rank_ != 0) return;
  std::vector<std::string> keys;
  for (int64_t r = 0; r < world_size_; ++r) keys.push_back(finished_key(r));
  try {
    client.wait(keys, std::chrono::milliseconds(static_cast<int64_t>(timeout_s_ * 1000)));
  } catch (const TimeoutError&) {
    // Rank 0's own work is done; a rank that never said so failed and reports for itself.
  }
}

}  // namespace dtrain::launch
