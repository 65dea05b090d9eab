// The strategy registry: one line per strategy.
#include "dtrain/strategies/strategy.h"

#include "dtrain/nn/clip_grad.h"
#include "dtrain/strategies/data_parallel.h"
#include "dtrain/tensor/check.h"
#include "dtrain/tensor/ops.h"

namespace dtrain {

bool Strategy::gradients_finite(nn::Module& model) {
  for (const Tensor& p : model.parameters()) {
    if (p.grad().defined() && !ops::all_finite(p.grad())) return false;
  }
  return true;
}

double Strategy::clip_gradients(nn::Module& model, double max_norm) {
  return nn::clip_grad_norm_(model.parameters(), max_norm);
}

namespace {

std::unique_ptr<Strategy> make_single(const StrategyOptions&, dist::CommunicatorPtr) {
  return std::make_unique<SingleProcessStrategy>();
}

std::unique_ptr<Strategy> make_data_parallel(const StrategyOptions& o, dist::CommunicatorPtr c) {
  return std::make_unique<DataParallelStrategy>(o.type, o, std::move(c));
}

}  // namespace

const std::vector<StrategyKind>& strategy_kinds() {
  static const std::vector<StrategyKind> kinds = {
      // name, threads, spans_processes, make
      {"single", false, false, make_single, "one process, one replica"},
      {"ddp", false, true, make_data_parallel, "one replica per process of the job"},
      {"mirrored", true, false, make_data_parallel, "strategy.devices replica threads"},
      {"multi_worker_mirrored", true, true, make_data_parallel,
       "strategy.devices replica threads in every process of the job"},
  };
  return kinds;
}

std::vector<std::string> strategy_names() {
  std::vector<std::string> names;
  for (const StrategyKind& k : strategy_kinds()) names.emplace_back(k.name);
  return names;
}

const StrategyKind& find_strategy(std::string_view name) {
  for (const StrategyKind& k : strategy_kinds()) {
    if (k.name == name) return k;
  }
  std::string known;
  for (const std::string& n : strategy_names()) known += (known.empty() ? "" : ", ") + n;
  DTRAIN_THROW(ValueError, "unknown strategy '", name, "'; available: ", known);
}

}  // namespace dtrain
