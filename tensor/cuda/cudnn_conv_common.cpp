// The parts of the cuDNN path that need no GPU and are the same with and without CUDA: the
// DTRAIN_CUDNN switch, the dlopen loader and the algorithm-cache key, so their rules are tested
// on every machine.
#include <dlfcn.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string_view>

#include "dtrain/tensor/check.h"
#include "dtrain/tensor/cuda/cudnn_conv.h"
#include "dtrain/tensor/hash.h"

namespace dtrain::cuda {

size_t ConvAlgoKeyHash::operator()(const ConvAlgoKey& key) const {
  const int64_t fields[] = {key.device,       static_cast<int64_t>(key.pass),
                            key.shape.n,      key.shape.c,
                            key.shape.h,      key.shape.w,
                            key.shape.o,      key.shape.kh,
                            key.shape.kw,     key.shape.stride,
                            key.shape.padding};
  return static_cast<size_t>(fnv1a(fields, sizeof(fields)));
}

bool parse_cudnn_env(const char* value) {
  if (value == nullptr) return true;
  const std::string_view v(value);
  if (v.empty() || v == "1") return true;
  if (v == "0") return false;
  DTRAIN_THROW(ValueError, "DTRAIN_CUDNN='", v,
               "': expected 1 (CUDA convolutions through cuDNN where it loads) or 0 (im2col + "
               "cuBLAS)");
}

SharedLibrary open_shared_library(const std::vector<std::string>& names) {
  SharedLibrary lib;
  for (const std::string& name : names) {
    dlerror();  // clear an earlier error so the message below is this call's
    if (void* handle = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL)) {
      lib.handle = handle;
      lib.name = name;
      lib.error.clear();
      return lib;
    }
    const char* why = dlerror();
    if (!lib.error.empty()) lib.error += "; ";
    lib.error += why != nullptr ? why : name + ": dlopen failed";
  }
  if (names.empty()) lib.error = "no library name given";
  return lib;
}

namespace {
// -1: DTRAIN_CUDNN not read yet; else 0 or 1.
std::atomic<int> cudnn_allowed_state{-1};
std::mutex cudnn_allowed_mu;
}  // namespace

bool cudnn_allowed() {
  const int state = cudnn_allowed_state.load(std::memory_order_acquire);
  if (state >= 0) return state == 1;
  std::lock_guard lock(cudnn_allowed_mu);
  if (cudnn_allowed_state.load() < 0) {
    cudnn_allowed_state.store(parse_cudnn_env(std::getenv("DTRAIN_CUDNN")) ? 1 : 0);
  }
  return cudnn_allowed_state.load() == 1;
}

void set_cudnn_allowed(bool allowed) {
  std::lock_guard lock(cudnn_allowed_mu);
  cudnn_allowed_state.store(allowed ? 1 : 0, std::memory_order_release);
}

}  // namespace dtrain::cuda
