// cuDNN convolution and batched GEMM for a build without CUDA: report why and refuse.
#include "dtrain/tensor/check.h"
#include "dtrain/tensor/cuda/cuda_gemm_batched.h"
#include "dtrain/tensor/cuda/cudnn_conv.h"

namespace dtrain::cuda {
namespace {
[[noreturn]] void refuse(const char* what) {
  DTRAIN_THROW(UnsupportedError, what,
               ": this dtrain was built without CUDA (configure with -DDTRAIN_CUDA=ON and nvcc)");
}
}  // namespace

bool cudnn_loaded() { return false; }
std::string cudnn_unavailable_reason() { return "dtrain was built without CUDA"; }

bool cudnn_conv_forward(const ConvShape&, const float*, const float*, float*, int) {
  refuse("cuDNN convolution");
}
bool cudnn_conv_backward_data(const ConvShape&, const float*, const float*, float*, int) {
  refuse("cuDNN convolution backward");
}
bool cudnn_conv_backward_filter(const ConvShape&, const float*, const float*, float*, int) {
  refuse("cuDNN convolution backward");
}

void gemm_strided_batched(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          int64_t, const float*, int64_t, int64_t, float, float*, int64_t, int64_t,
                          int64_t, int) {
  refuse("batched gemm on CUDA");
}

}  // namespace dtrain::cuda
