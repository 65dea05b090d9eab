// DTRAIN_CUDA_SYNC, the debug switch that makes every CUDA kernel launch synchronise; parsed the
// same way in builds with and without CUDA so its rules are tested everywhere.
#include <string_view>

#include "dtrain/tensor/check.h"
#include "dtrain/tensor/cuda/cuda_backend.h"

namespace dtrain::cuda {

bool parse_cuda_sync(const char* value) {
  if (value == nullptr) return false;
  const std::string_view v(value);
  if (v.empty() || v == "0") return false;
  if (v == "1") return true;
  DTRAIN_THROW(ValueError, "DTRAIN_CUDA_SYNC='", v,
               "': expected 1 (synchronise and check after every CUDA kernel launch) or 0 (off)");
}

}  // namespace dtrain::cuda
