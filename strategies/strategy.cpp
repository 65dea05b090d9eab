// The strategy registry: one line per strategy.
#include "strategies/strategy.h"

namespace dtrain {

std::unique_ptr<Strategy> make_strategy(std::string_view type) {
  if (type == "single") return std::make_unique<SingleProcessStrategy>();
  DTRAIN_THROW(ValueError, "unknown strategy '", type, "'; available: single");
}

}  // namespace dtrain
