// CUDA entry points for a build without CUDA: report why and refuse.
#include "dtrain/tensor/check.h"
#include "dtrain/tensor/cuda/cuda_backend.h"

namespace dtrain::cuda {
namespace {
[[noreturn]] void refuse(const char* what) {
  DTRAIN_THROW(UnsupportedError, what,
               ": this dtrain was built without CUDA (configure with -DDTRAIN_CUDA=ON and nvcc)");
}
}  // namespace

bool available() { return false; }
int device_count() { return 0; }
std::string unavailable_reason() { return "dtrain was built without CUDA"; }
Allocator& allocator(int) { refuse("CUDA allocator"); }
void record_stream(const Storage&, void*) {}
DeviceGuard::DeviceGuard(int) { refuse("select a CUDA device"); }
DeviceGuard::~DeviceGuard() = default;
void set_device(int) { refuse("cudaSetDevice"); }
int current_device() { refuse("cudaGetDevice"); }
void synchronize(int) { refuse("synchronize a CUDA device"); }

struct DefaultStreamHold::State {};
DefaultStreamHold::DefaultStreamHold(int, std::chrono::milliseconds) {
  refuse("hold a CUDA stream");
}
DefaultStreamHold::~DefaultStreamHold() = default;
void DefaultStreamHold::release() {}
void check_indices(const int64_t*, int64_t*, int64_t, int64_t, const char*, int) {
  refuse("check indices on CUDA");
}
void copy_bytes(void*, Device, const void*, Device, size_t) { refuse("copy to/from CUDA"); }
void fill(void*, DType, int64_t, double, int) { refuse("fill on CUDA"); }
void convert(const void*, DType, void*, DType, int64_t, int) { refuse("to_dtype on CUDA"); }
void unary(kernels::Unary, DType, const void*, void*, int64_t, kernels::UnaryParams, int) {
  refuse("unary op on CUDA");
}
void binary(kernels::Binary, DType, const void*, const void*, void*, int64_t,
            const kernels::BroadcastIndex&, int) {
  refuse("binary op on CUDA");
}
void sum_dim(DType, const void*, void*, int64_t, int64_t, int64_t, int) { refuse("sum on CUDA"); }
void gemm(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
          int64_t, float, float*, int64_t, int) {
  refuse("gemm on CUDA");
}

void gemm_16bit(bool, bool, int64_t, int64_t, int64_t, float, const void*, int64_t, const void*,
                int64_t, float, float*, int64_t, DType, int) {
  refuse("16-bit gemm on CUDA");
}

void copy_2d(void*, size_t, const void*, size_t, size_t, size_t, int) {
  refuse("strided copy on CUDA");
}

}  // namespace dtrain::cuda
