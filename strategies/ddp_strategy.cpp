// The ddp strategy.
#include "strategies/ddp_strategy.h"

#include <cstring>

#include "distributed/registry.h"

namespace dtrain {

DdpStrategy::DdpStrategy(const StrategyOptions& options)
    : DdpStrategy(options, dist::init_from_env(options.backend)) {}

DdpStrategy::DdpStrategy(const StrategyOptions& options,
                         std::shared_ptr<dist::AsyncCommunicator> comm)
    : options_(options), comm_(std::move(comm)) {
  // Without a Store (plain mpirun) the report covers this rank's own progress; the timeout still
  // turns a hang into a non-zero exit.
  dist::WatchdogOptions w;
  w.timeout = std::chrono::milliseconds(static_cast<int64_t>(options.timeout_s * 1000));
  w.stall_warning = std::chrono::milliseconds(static_cast<int64_t>(options.stall_warning_s * 1000));
  watchdog_ = std::make_unique<dist::Watchdog>(comm_->rank(), comm_->size(), w, nullptr);
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

}  // namespace dtrain
