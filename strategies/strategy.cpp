// The strategy registry: one line per strategy.
#include "strategies/strategy.h"

#include "strategies/ddp_strategy.h"

namespace dtrain {

std::unique_ptr<Strategy> make_strategy(const StrategyOptions& options) {
  if (options.type == "single") return std::make_unique<SingleProcessStrategy>();
  if (options.type == "ddp") return std::make_unique<DdpStrategy>(options);
  DTRAIN_THROW(ValueError, "unknown strategy '", options.type, "'; available: single, ddp");
}

}  // namespace dtrain
