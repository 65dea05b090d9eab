// The data-parallel strategies, and the start-up checks that replicas run the same configuration
// and keep the same parameters.
#include "dtrain/strategies/data_parallel.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <map>
#include <sstream>
#include <utility>

#include "dtrain/strategies/sync_batch_norm.h"
#include "dtrain/tensor/check.h"
#include "dtrain/tensor/hash.h"

namespace dtrain {

DataParallelStrategy::DataParallelStrategy(std::string name, const StrategyOptions& options,
                                           dist::CommunicatorPtr comm)
    : name_(std::move(name)), options_(options), comm_(std::move(comm)) {
  DTRAIN_CHECK(comm_ != nullptr, "strategy '", name_, "': needs a communicator");
}

DataParallelStrategy::~DataParallelStrategy() = default;

DistributedDataParallel& DataParallelStrategy::ddp() {
  DTRAIN_CHECK(ddp_ != nullptr, "strategy '", name_, "': prepare(model) must come first");
  return *ddp_;
}

void DataParallelStrategy::prepare(nn::Module& model) {
  DdpOptions ddp_options = options_.ddp;
  ddp_options.reduce_scatter = options_.shard_optimizer;
  sharded_.reset();
  if (options_.sync_batch_norm) {
    const int layers = nn::convert_sync_batch_norm(model, comm_, options_.ddp.timeout);
    DTRAIN_CHECK(layers > 0, "model.sync_batch_norm: ", model.describe(),
                 " has no BatchNorm layer to synchronise; add batch normalisation "
                 "(model.batch_norm: true, or a batch_norm layer) or leave the key false");
  }
  ddp_ = std::make_unique<DistributedDataParallel>(model, comm_, ddp_options);
}

ShardedOptimizer& DataParallelStrategy::sharded(nn::Optimizer& opt) {
  if (!sharded_) sharded_ = std::make_unique<ShardedOptimizer>(ddp(), opt);
  DTRAIN_CHECK(&sharded_->optimizer() == &opt, "strategy '", name_,
               "': a sharded optimiser's state lives with its strategy; step one optimiser");
  return *sharded_;
}

bool DataParallelStrategy::gradients_finite(nn::Module& model) {
  if (!options_.shard_optimizer) return Strategy::gradients_finite(model);
  // Outside its shard a replica holds only its own gradients: decide on the reduced ones.
  return std::isfinite(sharded_grad_norm(ddp()));
}

double DataParallelStrategy::clip_gradients(nn::Module& model, double max_norm) {
  if (!options_.shard_optimizer) return Strategy::clip_gradients(model, max_norm);
  return sharded_clip_grad_norm_(ddp(), max_norm);
}

void DataParallelStrategy::step_optimizer(nn::Optimizer& opt) {
  if (!options_.shard_optimizer) return opt.step();
  sharded(opt).step();
}

nn::OptimizerState DataParallelStrategy::optimizer_state(nn::Optimizer& opt) {
  if (!options_.shard_optimizer) return Strategy::optimizer_state(opt);
  return sharded(opt).state_dict();
}

void DataParallelStrategy::load_optimizer_state(nn::Optimizer& opt,
                                                const nn::OptimizerState& state) {
  if (!options_.shard_optimizer) return opt.load_state_dict(state);
  sharded(opt).load_state_dict(state);
}

Tensor DataParallelStrategy::forward(nn::Module& model, const Tensor& x) {
  DTRAIN_CHECK(&ddp().module() == &model, "strategy '", name_,
               "': forward of a model other than the prepared one");
  return ddp_->forward(x);
}

void DataParallelStrategy::set_gradient_sync(bool enabled) { ddp().set_gradient_sync(enabled); }

void DataParallelStrategy::synchronize_gradients(nn::Module&) {
  ddp().synchronize_gradients();
  if (options_.bucket_cap_auto && !tuned_) tune_bucket_cap();
}

void DataParallelStrategy::tune_bucket_cap() {
  constexpr size_t kTrials = std::size(kBucketCapTrials);
  const int64_t step = ++synchronized_steps_;
  // The first steps settle the buckets' order and warm up; every replica counts the same steps,
  // so every replica changes the cap at the same one.
  if (step < kWarmupSteps) return;
  if (step > kWarmupSteps) {
    trial_exposed_s_ += ddp_->last_step().exposed_s;
    if ((step - kWarmupSteps) % kStepsPerTrial != 0) return;
    trials_.push_back({ddp_->bucket_cap_mb(), trial_exposed_s_ / kStepsPerTrial * 1e3});
    trial_exposed_s_ = 0;
  }
  if (trials_.size() < kTrials) {
    ddp_->set_bucket_cap_mb(kBucketCapTrials[trials_.size()]);
    return;
  }
  // Every replica measured its own exposed time: decide on the mean, the same everywhere.
  std::vector<double> exposed;
  for (const BucketCapTrial& t : trials_) exposed.push_back(t.exposed_ms);
  sum_across_replicas(exposed);
  size_t best = 0;
  std::ostringstream table;
  table << "strategy.bucket_cap_mb auto: exposed communication per step, averaged over "
        << kStepsPerTrial << " steps and " << comm_->size() << " replicas:";
  for (size_t i = 0; i < trials_.size(); ++i) {
    trials_[i].exposed_ms = exposed[i] / comm_->size();
    if (trials_[i].exposed_ms < trials_[best].exposed_ms) best = i;
    char entry[64];
    std::snprintf(entry, sizeof entry, " %g MiB %.3f ms;", trials_[i].cap_mb,
                  trials_[i].exposed_ms);
    table << entry;
  }
  table << " keeping " << trials_[best].cap_mb << " MiB";
  ddp_->set_bucket_cap_mb(trials_[best].cap_mb);
  tuned_ = true;
  if (is_primary()) message_ = table.str();
}

std::string DataParallelStrategy::take_message() { return std::exchange(message_, std::string()); }

const DdpStepTiming* DataParallelStrategy::last_step_communication() const {
  return ddp_ ? &ddp_->last_step() : nullptr;
}

std::vector<std::string> DataParallelStrategy::gather_text(const std::string& text) {
  // Lengths first, then every replica's bytes padded to the longest, packed into int64 elements.
  const int world = comm_->size();
  Tensor length({1}, DType::kInt64);
  length.data<int64_t>()[0] = static_cast<int64_t>(text.size());
  Tensor lengths({world}, DType::kInt64);
  comm_->all_gather(length, lengths)->wait();
  const std::vector<int64_t> sizes = lengths.to_vector<int64_t>();
  const int64_t words = (*std::max_element(sizes.begin(), sizes.end()) + 7) / 8;
  Tensor mine = zeros({std::max<int64_t>(words, 1)}, DType::kInt64);
  std::memcpy(mine.data_ptr(), text.data(), text.size());
  Tensor all({mine.numel() * world}, DType::kInt64);
  comm_->all_gather(mine, all)->wait();
  if (!is_primary()) return {};
  std::vector<std::string> out;
  const char* bytes = static_cast<const char*>(all.data_ptr());
  for (int r = 0; r < world; ++r) {
    out.emplace_back(bytes + r * mine.numel() * 8, static_cast<size_t>(sizes[r]));
  }
  return out;
}

void DataParallelStrategy::sum_across_replicas(std::vector<double>& values) {
  if (values.empty()) return;
  Tensor t({static_cast<int64_t>(values.size())}, DType::kFloat64);
  std::memcpy(t.data_ptr(), values.data(), values.size() * sizeof(double));
  comm_->all_reduce_now(t);
  std::memcpy(values.data(), t.data_ptr(), values.size() * sizeof(double));
}

std::function<Strategy::StepAgreement()> DataParallelStrategy::start_step_agreement(
    double stop_vote) {
  // One max-reduction of [vote, d, -d] with 48 bits of the digest (exact in a double): the
  // digests agree exactly when the largest d is the smallest.
  const double digest = static_cast<double>(comm_->calls_digest() >> 16);
  Tensor t({3}, DType::kFloat64);
  double* v = t.data<double>();
  v[0] = stop_vote;
  v[1] = digest;
  v[2] = -digest;
  dist::WorkPtr work = comm_->all_reduce(t, {dist::ReduceOp::kMax});
  return [t, work]() mutable {
    if (work) {
      work->wait();
      work.reset();
    }
    const double* r = t.data<double>();
    return StepAgreement{r[0], r[1] == -r[2]};
  };
}

namespace {

/// Every replica's 64-bit value, gathered.
std::vector<int64_t> gather(dist::Communicator& comm, uint64_t value) {
  Tensor mine({1}, DType::kInt64);
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

/// key NUL value NUL ...: keys and values never hold a NUL, so the text splits back exactly.
std::string pack(const ConfigEntries& entries) {
  std::string out;
  for (const auto& [key, value] : entries) {
    out.append(key).push_back('\0');
    out.append(value).push_back('\0');
  }
  return out;
}

std::map<std::string, std::string> unpack(const std::string& text) {
  std::map<std::string, std::string> out;
  size_t at = 0;
  while (at < text.size()) {
    const size_t key_end = text.find('\0', at);
    const size_t value_end = text.find('\0', key_end + 1);
    out[text.substr(at, key_end - at)] = text.substr(key_end + 1, value_end - key_end - 1);
    at = value_end + 1;
  }
  return out;
}

/// Replica 0's bytes on every replica: the length, then the bytes packed into int64 elements
/// (collectives carry no byte type).
std::string broadcast_text(dist::Communicator& comm, const std::string& mine) {
  Tensor length({1}, DType::kInt64);
  length.data<int64_t>()[0] = static_cast<int64_t>(mine.size());
  comm.broadcast(length)->wait();
  const int64_t n = length.data<int64_t>()[0];
  Tensor words = zeros({(n + 7) / 8}, DType::kInt64);
  if (comm.rank() == 0) std::memcpy(words.data_ptr(), mine.data(), mine.size());
  comm.broadcast(words)->wait();
  return std::string(static_cast<const char*>(words.data_ptr()), static_cast<size_t>(n));
}

}  // namespace

void DataParallelStrategy::check_same_config(const ConfigEntries& config) {
  // 1. Every replica gathers every replica's hash of its resolved configuration. 2. Only when
  //    they differ: replica 0's entries are broadcast and each replica names its own differences.
  const std::string packed = pack(config);
  const std::vector<int64_t> hashes = gather(*comm_, fnv1a(packed));
  const std::vector<int> differing = differing_from_first(hashes);
  if (differing.empty()) return;
  const std::map<std::string, std::string> first = unpack(broadcast_text(*comm_, packed));
  std::ostringstream os;
  os << "replicas run different configurations: replica(s) " << dist::rank_list(differing)
     << " differ from replica 0 (config hashes compared at start-up)";
  if (hashes[rank()] != hashes[0]) {
    os << "; keys that differ here (replica " << rank() << " vs replica 0):";
    for (const auto& [key, value] : config) {
      auto it = first.find(key);
      if (it == first.end() || it->second != value) {
        os << " " << key << " (" << value << " vs " << (it == first.end() ? "missing" : it->second)
           << ")";
      }
    }
  }
  DTRAIN_THROW(ValueError, os.str());
}

void DataParallelStrategy::check_parameters_in_sync(nn::Module& model, int64_t step) {
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
