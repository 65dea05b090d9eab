// The strategy registry: one line per strategy.
#include "strategies/strategy.h"

#include "distributed/backends/local/local_communicator.h"
#include "distributed/hierarchical_communicator.h"
#include "distributed/registry.h"
#include "strategies/ddp_strategy.h"

namespace dtrain {

std::unique_ptr<Strategy> make_strategy(const StrategyOptions& options) {
  if (options.type == "single") return std::make_unique<SingleProcessStrategy>();
  if (options.type == "ddp") return std::make_unique<DdpStrategy>(options);
  if (options.type == "mirrored" || options.type == "multi_worker_mirrored") {
    DTRAIN_THROW(ValueError, "strategy '", options.type,
                 "' runs several replicas per process: use make_replica_strategies");
  }
  DTRAIN_THROW(ValueError, "unknown strategy '", options.type,
               "'; available: single, ddp, mirrored, multi_worker_mirrored");
}

std::vector<std::unique_ptr<Strategy>> make_replica_strategies(const StrategyOptions& options) {
  std::vector<std::unique_ptr<Strategy>> out;
  if (options.type != "mirrored" && options.type != "multi_worker_mirrored") {
    out.push_back(make_strategy(options));
    return out;
  }
  DTRAIN_CHECK(options.devices >= 1, "strategy.devices must be >= 1; got ", options.devices);
  auto local = dist::make_local_group(options.devices);
  if (options.type == "mirrored") {
    for (auto& comm : local) out.push_back(std::make_unique<DdpStrategy>(options, comm));
    return out;
  }
  // multi_worker_mirrored: the process-level communicator is used by local replica 0 only.
  std::shared_ptr<dist::AsyncCommunicator> cross = dist::init_from_env(options.backend);
  for (int r = 0; r < options.devices; ++r) {
    auto comm = std::make_shared<dist::HierarchicalCommunicator>(local[r], r == 0 ? cross : nullptr,
                                                                 cross->rank(), cross->size());
    out.push_back(std::make_unique<DdpStrategy>(options, comm));
  }
  return out;
}

std::function<void(const std::string&)> replica_abort(
    const std::vector<std::unique_ptr<Strategy>>& replicas) {
  for (const auto& s : replicas) {
    auto* ddp = dynamic_cast<DdpStrategy*>(s.get());
    if (ddp == nullptr) continue;
    dist::AsyncCommunicator* comm = &ddp->communicator();
    if (auto* h = dynamic_cast<dist::HierarchicalCommunicator*>(comm)) comm = &h->local();
    if (auto* local = dynamic_cast<dist::LocalCommunicator*>(comm)) {
      std::shared_ptr<dist::LocalGroup> group = local->group_ptr();  // one group per process
      return [group](const std::string& reason) { group->abort(reason); };
    }
  }
  return [](const std::string&) {};
}

}  // namespace dtrain
