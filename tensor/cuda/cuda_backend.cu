// The CUDA backend: grid-stride kernels over the shared kernel bodies (tensor/kernels.h), a caching
// device allocator, and cuBLAS GEMM. Kernels run on the legacy default stream of their device,
// which orders them; memory that another stream (NCCL's) touched is tracked by record_stream.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cxxabi.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <mutex>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <utility>
#include <vector>

#include "dtrain/tensor/caching_allocator.h"
#include "dtrain/tensor/check.h"
#include "dtrain/tensor/cuda/cuda_backend.h"
#include "dtrain/tensor/dispatch.h"
#include "dtrain/tensor/kernels_nn.h"

#define DTRAIN_CUDA_CHECK(expr)                                                       \
  do {                                                                                \
    const cudaError_t err_ = (expr);                                                  \
    if (err_ != cudaSuccess) {                                                        \
      DTRAIN_THROW(::dtrain::ValueError, "CUDA error ", static_cast<int>(err_), " (", \
                   cudaGetErrorString(err_), ") in ", #expr);                         \
    }                                                                                 \
  } while (0)

#define DTRAIN_CUBLAS_CHECK(expr)                                                      \
  do {                                                                                 \
    const cublasStatus_t st_ = (expr);                                                 \
    if (st_ != CUBLAS_STATUS_SUCCESS) {                                                \
      DTRAIN_THROW(::dtrain::ValueError, "cuBLAS error ", static_cast<int>(st_), " (", \
                   cublasGetStatusString(st_), ") in ", #expr);                        \
    }                                                                                  \
  } while (0)

namespace dtrain::cuda {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < 65535 ? (b < 1 ? 1 : b) : 65535);
}

/// "dtrain::kernels::SoftmaxLines<float>" from a mangled type name; other names unchanged.
std::string readable_name(const char* name) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> out(abi::__cxa_demangle(name, nullptr, nullptr, &status),
                                             std::free);
  return status == 0 && out ? std::string(out.get()) : std::string(name);
}

bool sync_after_launch() {
  static const bool on = parse_cuda_sync(std::getenv("DTRAIN_CUDA_SYNC"));
  return on;
}

/// After every launch: a launch error at once; with DTRAIN_CUDA_SYNC=1 also a fault inside the
/// kernel, which otherwise surfaces at some later call (a copy, an NCCL wait) far from its cause.
void check_launch(const char* kernel, int device) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    DTRAIN_THROW(ValueError, "CUDA error ", static_cast<int>(err), " (", cudaGetErrorString(err),
                 ") launching ", readable_name(kernel), " on cuda:", device);
  }
  if (!sync_after_launch()) return;
  // DTRAIN_CUDA_SYNC=1: every earlier launch was checked the same way, so a fault now is this
  // kernel's.
  const cudaError_t fault = cudaDeviceSynchronize();
  if (fault != cudaSuccess) {
    DTRAIN_THROW(ValueError, "CUDA error ", static_cast<int>(fault), " (",
                 cudaGetErrorString(fault), ") in kernel ", readable_name(kernel),
                 " on cuda:", device, " (DTRAIN_CUDA_SYNC=1 checked it as it finished)");
  }
}

/// Whether the calling thread has a current CUDA context (cuCtxGetCurrent, fetched from the driver
/// at run time so the library does not link libcuda). Unknown counts as yes.
bool thread_has_context() {
  using CtxGetCurrent = int (*)(void**);
  static const CtxGetCurrent get = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuCtxGetCurrent", &fn, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return CtxGetCurrent{nullptr};
    }
    return reinterpret_cast<CtxGetCurrent>(fn);
  }();
  if (get == nullptr) return true;
  void* ctx = nullptr;
  return get(&ctx) != 0 || ctx != nullptr;
}

}  // namespace

// A thread that never chose a device reports device 0, and putting 0 back would create a context
// on GPU 0 (cudaSetDevice initialises it since CUDA 12): so only a thread that had a context, and
// whose device this guard changed, gets its device back.
DeviceGuard::DeviceGuard(int device) {
  DTRAIN_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ == device) return;
  restore_ = thread_has_context();
  DTRAIN_CUDA_CHECK(cudaSetDevice(device));
}

DeviceGuard::~DeviceGuard() {
  if (restore_) cudaSetDevice(previous_);
}

namespace {

// ---- allocator ------------------------------------------------------------------------------
/// The events that mark the last use of a freed block on other streams.
class EventsDone final : public detail::CachingAllocator::PendingUse {
 public:
  explicit EventsDone(std::vector<cudaEvent_t> events) : events_(std::move(events)) {}
  ~EventsDone() override {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }
  bool done() override {
    for (cudaEvent_t e : events_) {
      // An error (a device fault) keeps the block out of use for good, which is safe.
      if (cudaEventQuery(e) != cudaSuccess) {
        cudaGetLastError();
        return false;
      }
    }
    return true;
  }

 private:
  std::vector<cudaEvent_t> events_;
};

/// cudaMalloc blocks cached in size classes. Kernels all run on the default stream, so a block
/// freed by them can be handed out again at once: later work that uses it is ordered after them.
/// A block some other stream used (record_stream) waits for that stream's recorded event first.
class CachingCudaAllocator final : public detail::CachingAllocator {
 public:
  explicit CachingCudaAllocator(int device)
      : CachingAllocator(512, std::numeric_limits<size_t>::max()), device_(device) {}

  /// Called after work that uses `block` was enqueued on `stream`: one event per (block, stream),
  /// re-recorded on later uses, so a long-lived bucket does not collect events.
  void record_stream(void* block, cudaStream_t stream) {
    DeviceGuard guard(device_);
    std::lock_guard lock(uses_mu_);
    auto& uses = uses_[block];
    for (auto& [s, event] : uses) {
      if (s == stream) {
        DTRAIN_CUDA_CHECK(cudaEventRecord(event, stream));
        return;
      }
    }
    cudaEvent_t event = nullptr;
    DTRAIN_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    if (const cudaError_t err = cudaEventRecord(event, stream); err != cudaSuccess) {
      cudaEventDestroy(event);
      DTRAIN_CUDA_CHECK(err);
    }
    uses.emplace_back(stream, event);
    blocks_with_uses_.store(uses_.size(), std::memory_order_release);
  }

  /// Never throws: it runs in ~Storage.
  void deallocate(void* ptr, size_t nbytes) override {
    std::vector<cudaEvent_t> events;
    // Most blocks never meet another stream: skip the lock while no block has recorded uses. A
    // block's record_stream happens before its free on the freeing thread (it must still be alive
    // to be used), so its count is seen here.
    if (blocks_with_uses_.load(std::memory_order_acquire) != 0) {
      std::lock_guard lock(uses_mu_);
      if (auto it = uses_.find(ptr); it != uses_.end()) {
        for (auto& [stream, event] : it->second) events.push_back(event);
        uses_.erase(it);
        blocks_with_uses_.store(uses_.size(), std::memory_order_release);
      }
    }
    if (events.empty()) {
      CachingAllocator::deallocate(ptr, nbytes);
      return;
    }
    deallocate_after(ptr, nbytes, std::make_unique<EventsDone>(std::move(events)));
  }

 protected:
  void* system_allocate(size_t nbytes) override {
    DeviceGuard guard(device_);
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, nbytes);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear the error; the caller empties the cache and retries
      return nullptr;
    }
    DTRAIN_CUDA_CHECK(err);
    return p;
  }
  void system_free(void* ptr) override {
    DeviceGuard guard(device_);
    if (const cudaError_t err = cudaFree(ptr); err != cudaSuccess) {
      cudaGetLastError();
      std::fprintf(stderr, "dtrain: cudaFree on cuda:%d failed: %s\n", device_,
                   cudaGetErrorString(err));
    }
  }
  [[noreturn]] void out_of_memory(size_t nbytes) override {
    DTRAIN_THROW(ValueError, "cudaMalloc of ", nbytes, " bytes on cuda:", device_,
                 " failed: out of device memory");
  }
  void before_release() override {
    DeviceGuard guard(device_);
    cudaDeviceSynchronize();  // no kernel may still use a block we return
  }

 private:
  int device_;
  std::mutex uses_mu_;
  std::unordered_map<void*, std::vector<std::pair<cudaStream_t, cudaEvent_t>>> uses_;
  std::atomic<size_t> blocks_with_uses_{0};  // uses_.size(), readable without uses_mu_
};

// ---- kernels --------------------------------------------------------------------------------
#define DTRAIN_GRID_STRIDE(i, n)                                            \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); \
       i += int64_t(blockDim.x) * gridDim.x)

__global__ void fill_kernel(void* dst, DType t, int64_t n, double v) {
  DTRAIN_GRID_STRIDE(i, n) kernels::store_element(dst, t, i, v);
}

__global__ void convert_kernel(const void* src, DType st, void* dst, DType dt, int64_t n) {
  DTRAIN_GRID_STRIDE(i, n) kernels::store_element(dst, dt, i, kernels::load_element(src, st, i));
}

template <class T>
__global__ void unary_kernel(kernels::Unary op, const T* x, T* y, int64_t n,
                             kernels::UnaryParams q) {
  DTRAIN_GRID_STRIDE(i, n) y[i] = kernels::apply_unary(op, x[i], q);
}

// ---- broadcast index maps -------------------------------------------------------------------
// kernels::BroadcastIndex keeps one dim per output dim and 64-bit math, so an equal-shape add paid
// ~7 emulated 64-bit divisions per element. On the device the map is first simplified (size-1
// dims dropped, neighbouring dims merged where both operands step through them alike: equal
// shapes become one dim of stride 1, a scalar operand stride 0), then run in 32-bit unsigned math
// whenever every offset fits. The offsets are the same; only their arithmetic is cheaper.

/// A coalesced map in index type I (uint32_t or int64_t).
template <class I>
struct StridedIndex {
  int ndim = 0;
  I shape[kernels::BroadcastIndex::kMaxDims] = {};
  I a_stride[kernels::BroadcastIndex::kMaxDims] = {};
  I b_stride[kernels::BroadcastIndex::kMaxDims] = {};

  explicit StridedIndex(const kernels::BroadcastIndex& coalesced) : ndim(coalesced.ndim) {
    for (int d = 0; d < ndim; ++d) {
      shape[d] = static_cast<I>(coalesced.shape[d]);
      a_stride[d] = static_cast<I>(coalesced.a_stride[d]);
      b_stride[d] = static_cast<I>(coalesced.b_stride[d]);
    }
  }

  /// The same offsets as BroadcastIndex::offsets; the outermost dim needs no division (i is
  /// already below its extent there), so one dim (equal shapes, a scalar) costs none. Unrolled
  /// over kMaxDims so every array index is a constant: the map is read from the kernel's
  /// parameters instead of being copied to local memory by every thread.
  __device__ __forceinline__ void offsets(I i, I& a, I& b) const {
    a = 0;
    b = 0;
#pragma unroll
    for (int d = kernels::BroadcastIndex::kMaxDims - 1; d > 0; --d) {
      if (d >= ndim) continue;
      const I q = i / shape[d], idx = i - q * shape[d];
      i = q;
      a += idx * a_stride[d];
      b += idx * b_stride[d];
    }
    if (ndim > 0) {
      a += i * a_stride[0];
      b += i * b_stride[0];
    }
  }
};

/// Grid-stride loop in index type I; with uint32_t, i + stride stays below 2^32 for n < 2^31.
#define DTRAIN_GRID_STRIDE_AS(I, i, n)                                       \
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<I>(blockDim.x) * gridDim.x)

template <class T, class O, class I>
__global__ void binary_kernel(kernels::Binary op, const T* a, const T* b, O* out, I n,
                              StridedIndex<I> index) {
  DTRAIN_GRID_STRIDE_AS(I, i, n) {
    I ia, ib;
    index.offsets(i, ia, ib);
    out[i] = static_cast<O>(kernels::apply_binary(op, a[ia], b[ib]));
  }
}

/// GatherElements (expand, permute) over a coalesced map: out[i] = x[a offset of i].
template <class E, class I>
__global__ void gather_kernel(const E* x, E* out, I n, StridedIndex<I> index) {
  DTRAIN_GRID_STRIDE_AS(I, i, n) {
    I src, unused;
    index.offsets(i, src, unused);
    out[i] = x[src];
  }
}

/// Calls f(I{}, StridedIndex<I>) with I = uint32_t where the map fits, else int64_t.
template <class F>
void with_index_type(const kernels::BroadcastIndex& index, int64_t n, F&& f) {
  const kernels::BroadcastIndex c = kernels::coalesce(index);
  if (kernels::fits_32_bits(c, n)) {
    f(uint32_t{}, StridedIndex<uint32_t>(c));
  } else {
    f(int64_t{}, StridedIndex<int64_t>(c));
  }
}

template <class K>
struct IsGather : std::false_type {};
template <class E>
struct IsGather<kernels::GatherElements<E>> : std::true_type {};

// ---- fixed-order block reductions ----------------------------------------------------------
// Reductions never use atomics: each block sums its share in a tree whose shape depends only on
// the block size, and the sizes are chosen from the problem's shape alone, so a result is the same
// bit for bit from run to run (and on any GPU).

/// op over every thread's `v` in a fixed order (a shuffle tree inside each warp, then one over the
/// warps' results), returned to every thread. blockDim.x must be a multiple of 32 and at most
/// 1024; `scratch` is 32 doubles of shared memory, free again when this returns.
template <class Op>
__device__ double block_reduce(double v, double* scratch, Op op, double identity) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = op(v, __shfl_down_sync(0xffffffffu, v, offset));
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x >> 5) ? scratch[lane] : identity;
    for (int offset = 16; offset > 0; offset >>= 1) {
      v = op(v, __shfl_down_sync(0xffffffffu, v, offset));
    }
    if (lane == 0) scratch[0] = v;  // the other lanes read their scratch entry before the shuffles
  }
  __syncthreads();
  const double total = scratch[0];
  __syncthreads();  // the next call may overwrite scratch
  return total;
}

struct AddOp {
  __device__ double operator()(double a, double b) const { return a + b; }
};
struct MaxOp {
  __device__ double operator()(double a, double b) const { return b > a ? b : a; }
};

__device__ double block_sum(double v, double* scratch) {
  return block_reduce(v, scratch, AddOp{}, 0.0);
}
__device__ double block_max(double v, double* scratch) {
  return block_reduce(v, scratch, MaxOp{}, -std::numeric_limits<double>::infinity());
}

/// A block size for `work` items per block: a multiple of 32 up to kThreads.
int reduce_threads_for(int64_t work) {
  const int64_t warps = (std::min<int64_t>(work, kThreads) + 31) / 32;
  return static_cast<int>(std::max<int64_t>(warps, 1) * 32);
}

/// Rows of x [rows, r] split into `chunks` parts of `chunk` elements: block b sums part
/// b % chunks of row b / chunks into y[b], accumulating in double (like the CPU's row sums).
template <class In, class Out>
__global__ void sum_rows_kernel(const In* x, Out* y, int64_t r, int64_t chunks, int64_t chunk) {
  __shared__ double scratch[32];
  const int64_t row = blockIdx.x / chunks, part = blockIdx.x % chunks;
  const In* p = x + row * r;
  const int64_t begin = part * chunk, end = begin + chunk < r ? begin + chunk : r;
  double acc = 0;
  for (int64_t k = begin + threadIdx.x; k < end; k += blockDim.x) acc += static_cast<double>(p[k]);
  const double total = block_sum(acc, scratch);
  if (threadIdx.x == 0) y[blockIdx.x] = static_cast<Out>(total);
}

/// Calls f(offset) for this thread's share of channel ch of x [n, c, hw]: elements
/// threadIdx.x, + blockDim.x, ... in the channel's order, so neighbouring threads read neighbouring
/// addresses within a row. Row and column advance by adding, without a division per element.
template <class F>
__device__ __forceinline__ void for_each_in_channel(int64_t n, int64_t c, int64_t hw, int64_t ch,
                                                    F&& f) {
  const int64_t step_rows = blockDim.x / hw, step_cols = blockDim.x % hw;
  int64_t i = threadIdx.x / hw, k = threadIdx.x % hw;
  while (i < n) {
    f((i * c + ch) * hw + k);
    i += step_rows;
    k += step_cols;
    if (k >= hw) {
      k -= hw;
      ++i;
    }
  }
}

/// kernels::BatchNormChannels with block ch normalising channel ch; in training its mean and
/// biased variance are block sums in double (two passes, the variance around the float mean as on
/// the CPU).
template <class T>
__global__ void batch_norm_kernel(kernels::BatchNormChannels<T> k) {
  __shared__ double scratch[32];
  const int64_t ch = blockIdx.x, count = k.n * k.hw;
  double m, var;
  if (k.training) {
    double s = 0;
    for_each_in_channel(k.n, k.c, k.hw, ch, [&](int64_t at) { s += static_cast<double>(k.x[at]); });
    m = block_sum(s, scratch) / count;
    const T mt = static_cast<T>(m);
    double v = 0;
    for_each_in_channel(k.n, k.c, k.hw, ch, [&](int64_t at) {
      const T d = k.x[at] - mt;
      v += static_cast<double>(d * d);
    });
    var = block_sum(v, scratch) / count;
    if (threadIdx.x == 0 && k.running_mean) {
      k.running_mean[ch] = static_cast<T>((1 - k.momentum) * k.running_mean[ch] + k.momentum * m);
      k.running_var[ch] = static_cast<T>((1 - k.momentum) * k.running_var[ch] +
                                         k.momentum * var * count / (count - 1));
    }
  } else {
    m = k.running_mean[ch];
    var = k.running_var[ch];
  }
  const T mt = static_cast<T>(m), r = static_cast<T>(1.0 / sqrt(var + k.eps));
  if (threadIdx.x == 0) {
    k.mean_out[ch] = mt;
    k.rstd_out[ch] = r;
  }
  const T wc = k.w ? k.w[ch] : T(1), bc = k.b ? k.b[ch] : T(0);
  for_each_in_channel(k.n, k.c, k.hw, ch,
                      [&](int64_t at) { k.y[at] = (k.x[at] - mt) * r * wc + bc; });
}

/// kernels::BatchNormBackwardChannels with block ch on channel ch: the two sums over the channel
/// are block sums in double, then every thread writes its share of dx.
template <class T>
__global__ void batch_norm_backward_kernel(kernels::BatchNormBackwardChannels<T> k) {
  __shared__ double scratch[32];
  const int64_t ch = blockIdx.x, count = k.n * k.hw;
  const T mt = k.mean[ch], r = k.rstd[ch], wc = k.w ? k.w[ch] : T(1);
  double sg = 0, sgx = 0;
  for_each_in_channel(k.n, k.c, k.hw, ch, [&](int64_t at) {
    const T g = k.gy[at];
    sg += static_cast<double>(g);
    sgx += static_cast<double>(g * (k.x[at] - mt) * r);
  });
  const double sum_g = block_sum(sg, scratch), sum_gx = block_sum(sgx, scratch);
  if (threadIdx.x == 0) {
    k.dw[ch] = static_cast<T>(sum_gx);
    k.db[ch] = static_cast<T>(sum_g);
  }
  const T m1 = static_cast<T>(wc * sum_g / count), m2 = static_cast<T>(wc * sum_gx / count);
  for_each_in_channel(k.n, k.c, k.hw, ch, [&](int64_t at) {
    const T xhat = (k.x[at] - mt) * r;
    k.dx[at] = k.training ? r * (k.gy[at] * wc - m1 - xhat * m2) : k.gy[at] * wc * r;
  });
}

/// kernels::SoftmaxLines for contiguous lines (inner == 1), block b on line b: the maximum and
/// the sum of exponentials are block reductions (the sum in double), then the functor's formulas.
template <class T>
__global__ void softmax_rows_kernel(kernels::SoftmaxLines<T> k) {
  __shared__ double scratch[32];
  const T* px = k.x + blockIdx.x * k.r;
  T* py = k.y + blockIdx.x * k.r;
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = threadIdx.x; j < k.r; j += blockDim.x) m = MaxOp{}(m, px[j]);
  const T mx = static_cast<T>(block_max(m, scratch));
  double s = 0;
  for (int64_t j = threadIdx.x; j < k.r; j += blockDim.x) s += exp(px[j] - mx);
  const T sum = static_cast<T>(block_sum(s, scratch));
  if (k.log) {
    const T lse = log(sum);
    for (int64_t j = threadIdx.x; j < k.r; j += blockDim.x) py[j] = px[j] - mx - lse;
  } else {
    const T inv = T(1) / sum;
    for (int64_t j = threadIdx.x; j < k.r; j += blockDim.x) py[j] = exp(px[j] - mx) * inv;
  }
}

/// kernels::SoftmaxBackwardLines for contiguous lines, block b on line b.
template <class T>
__global__ void softmax_backward_rows_kernel(kernels::SoftmaxBackwardLines<T> k) {
  __shared__ double scratch[32];
  const int64_t base = blockIdx.x * k.r;
  double d = 0;
  for (int64_t j = threadIdx.x; j < k.r; j += blockDim.x) {
    const int64_t i = base + j;
    d += k.log ? k.gy[i] : k.gy[i] * k.y[i];
  }
  const T dot = static_cast<T>(block_sum(d, scratch));
  for (int64_t j = threadIdx.x; j < k.r; j += blockDim.x) {
    const int64_t i = base + j;
    k.dx[i] = k.log ? k.gy[i] - exp(k.y[i]) * dot : k.y[i] * (k.gy[i] - dot);
  }
}

/// kernels::CrossEntropyRows with block b on row b: maximum, sum of exponentials and sum of log
/// probabilities as block reductions in double, then the functor's formulas.
template <class T>
__global__ void cross_entropy_rows_kernel(kernels::CrossEntropyRows<T> k) {
  __shared__ double scratch[32];
  const int64_t row = blockIdx.x;
  const T* x = k.logits + row * k.c;
  T* p = k.probs + row * k.c;
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = threadIdx.x; j < k.c; j += blockDim.x) m = MaxOp{}(m, x[j]);
  const T mx = static_cast<T>(block_max(m, scratch));
  double s = 0;
  for (int64_t j = threadIdx.x; j < k.c; j += blockDim.x) s += exp(static_cast<double>(x[j] - mx));
  const double lse = log(block_sum(s, scratch)) + static_cast<double>(mx);
  double all = 0;
  for (int64_t j = threadIdx.x; j < k.c; j += blockDim.x) {
    const double logp = static_cast<double>(x[j]) - lse;
    all += logp;
    p[j] = static_cast<T>(exp(logp));
  }
  all = block_sum(all, scratch);
  if (threadIdx.x == 0) {
    const double target_logp = static_cast<double>(x[k.targets[row]]) - lse;
    k.row_loss[row] = static_cast<T>(-(1 - k.smoothing) * target_logp - k.smoothing * all / k.c);
  }
}

/// Threads for a block that reduces one channel of `count` values: a multiple of 32, at most 512.
int channel_threads(int64_t count) {
  return static_cast<int>(std::clamp<int64_t>((count + 31) / 32, 1, 16) * 32);
}

/// Short rows (inner == 1, small r): one thread per row, sequential in double like the CPU.
template <class T>
__global__ void sum_short_rows_kernel(const T* x, T* y, int64_t rows, int64_t r) {
  DTRAIN_GRID_STRIDE(row, rows) {
    double acc = 0;
    for (int64_t k = 0; k < r; ++k) acc += static_cast<double>(x[row * r + k]);
    y[row] = static_cast<T>(acc);
  }
}

/// Strided lines (inner > 1): one thread per output, neighbours read neighbouring addresses, and
/// the sum runs in T in the CPU's order (k = 0, 1, ...), so both give the same bits.
template <class T>
__global__ void sum_columns_kernel(const T* x, T* y, int64_t outer, int64_t r, int64_t inner) {
  DTRAIN_GRID_STRIDE(idx, outer * inner) {
    const int64_t o = idx / inner, i = idx % inner;
    T acc = 0;
    for (int64_t k = 0; k < r; ++k) acc += x[(o * r + k) * inner + i];
    y[idx] = acc;
  }
}

cublasHandle_t cublas_handle(int device) {
  static std::mutex mu;
  static std::vector<cublasHandle_t> handles;
  std::lock_guard lock(mu);
  if (static_cast<int>(handles.size()) <= device) handles.resize(device + 1, nullptr);
  if (handles[device] == nullptr) {
    DeviceGuard guard(device);
    DTRAIN_CUBLAS_CHECK(cublasCreate(&handles[device]));
  }
  return handles[device];
}

template <class Kernel>
__global__ void functor_kernel(Kernel k, int64_t n) {
  DTRAIN_GRID_STRIDE(i, n) k(i);
}

}  // namespace

template <class Kernel>
void launch(int64_t n, const Kernel& k, int device) {
  DeviceGuard guard(device);
  if constexpr (IsGather<Kernel>::value) {
    with_index_type(k.index, n, [&](auto tag, const auto& index) {
      using I = decltype(tag);
      gather_kernel<<<blocks_for(n), kThreads>>>(k.x, k.out, static_cast<I>(n), index);
    });
  } else {
    functor_kernel<Kernel><<<blocks_for(n), kThreads>>>(k, n);
  }
  check_launch(typeid(Kernel).name(), device);
}

template <class T>
void batch_norm(const kernels::BatchNormChannels<T>& k, int device) {
  if (k.c == 0) return;
  DeviceGuard guard(device);
  batch_norm_kernel<T><<<static_cast<unsigned>(k.c), channel_threads(k.n * k.hw)>>>(k);
  check_launch("batch_norm_kernel", device);
}

template <class T>
void batch_norm_backward(const kernels::BatchNormBackwardChannels<T>& k, int device) {
  if (k.c == 0) return;
  DeviceGuard guard(device);
  batch_norm_backward_kernel<T><<<static_cast<unsigned>(k.c), channel_threads(k.n * k.hw)>>>(k);
  check_launch("batch_norm_backward_kernel", device);
}

template <class T>
void softmax_rows(const kernels::SoftmaxLines<T>& k, int64_t rows, int device) {
  if (rows == 0) return;
  DeviceGuard guard(device);
  softmax_rows_kernel<T><<<static_cast<unsigned>(rows), reduce_threads_for(k.r)>>>(k);
  check_launch("softmax_rows_kernel", device);
}

template <class T>
void softmax_backward_rows(const kernels::SoftmaxBackwardLines<T>& k, int64_t rows, int device) {
  if (rows == 0) return;
  DeviceGuard guard(device);
  softmax_backward_rows_kernel<T><<<static_cast<unsigned>(rows), reduce_threads_for(k.r)>>>(k);
  check_launch("softmax_backward_rows_kernel", device);
}

template <class T>
void cross_entropy_rows(const kernels::CrossEntropyRows<T>& k, int64_t rows, int device) {
  if (rows == 0) return;
  DeviceGuard guard(device);
  cross_entropy_rows_kernel<T><<<static_cast<unsigned>(rows), reduce_threads_for(k.c)>>>(k);
  check_launch("cross_entropy_rows_kernel", device);
}

#define DTRAIN_ROW_KERNELS(T)                                                                    \
  template void softmax_rows<T>(const kernels::SoftmaxLines<T>&, int64_t, int);                  \
  template void softmax_backward_rows<T>(const kernels::SoftmaxBackwardLines<T>&, int64_t, int); \
  template void cross_entropy_rows<T>(const kernels::CrossEntropyRows<T>&, int64_t, int)
DTRAIN_ROW_KERNELS(float);
DTRAIN_ROW_KERNELS(double);

template void batch_norm<float>(const kernels::BatchNormChannels<float>&, int);
template void batch_norm<double>(const kernels::BatchNormChannels<double>&, int);
template void batch_norm_backward<float>(const kernels::BatchNormBackwardChannels<float>&, int);
template void batch_norm_backward<double>(const kernels::BatchNormBackwardChannels<double>&, int);

// One line per functor of tensor/kernels_nn.h and optimiser step of tensor/kernels.h (float and
// double where templated on T).
#define DTRAIN_LAUNCH_FLOATING(K)                                                  \
  template void launch<kernels::K<float>>(int64_t, const kernels::K<float>&, int); \
  template void launch<kernels::K<double>>(int64_t, const kernels::K<double>&, int)
DTRAIN_LAUNCH_FLOATING(SoftmaxLines);
DTRAIN_LAUNCH_FLOATING(SoftmaxBackwardLines);
DTRAIN_LAUNCH_FLOATING(CrossEntropyRows);
DTRAIN_LAUNCH_FLOATING(CrossEntropyBackward);
DTRAIN_LAUNCH_FLOATING(NllRows);
DTRAIN_LAUNCH_FLOATING(NllBackwardRows);
DTRAIN_LAUNCH_FLOATING(LayerNormRows);
DTRAIN_LAUNCH_FLOATING(LayerNormBackwardRows);
DTRAIN_LAUNCH_FLOATING(LayerNormParamGradColumns);
DTRAIN_LAUNCH_FLOATING(BatchNormChannels);
DTRAIN_LAUNCH_FLOATING(BatchNormBackwardChannels);
DTRAIN_LAUNCH_FLOATING(MaxLines);
DTRAIN_LAUNCH_FLOATING(MaxLinesBackward);
DTRAIN_LAUNCH_FLOATING(MaxPoolForward);
DTRAIN_LAUNCH_FLOATING(MaxPoolBackwardPlanes);
DTRAIN_LAUNCH_FLOATING(MaxPool2x2BackwardWindows);
DTRAIN_LAUNCH_FLOATING(AvgPoolForward);
DTRAIN_LAUNCH_FLOATING(AvgPoolBackwardPlanes);
DTRAIN_LAUNCH_FLOATING(Im2colRows);
DTRAIN_LAUNCH_FLOATING(Col2imPlanes);
DTRAIN_LAUNCH_FLOATING(EmbeddingGather);
DTRAIN_LAUNCH_FLOATING(EmbeddingScatterColumns);
DTRAIN_LAUNCH_FLOATING(WhereElements);
DTRAIN_LAUNCH_FLOATING(UniformFill);
DTRAIN_LAUNCH_FLOATING(NormalFill);
DTRAIN_LAUNCH_FLOATING(DropoutMaskFill);
DTRAIN_LAUNCH_FLOATING(AdamStep);
DTRAIN_LAUNCH_FLOATING(RmspropStep);
// SgdStep: the five variants kernels::dispatch_sgd_variant selects.
#define DTRAIN_LAUNCH_SGD(T, M, N, F)                                                              \
  template void launch<kernels::SgdStep<T, M, N, F>>(int64_t, const kernels::SgdStep<T, M, N, F>&, \
                                                     int)
#define DTRAIN_LAUNCH_SGD_VARIANTS(T)        \
  DTRAIN_LAUNCH_SGD(T, false, false, false); \
  DTRAIN_LAUNCH_SGD(T, true, false, false);  \
  DTRAIN_LAUNCH_SGD(T, true, false, true);   \
  DTRAIN_LAUNCH_SGD(T, true, true, false);   \
  DTRAIN_LAUNCH_SGD(T, true, true, true)
DTRAIN_LAUNCH_SGD_VARIANTS(float);
DTRAIN_LAUNCH_SGD_VARIANTS(double);
template void launch<kernels::MaxLines<int64_t>>(int64_t, const kernels::MaxLines<int64_t>&, int);
template void launch<kernels::MaxLines<int32_t>>(int64_t, const kernels::MaxLines<int32_t>&, int);
template void launch<kernels::WhereElements<int64_t>>(int64_t,
                                                      const kernels::WhereElements<int64_t>&, int);
template void launch<kernels::GatherElements<uint8_t>>(int64_t,
                                                       const kernels::GatherElements<uint8_t>&,
                                                       int);
template void launch<kernels::GatherElements<uint16_t>>(int64_t,
                                                        const kernels::GatherElements<uint16_t>&,
                                                        int);
template void launch<kernels::GatherElements<uint32_t>>(int64_t,
                                                        const kernels::GatherElements<uint32_t>&,
                                                        int);
template void launch<kernels::GatherElements<uint64_t>>(int64_t,
                                                        const kernels::GatherElements<uint64_t>&,
                                                        int);

void copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width,
             size_t rows, int device) {
  if (width == 0 || rows == 0) return;
  // Issued from the buffers' device: from another device's context the copy would go through
  // peer access and that device's stream instead.
  DeviceGuard guard(device);
  DTRAIN_CUDA_CHECK(cudaMemcpy2D(dst, dst_pitch, src, src_pitch, width, rows, cudaMemcpyDefault));
}

bool available() { return device_count() > 0; }

int device_count() {
  static const int count = [] {
    int n = 0;
    // Without a driver this returns an error (cudaErrorInsufficientDriver, 35): no GPU.
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    return n;
  }();
  return count;
}

std::string unavailable_reason() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return "cudaGetDeviceCount failed with error " + std::to_string(static_cast<int>(err)) + " (" +
           cudaGetErrorString(err) + ")";
  }
  return n == 0 ? "no CUDA device present" : "";
}

Allocator& allocator(int device) {
  // Every tensor allocation and free asks for its device's allocator: once made, it is found
  // without a lock (the lock and the device checks stay on the first call per device).
  constexpr int kFastDevices = 64;
  static std::array<std::atomic<CachingCudaAllocator*>, kFastDevices> made{};
  if (device >= 0 && device < kFastDevices) {
    if (CachingCudaAllocator* a = made[device].load(std::memory_order_acquire)) return *a;
  }
  static std::mutex mu;
  static std::vector<CachingCudaAllocator*> allocators;  // leaked: outlives static tensors
  std::lock_guard lock(mu);
  const int count = device_count();
  if (count == 0) {
    DTRAIN_THROW(UnsupportedError, "cuda:", device, " is not available: no usable CUDA device (",
                 unavailable_reason(), ")");
  }
  if (device < 0 || device >= count) {
    DTRAIN_THROW(ValueError, "cuda:", device, " does not exist: this machine has ", count,
                 " CUDA device", count == 1 ? "" : "s", " (cuda:0 to cuda:", count - 1, ")");
  }
  if (static_cast<int>(allocators.size()) <= device) allocators.resize(device + 1, nullptr);
  if (allocators[device] == nullptr) {
    allocators[device] = new CachingCudaAllocator(device);
    if (device < kFastDevices) made[device].store(allocators[device], std::memory_order_release);
  }
  return *allocators[device];
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes) {
  if (nbytes == 0) return;
  // Unified addressing tells cudaMemcpyDefault which side each pointer is on. The copy is issued
  // from the device side's context (the destination's when both are GPUs), whatever this thread
  // had current.
  DeviceGuard guard(dst_device.is_cuda() ? dst_device.index : src_device.index);
  DTRAIN_CUDA_CHECK(cudaMemcpy(dst, src, nbytes, cudaMemcpyDefault));
}

void record_stream(const Storage& storage, void* stream) {
  if (!storage.device().is_cuda() || !storage.from_allocator()) return;
  static_cast<CachingCudaAllocator&>(allocator(storage.device().index))
      .record_stream(storage.data(), static_cast<cudaStream_t>(stream));
}

void set_device(int device) {
  const int count = device_count();
  if (device < 0 || device >= count) {
    DTRAIN_THROW(ValueError, "cuda:", device, " does not exist: this machine has ", count,
                 " CUDA device", count == 1 ? "" : "s");
  }
  DTRAIN_CUDA_CHECK(cudaSetDevice(device));
}

int current_device() {
  int device = 0;
  DTRAIN_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

namespace {
// ---- index checks without a wait ------------------------------------------------------------
/// The first bad index a check found, in mapped pinned host memory: the kernel writes it and the
/// host reads it with neither a copy nor a wait, once the kernel has run.
struct IndexErrorSlot {
  int64_t position, value, limit;
  uint64_t op;  // the const char* of the op's name (a string literal)
  int found;
};

/// One slot per device, made on first use and kept for the process.
IndexErrorSlot* index_error_slot(int device, std::unique_lock<std::mutex>& lock) {
  static std::mutex mu;
  static std::vector<IndexErrorSlot*> slots;
  lock = std::unique_lock(mu);
  if (static_cast<int>(slots.size()) <= device) slots.resize(device + 1, nullptr);
  if (slots[device] == nullptr) {
    DeviceGuard guard(device);
    void* p = nullptr;
    DTRAIN_CUDA_CHECK(cudaHostAlloc(&p, sizeof(IndexErrorSlot), cudaHostAllocMapped));
    slots[device] = static_cast<IndexErrorSlot*>(p);
    *slots[device] = IndexErrorSlot{};
  }
  return slots[device];
}

/// Throws the bad index an earlier check recorded on `device` (once; the slot is cleared).
void throw_recorded_index_error(int device) {
  std::unique_lock<std::mutex> lock;
  IndexErrorSlot* slot = index_error_slot(device, lock);
  volatile IndexErrorSlot* seen = slot;
  if (seen->found == 0) return;
  std::atomic_thread_fence(std::memory_order_acquire);
  const IndexErrorSlot e{seen->position, seen->value, seen->limit, seen->op, 1};
  seen->found = 0;
  DTRAIN_THROW(ValueError, reinterpret_cast<const char*>(e.op), ": target ", e.value,
               " at position ", e.position, " is outside [0, ", e.limit,
               ") (found on cuda:", device,
               " by the device-side check of an earlier call, which does not wait for the device)");
}

/// One block: safe[i] = idx[i] or 0 where out of range; the first bad position (a fixed-order
/// minimum over the block, no atomics) goes to the slot unless it already holds one.
__global__ void check_indices_kernel(const int64_t* idx, int64_t* safe, int64_t n, int64_t limit,
                                     uint64_t op, IndexErrorSlot* slot) {
  __shared__ int64_t first[32];
  int64_t bad = n;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t v = idx[i];
    const bool ok = v >= 0 && v < limit;
    safe[i] = ok ? v : 0;
    if (!ok && i < bad) bad = i;
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    const int64_t other = __shfl_down_sync(0xffffffffu, bad, offset);
    bad = other < bad ? other : bad;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) first[warp] = bad;
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) bad = first[w] < bad ? first[w] : bad;
  if (bad >= n || slot->found != 0) return;
  slot->position = bad;
  slot->value = idx[bad];
  slot->limit = limit;
  slot->op = op;
  __threadfence_system();  // the fields reach the host before the flag
  *static_cast<volatile int*>(&slot->found) = 1;
}
}  // namespace

void check_indices(const int64_t* idx, int64_t* safe, int64_t n, int64_t limit, const char* op,
                   int device) {
  if (n <= 0) return;
  throw_recorded_index_error(device);
  std::unique_lock<std::mutex> lock;
  IndexErrorSlot* slot = index_error_slot(device, lock);
  lock.unlock();
  IndexErrorSlot* on_device = nullptr;
  DeviceGuard guard(device);
  DTRAIN_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&on_device), slot, 0));
  check_indices_kernel<<<1, reduce_threads_for(n)>>>(idx, safe, n, limit,
                                                     reinterpret_cast<uint64_t>(op), on_device);
  check_launch("check_indices_kernel", device);
}

void synchronize(int device) {
  {
    DeviceGuard guard(device);
    DTRAIN_CUDA_CHECK(cudaDeviceSynchronize());
  }
  throw_recorded_index_error(device);
}

// ---- DefaultStreamHold ----------------------------------------------------------------------
struct DefaultStreamHold::State {
  std::mutex mu;
  std::condition_variable cv;
  bool released = false;
  std::chrono::milliseconds limit{0};
};

namespace {
/// Runs on CUDA's callback thread in stream order; it may not call CUDA, only wait.
void CUDART_CB wait_for_release(void* data) {
  std::unique_ptr<std::shared_ptr<DefaultStreamHold::State>> owned(
      static_cast<std::shared_ptr<DefaultStreamHold::State>*>(data));
  DefaultStreamHold::State& st = **owned;
  std::unique_lock lock(st.mu);
  if (!st.cv.wait_for(lock, st.limit, [&] { return st.released; })) {
    std::fprintf(stderr, "dtrain: DefaultStreamHold was not released within %lld ms; going on\n",
                 static_cast<long long>(st.limit.count()));
  }
}
}  // namespace

DefaultStreamHold::DefaultStreamHold(int device, std::chrono::milliseconds limit)
    : state_(std::make_shared<State>()) {
  state_->limit = limit;
  DeviceGuard guard(device);
  auto* data = new std::shared_ptr<State>(state_);
  if (const cudaError_t err = cudaLaunchHostFunc(cudaStreamLegacy, wait_for_release, data);
      err != cudaSuccess) {
    delete data;
    DTRAIN_CUDA_CHECK(err);
  }
}

DefaultStreamHold::~DefaultStreamHold() { release(); }

void DefaultStreamHold::release() {
  {
    std::lock_guard lock(state_->mu);
    state_->released = true;
  }
  state_->cv.notify_all();
}

void fill(void* dst, DType dtype, int64_t n, double value, int device) {
  DeviceGuard guard(device);
  fill_kernel<<<blocks_for(n), kThreads>>>(dst, dtype, n, value);
  check_launch("fill_kernel", device);
}

void convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n, int device) {
  DeviceGuard guard(device);
  convert_kernel<<<blocks_for(n), kThreads>>>(src, src_dtype, dst, dst_dtype, n);
  check_launch("convert_kernel", device);
}

void unary(kernels::Unary op, DType dtype, const void* x, void* y, int64_t n,
           kernels::UnaryParams params, int device) {
  DeviceGuard guard(device);
  detail::dispatch_floating(dtype, "unary op", [&](auto tag) {
    using T = decltype(tag);
    unary_kernel<T>
        <<<blocks_for(n), kThreads>>>(op, static_cast<const T*>(x), static_cast<T*>(y), n, params);
  });
  check_launch("unary_kernel", device);
}

void binary(kernels::Binary op, DType dtype, const void* a, const void* b, void* out, int64_t n,
            const kernels::BroadcastIndex& index, int device) {
  if (n <= 0) return;
  DeviceGuard guard(device);
  detail::dispatch_floating(dtype, "binary op", [&](auto tag) {
    using T = decltype(tag);
    with_index_type(index, n, [&](auto index_tag, const auto& strided) {
      using I = decltype(index_tag);
      const T* pa = static_cast<const T*>(a);
      const T* pb = static_cast<const T*>(b);
      if (kernels::is_comparison(op)) {
        binary_kernel<T, bool, I><<<blocks_for(n), kThreads>>>(op, pa, pb, static_cast<bool*>(out),
                                                               static_cast<I>(n), strided);
      } else {
        binary_kernel<T, T, I><<<blocks_for(n), kThreads>>>(op, pa, pb, static_cast<T*>(out),
                                                            static_cast<I>(n), strided);
      }
    });
  });
  check_launch("binary_kernel", device);
}

namespace {
/// Rows at least this long get a block each (or several) instead of a thread.
constexpr int64_t kBlockRowMin = 32;
/// Elements one block sums at least, when a long row is split across blocks.
constexpr int64_t kElementsPerBlock = 16 * kThreads;
/// Blocks in the first stage of a split row sum, at most (the second stage is one block each).
constexpr int64_t kMaxSplitBlocks = 1024;

/// Device scratch from the caching allocator, returned when it goes out of scope. Safe to return
/// right after the kernels that use it are queued: later users of the block are queued after them
/// on the same (default) stream.
class DeviceScratch {
 public:
  DeviceScratch(int device, size_t nbytes)
      : allocator_(allocator(device)), nbytes_(nbytes), ptr_(allocator_.allocate(nbytes)) {}
  ~DeviceScratch() { allocator_.deallocate(ptr_, nbytes_); }
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  Allocator& allocator_;
  size_t nbytes_;
  void* ptr_;
};

/// y[row] = sum of x[row, 0..r) for rows of length r >= kBlockRowMin: a block per row, or when
/// rows are few and long (a full sum is one row) each row split over several blocks whose double
/// partial sums a second kernel adds, again in a fixed order.
template <class T>
void sum_long_rows(const T* x, T* y, int64_t rows, int64_t r, int device) {
  const int64_t splits = std::clamp<int64_t>((r + kElementsPerBlock - 1) / kElementsPerBlock, 1,
                                             std::max<int64_t>(1, kMaxSplitBlocks / rows));
  if (splits == 1) {
    sum_rows_kernel<T, T>
        <<<static_cast<unsigned>(rows), reduce_threads_for(r)>>>(x, y, r, int64_t{1}, r);
    check_launch("sum_rows_kernel", device);
    return;
  }
  const int64_t chunk = (r + splits - 1) / splits;
  DeviceScratch partial(device, static_cast<size_t>(rows * splits) * sizeof(double));
  sum_rows_kernel<T, double><<<static_cast<unsigned>(rows * splits), kThreads>>>(
      x, partial.as<double>(), r, splits, chunk);
  check_launch("sum_rows_kernel", device);
  sum_rows_kernel<double, T><<<static_cast<unsigned>(rows), reduce_threads_for(splits)>>>(
      partial.as<double>(), y, splits, int64_t{1}, splits);
  check_launch("sum_rows_kernel", device);
}
}  // namespace

void sum_dim(DType dtype, const void* x, void* y, int64_t outer, int64_t r, int64_t inner,
             int device) {
  if (outer * inner == 0) return;
  DeviceGuard guard(device);
  detail::dispatch_floating(dtype, "sum", [&](auto tag) {
    using T = decltype(tag);
    const T* in = static_cast<const T*>(x);
    T* out = static_cast<T*>(y);
    if (inner > 1) {
      sum_columns_kernel<T><<<blocks_for(outer * inner), kThreads>>>(in, out, outer, r, inner);
      check_launch("sum_columns_kernel", device);
    } else if (r < kBlockRowMin || outer > std::numeric_limits<int>::max()) {
      sum_short_rows_kernel<T><<<blocks_for(outer), kThreads>>>(in, out, outer, r);
      check_launch("sum_short_rows_kernel", device);
    } else {
      sum_long_rows<T>(in, out, outer, r, device);
    }
  });
}

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc, int device) {
  DeviceGuard guard(device);
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands, keep the
  // transpose flags, no copies.
  DTRAIN_CUBLAS_CHECK(cublasSgemm(cublas_handle(device), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                  trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n),
                                  static_cast<int>(m), static_cast<int>(k), &alpha, b,
                                  static_cast<int>(ldb), a, static_cast<int>(lda), &beta, c,
                                  static_cast<int>(ldc)));
  check_launch("cublasSgemm", device);
}

void gemm_16bit(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                const void* a, int64_t lda, const void* b, int64_t ldb, float beta, float* c,
                int64_t ldc, DType operand_dtype, int device) {
  DeviceGuard guard(device);
  const cudaDataType_t operands = operand_dtype == DType::kBFloat16 ? CUDA_R_16BF : CUDA_R_16F;
  // Column-major C^T = op(B)^T op(A)^T, as in gemm; tensor cores with float32 accumulation.
  DTRAIN_CUBLAS_CHECK(cublasGemmEx(cublas_handle(device), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                   trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n),
                                   static_cast<int>(m), static_cast<int>(k), &alpha, b, operands,
                                   static_cast<int>(ldb), a, operands, static_cast<int>(lda), &beta,
                                   c, CUDA_R_32F, static_cast<int>(ldc), CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
  check_launch("cublasGemmEx", device);
}

}  // namespace dtrain::cuda
