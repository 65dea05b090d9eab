// Dataset helpers.
#include "data/dataset.h"

#include "tensor/check.h"

namespace dtrain::data {

Normalize parse_normalize(const std::string& name) {
  if (name == "none") return Normalize::kNone;
  if (name == "unit") return Normalize::kUnit;
  if (name == "standard") return Normalize::kStandard;
  DTRAIN_THROW(ValueError, "unknown normalisation '", name, "'; expected none, unit or standard");
}

}  // namespace dtrain::data
