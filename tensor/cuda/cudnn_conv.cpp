// cuDNN convolution, with libcudnn opened at run time: cudnn.h is included for its types and
// prototypes only (the function pointers are decltype of them), so dtrain does not link libcudnn
// and still runs, through im2col + cuBLAS, where it is missing.
#include "dtrain/tensor/cuda/cudnn_conv.h"

#include <cuda_runtime.h>
#include <cudnn.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "dtrain/tensor/check.h"
#include "dtrain/tensor/cuda/cuda_backend.h"

namespace dtrain::cuda {
namespace {

// Every cuDNN function dtrain calls: the legacy (v7-style) convolution API, still in cuDNN 9.
#define DTRAIN_CUDNN_ENTRY_POINTS(X)                \
  X(cudnnGetVersion)                                \
  X(cudnnGetErrorString)                            \
  X(cudnnCreate)                                    \
  X(cudnnSetStream)                                 \
  X(cudnnCreateTensorDescriptor)                    \
  X(cudnnSetTensor4dDescriptor)                     \
  X(cudnnCreateFilterDescriptor)                    \
  X(cudnnSetFilter4dDescriptor)                     \
  X(cudnnCreateConvolutionDescriptor)               \
  X(cudnnSetConvolution2dDescriptor)                \
  X(cudnnSetConvolutionMathType)                    \
  X(cudnnGetConvolutionForwardAlgorithm_v7)         \
  X(cudnnGetConvolutionBackwardDataAlgorithm_v7)    \
  X(cudnnGetConvolutionBackwardFilterAlgorithm_v7)  \
  X(cudnnGetConvolutionForwardWorkspaceSize)        \
  X(cudnnGetConvolutionBackwardDataWorkspaceSize)   \
  X(cudnnGetConvolutionBackwardFilterWorkspaceSize) \
  X(cudnnConvolutionForward)                        \
  X(cudnnConvolutionBackwardData)                   \
  X(cudnnConvolutionBackwardFilter)

struct CudnnApi {
#define DTRAIN_CUDNN_MEMBER(name) decltype(&::name) name = nullptr;
  DTRAIN_CUDNN_ENTRY_POINTS(DTRAIN_CUDNN_MEMBER)
#undef DTRAIN_CUDNN_MEMBER
};

struct LoadResult {
  CudnnApi api;
  bool ok = false;
  std::string reason;
};

LoadResult load_cudnn() {
  LoadResult result;
  const SharedLibrary lib = open_shared_library({"libcudnn.so.9", "libcudnn.so"});
  if (lib.handle == nullptr) {
    result.reason = lib.error;
    return result;
  }
  std::string missing;
#define DTRAIN_CUDNN_RESOLVE(name)                                                 \
  result.api.name = reinterpret_cast<decltype(&::name)>(dlsym(lib.handle, #name)); \
  if (result.api.name == nullptr) missing += std::string(missing.empty() ? "" : ", ") + #name;
  DTRAIN_CUDNN_ENTRY_POINTS(DTRAIN_CUDNN_RESOLVE)
#undef DTRAIN_CUDNN_RESOLVE
  if (!missing.empty()) {
    result.reason = lib.name + " lacks " + missing;
    return result;
  }
  // The perf structs and enums used here are those of cuDNN 9's headers.
  const size_t version = result.api.cudnnGetVersion();
  if (version / 10000 != CUDNN_MAJOR) {
    result.reason = lib.name + " is cuDNN " + std::to_string(version) + "; dtrain needs cuDNN " +
                    std::to_string(CUDNN_MAJOR);
    return result;
  }
  result.ok = true;
  return result;
}

const LoadResult& loaded() {
  static const LoadResult result = load_cudnn();
  return result;
}

const CudnnApi& api() {
  const LoadResult& r = loaded();
  if (!r.ok) DTRAIN_THROW(UnsupportedError, "cuDNN is not available: ", r.reason);
  return r.api;
}

#define DTRAIN_CUDNN_CHECK(expr)                                                      \
  do {                                                                                \
    const cudnnStatus_t st_ = (expr);                                                 \
    if (st_ != CUDNN_STATUS_SUCCESS) {                                                \
      DTRAIN_THROW(::dtrain::ValueError, "cuDNN error ", static_cast<int>(st_), " (", \
                   api().cudnnGetErrorString(st_), ") in ", #expr);                   \
    }                                                                                 \
  } while (0)

/// With DTRAIN_CUDA_SYNC=1, waits for the pass and reports a fault at it, as kernel launches do.
void check_after(const char* what, int device) {
  static const bool sync = parse_cuda_sync(std::getenv("DTRAIN_CUDA_SYNC"));
  if (!sync) return;
  const cudaError_t err = cudaDeviceSynchronize();
  if (err != cudaSuccess) {
    DTRAIN_THROW(ValueError, "CUDA error ", static_cast<int>(err), " (", cudaGetErrorString(err),
                 ") in ", what, " on cuda:", device,
                 " (DTRAIN_CUDA_SYNC=1 checked it as it finished)");
  }
}

/// Descriptors and the chosen algorithm of one (device, pass, shape).
struct Plan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  bool usable = false;  // cuDNN offered a deterministic FP32 algorithm
  int algo = 0;         // a cudnnConvolution{Fwd,BwdData,BwdFilter}Algo_t, by pass
  size_t workspace_bytes = 0;
};

/// One handle per device, and its plans. A cuDNN handle must not be used by two threads at once,
/// so `mu` is held from the plan lookup until the pass is enqueued (enqueueing is quick).
struct DeviceState {
  std::mutex mu;
  cudnnHandle_t handle = nullptr;
  std::unordered_map<ConvAlgoKey, Plan, ConvAlgoKeyHash> plans;
};

/// Created on first use under the device's guard; never destroyed (the handle outlives static
/// tensors freed at exit).
DeviceState& device_state(int device) {
  static std::mutex mu;
  static std::unordered_map<int, DeviceState*> states;
  std::lock_guard lock(mu);
  DeviceState*& state = states[device];
  if (state == nullptr) {
    auto fresh = std::make_unique<DeviceState>();
    DeviceGuard guard(device);
    DTRAIN_CUDNN_CHECK(api().cudnnCreate(&fresh->handle));
    // The legacy default stream, like every other dtrain kernel: cuDNN's work is ordered after
    // the kernels that made its inputs and before those that read its outputs.
    DTRAIN_CUDNN_CHECK(api().cudnnSetStream(fresh->handle, cudaStreamLegacy));
    state = fresh.release();
  }
  return *state;
}

std::string describe(const ConvAlgoKey& key) {
  const ConvShape& s = key.shape;
  const char* pass = key.pass == ConvPass::kForward        ? "forward"
                     : key.pass == ConvPass::kBackwardData ? "backward data"
                                                           : "backward filter";
  return std::string(pass) + " x [" + std::to_string(s.n) + ", " + std::to_string(s.c) + ", " +
         std::to_string(s.h) + ", " + std::to_string(s.w) + "] w [" + std::to_string(s.o) + ", " +
         std::to_string(s.c) + ", " + std::to_string(s.kh) + ", " + std::to_string(s.kw) +
         "] stride " + std::to_string(s.stride) + " padding " + std::to_string(s.padding) +
         " on cuda:" + std::to_string(key.device);
}

void make_descriptors(const ConvShape& s, Plan& p) {
  const CudnnApi& c = api();
  const auto i = [](int64_t v) { return static_cast<int>(v); };
  DTRAIN_CUDNN_CHECK(c.cudnnCreateTensorDescriptor(&p.x));
  DTRAIN_CUDNN_CHECK(c.cudnnSetTensor4dDescriptor(p.x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, i(s.n),
                                                  i(s.c), i(s.h), i(s.w)));
  DTRAIN_CUDNN_CHECK(c.cudnnCreateTensorDescriptor(&p.y));
  DTRAIN_CUDNN_CHECK(c.cudnnSetTensor4dDescriptor(p.y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, i(s.n),
                                                  i(s.o), i(s.oh()), i(s.ow())));
  DTRAIN_CUDNN_CHECK(c.cudnnCreateFilterDescriptor(&p.w));
  DTRAIN_CUDNN_CHECK(c.cudnnSetFilter4dDescriptor(p.w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, i(s.o),
                                                  i(s.c), i(s.kh), i(s.kw)));
  DTRAIN_CUDNN_CHECK(c.cudnnCreateConvolutionDescriptor(&p.conv));
  // Cross-correlation, as ops::conv2d (and PyTorch) define convolution.
  DTRAIN_CUDNN_CHECK(c.cudnnSetConvolution2dDescriptor(p.conv, i(s.padding), i(s.padding),
                                                       i(s.stride), i(s.stride), 1, 1,
                                                       CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  // FMA only: CUDNN_DEFAULT_MATH lets Ampere and later GPUs use TF32, whose 10-bit mantissa would
  // break parity with the CPU at 1e-5.
  DTRAIN_CUDNN_CHECK(c.cudnnSetConvolutionMathType(p.conv, CUDNN_FMA_MATH));
}

/// The first of cuDNN's heuristic candidates (best expected first) that succeeds, is
/// deterministic and uses no tensor-core math, and whose workspace size can be queried.
/// Heuristics, not timing runs, so the choice is the same on every run of the same GPU.
template <class Perf, class WorkspaceQuery>
void choose(const Perf* perfs, int count, Plan& p, WorkspaceQuery&& workspace_for) {
  for (int i = 0; i < count; ++i) {
    const Perf& perf = perfs[i];
    if (perf.status != CUDNN_STATUS_SUCCESS || perf.determinism != CUDNN_DETERMINISTIC) continue;
    if (perf.mathType == CUDNN_TENSOR_OP_MATH ||
        perf.mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION) {
      continue;
    }
    size_t bytes = 0;
    if (workspace_for(perf.algo, bytes) != CUDNN_STATUS_SUCCESS) continue;
    p.usable = true;
    p.algo = static_cast<int>(perf.algo);
    p.workspace_bytes = bytes;
    return;
  }
}

const Plan& plan_for(DeviceState& state, const ConvAlgoKey& key) {
  auto found = state.plans.find(key);
  if (found != state.plans.end()) return found->second;
  const CudnnApi& c = api();
  Plan p;
  make_descriptors(key.shape, p);
  int count = 0;
  switch (key.pass) {
    case ConvPass::kForward: {
      cudnnConvolutionFwdAlgoPerf_t perfs[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
      DTRAIN_CUDNN_CHECK(c.cudnnGetConvolutionForwardAlgorithm_v7(
          state.handle, p.x, p.w, p.conv, p.y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &count, perfs));
      choose(perfs, count, p, [&](cudnnConvolutionFwdAlgo_t algo, size_t& bytes) {
        return c.cudnnGetConvolutionForwardWorkspaceSize(state.handle, p.x, p.w, p.conv, p.y, algo,
                                                         &bytes);
      });
      break;
    }
    case ConvPass::kBackwardData: {
      cudnnConvolutionBwdDataAlgoPerf_t perfs[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
      DTRAIN_CUDNN_CHECK(c.cudnnGetConvolutionBackwardDataAlgorithm_v7(
          state.handle, p.w, p.y, p.conv, p.x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &count,
          perfs));
      choose(perfs, count, p, [&](cudnnConvolutionBwdDataAlgo_t algo, size_t& bytes) {
        return c.cudnnGetConvolutionBackwardDataWorkspaceSize(state.handle, p.w, p.y, p.conv, p.x,
                                                              algo, &bytes);
      });
      break;
    }
    case ConvPass::kBackwardFilter: {
      cudnnConvolutionBwdFilterAlgoPerf_t perfs[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
      DTRAIN_CUDNN_CHECK(c.cudnnGetConvolutionBackwardFilterAlgorithm_v7(
          state.handle, p.x, p.y, p.conv, p.w, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &count,
          perfs));
      choose(perfs, count, p, [&](cudnnConvolutionBwdFilterAlgo_t algo, size_t& bytes) {
        return c.cudnnGetConvolutionBackwardFilterWorkspaceSize(state.handle, p.x, p.y, p.conv, p.w,
                                                                algo, &bytes);
      });
      break;
    }
  }
  if (!p.usable) {
    std::fprintf(stderr,
                 "dtrain: cuDNN offers no deterministic FP32 algorithm for conv2d %s; it uses "
                 "im2col + cuBLAS\n",
                 describe(key).c_str());
  }
  return state.plans.emplace(key, p).first->second;
}

/// Scratch memory for one pass from the device's caching allocator. Returning it as soon as the
/// pass is enqueued is safe: the next user of the block runs on the same (legacy default) stream,
/// after the pass.
class Workspace {
 public:
  Workspace(int device, size_t bytes)
      : allocator_(allocator(device)),
        bytes_(bytes),
        ptr_(bytes > 0 ? allocator_.allocate(bytes) : nullptr) {}
  ~Workspace() {
    if (ptr_ != nullptr) allocator_.deallocate(ptr_, bytes_);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  Allocator& allocator_;
  size_t bytes_;
  void* ptr_;
};

constexpr float kOne = 1.f, kZero = 0.f;

}  // namespace

bool cudnn_loaded() {
  const LoadResult& r = loaded();
  if (!r.ok) {
    static std::once_flag notice;
    std::call_once(notice, [&] {
      std::fprintf(stderr, "dtrain: cuDNN not found (%s); CUDA convolutions use im2col + cuBLAS\n",
                   r.reason.c_str());
    });
  }
  return r.ok;
}

std::string cudnn_unavailable_reason() { return loaded().ok ? "" : loaded().reason; }

bool cudnn_conv_forward(const ConvShape& s, const float* x, const float* w, float* y, int device) {
  const CudnnApi& c = api();
  DeviceGuard guard(device);
  DeviceState& state = device_state(device);
  std::lock_guard lock(state.mu);
  const Plan& p = plan_for(state, {device, ConvPass::kForward, s});
  if (!p.usable) return false;
  Workspace ws(device, p.workspace_bytes);
  DTRAIN_CUDNN_CHECK(c.cudnnConvolutionForward(state.handle, &kOne, p.x, x, p.w, w, p.conv,
                                               static_cast<cudnnConvolutionFwdAlgo_t>(p.algo),
                                               ws.data(), ws.bytes(), &kZero, p.y, y));
  check_after("cudnnConvolutionForward", device);
  return true;
}

bool cudnn_conv_backward_data(const ConvShape& s, const float* gy, const float* w, float* dx,
                              int device) {
  const CudnnApi& c = api();
  DeviceGuard guard(device);
  DeviceState& state = device_state(device);
  std::lock_guard lock(state.mu);
  const Plan& p = plan_for(state, {device, ConvPass::kBackwardData, s});
  if (!p.usable) return false;
  Workspace ws(device, p.workspace_bytes);
  DTRAIN_CUDNN_CHECK(c.cudnnConvolutionBackwardData(
      state.handle, &kOne, p.w, w, p.y, gy, p.conv,
      static_cast<cudnnConvolutionBwdDataAlgo_t>(p.algo), ws.data(), ws.bytes(), &kZero, p.x, dx));
  check_after("cudnnConvolutionBackwardData", device);
  return true;
}

bool cudnn_conv_backward_filter(const ConvShape& s, const float* gy, const float* x, float* dw,
                                int device) {
  const CudnnApi& c = api();
  DeviceGuard guard(device);
  DeviceState& state = device_state(device);
  std::lock_guard lock(state.mu);
  const Plan& p = plan_for(state, {device, ConvPass::kBackwardFilter, s});
  if (!p.usable) return false;
  Workspace ws(device, p.workspace_bytes);
  DTRAIN_CUDNN_CHECK(
      c.cudnnConvolutionBackwardFilter(state.handle, &kOne, p.x, x, p.y, gy, p.conv,
                                       static_cast<cudnnConvolutionBwdFilterAlgo_t>(p.algo),
                                       ws.data(), ws.bytes(), &kZero, p.w, dw));
  check_after("cudnnConvolutionBackwardFilter", device);
  return true;
}

}  // namespace dtrain::cuda
