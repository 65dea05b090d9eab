// The ddp strategy.
#include "strategies/ddp_strategy.h"

#include <cstdlib>
#include <cstring>
#include <map>
#include <sstream>

#include "distributed/registry.h"
#include "tensor/hash.h"

namespace dtrain {

DdpStrategy::DdpStrategy(const StrategyOptions& options)
    : DdpStrategy(options, dist::init_from_env(options.backend)) {}

DdpStrategy::DdpStrategy(const StrategyOptions& options,
                         std::shared_ptr<dist::AsyncCommunicator> comm)
    : options_(options), comm_(std::move(comm)) {
  // Under dtrain launch the watchdog publishes progress to the launcher's Store and its report
  // names the ranks that did not arrive. Without a Store (plain mpirun) the report covers this
  // rank's own progress; the timeout still turns a hang into a non-zero exit.
  dist::WatchdogOptions w;
  const char* restart = std::getenv("DTRAIN_RESTART_COUNT");
  w.key_prefix += std::string(restart ? restart : "0") + "/";
  w.timeout = std::chrono::milliseconds(static_cast<int64_t>(options.timeout_s * 1000));
  w.stall_warning = std::chrono::milliseconds(static_cast<int64_t>(options.stall_warning_s * 1000));
  watchdog_ = std::make_unique<dist::Watchdog>(comm_->rank(), comm_->size(), w, dist::job_store());
  comm_->set_observer(watchdog_.get());
}

DdpStrategy::~DdpStrategy() {
  ddp_.reset();  // waits for its collectives
  comm_->set_observer(nullptr);
}

void DdpStrategy::prepare(nn::Module& model) {
  DdpOptions o;
  o.bucket_cap_mb = options_.bucket_cap_mb;
  o.find_unused_parameters = options_.find_unused_parameters;
  o.broadcast_buffers = options_.broadcast_buffers;
  o.comm_hook = options_.comm_hook;
  o.overlap = options_.overlap;
  o.timeout = std::chrono::milliseconds(static_cast<int64_t>(options_.timeout_s * 1000));
  ddp_ = std::make_unique<DistributedDataParallel>(model, comm_, o);
}

Tensor DdpStrategy::forward(nn::Module& model, const Tensor& x) {
  DTRAIN_CHECK(ddp_ && &ddp_->module() == &model, "ddp strategy: prepare(model) must come first");
  return ddp_->forward(x);
}

void DdpStrategy::synchronize_gradients(nn::Module&) {
  DTRAIN_CHECK(ddp_ != nullptr, "ddp strategy: prepare(model) must come first");
  ddp_->synchronize_gradients();
}

void DdpStrategy::sum_across_replicas(std::vector<double>& values) {
  if (values.empty()) return;
  Tensor t({static_cast<int64_t>(values.size())}, DType::kFloat64);
  std::memcpy(t.data_ptr(), values.data(), values.size() * sizeof(double));
  comm_->all_reduce(t)->wait();
  std::memcpy(values.data(), t.data_ptr(), values.size() * sizeof(double));
}

namespace {

/// Every replica's 64-bit value, gathered.
std::vector<int64_t> gather(dist::Communicator& comm, uint64_t value) {
  Tensor mine = full({1}, 0.0, DType::kInt64);
  mine.data<int64_t>()[0] = static_cast<int64_t>(value);
  Tensor all({comm.size()}, DType::kInt64);
  comm.all_gather(mine, all)->wait();
  return all.to_vector<int64_t>();
}

std::vector<int> differing_from_first(const std::vector<int64_t>& values) {
  std::vector<int> out;
  for (size_t r = 1; r < values.size(); ++r) {
    if (values[r] != values[0]) out.push_back(static_cast<int>(r));
  }
  return out;
}

/// "section.key" -> value, from the config text (section headers, then indented keys).
std::map<std::string, std::string> config_entries(const std::string& text) {
  std::map<std::string, std::string> out;
  std::istringstream lines(text);
  std::string line, section;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    if (line[0] != ' ') {
      section = line.substr(0, colon);
      continue;
    }
    const size_t start = line.find_first_not_of(' ');
    out[section + "." + line.substr(start, colon - start)] =
        colon + 2 <= line.size() ? line.substr(colon + 2) : "";
  }
  return out;
}

}  // namespace

void DdpStrategy::check_same_config(const std::string& config_text) {
  const std::vector<int64_t> hashes = gather(*comm_, fnv1a(config_text));
  const std::vector<int> differing = differing_from_first(hashes);
  if (differing.empty()) return;
  // Replica 0's text, for the keys that differ: its length, then its bytes.
  Tensor length = full({1}, static_cast<double>(config_text.size()), DType::kInt64);
  comm_->broadcast(length)->wait();
  Tensor bytes = zeros({length.data<int64_t>()[0]}, DType::kInt64);
  if (rank() == 0) {
    for (size_t i = 0; i < config_text.size(); ++i) bytes.data<int64_t>()[i] = config_text[i];
  }
  comm_->broadcast(bytes)->wait();
  std::string first(static_cast<size_t>(bytes.numel()), ' ');
  for (size_t i = 0; i < first.size(); ++i) first[i] = static_cast<char>(bytes.data<int64_t>()[i]);
  std::ostringstream os;
  os << "replicas run different configurations: replica(s) " << dist::rank_list(differing)
     << " differ from replica 0 (config hashes compared at start-up)";
  if (hashes[rank()] != hashes[0]) {
    const auto mine = config_entries(config_text), theirs = config_entries(first);
    os << "; keys that differ here (replica " << rank() << " vs replica 0):";
    for (const auto& [key, value] : mine) {
      auto it = theirs.find(key);
      if (it == theirs.end() || it->second != value) {
        os << " " << key << " (" << value << " vs " << (it == theirs.end() ? "missing" : it->second)
           << ")";
      }
    }
  }
  DTRAIN_THROW(ValueError, os.str());
}

void DdpStrategy::check_parameters_in_sync(nn::Module& model, int64_t step) {
  uint64_t h = kFnv1aOffset;
  for (auto& [name, p] : model.named_parameters()) {
    Tensor host = to_device(p.detach(), Device::cpu());
    h = fnv1a(host.data_ptr(), host.nbytes(), h);
  }
  const std::vector<int> drifted = differing_from_first(gather(*comm_, h));
  if (!drifted.empty()) {
    DTRAIN_THROW(ValueError, "replicas' parameters drifted apart by step ", step, ": replica(s) ",
                 dist::rank_list(drifted),
                 " differ from replica 0 (parameter checksums compared every ",
                 options_.check_parameters_every_steps, " steps)");
  }
}

}  // namespace dtrain
