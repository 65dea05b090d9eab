// cuDNN convolution on raw device pointers. libcudnn is opened at run time (dlopen), so dtrain
// never links it and runs where it is missing; the choice between cuDNN and im2col + cuBLAS, and
// the pieces of it that need no GPU (the DTRAIN_CUDNN switch, the loader, the algorithm-cache
// key), are here too. No CUDA or cuDNN header reaches the includer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace dtrain::cuda {

/// A float32 NCHW convolution: x [n, c, h, w], w [o, c, kh, kw], y [n, o, oh, ow]; dilation 1
/// and one group, which is what ops::conv2d offers.
struct ConvShape {
  int64_t n = 0, c = 0, h = 0, w = 0, o = 0, kh = 0, kw = 0, stride = 1, padding = 0;
  int64_t oh() const { return (h + 2 * padding - kh) / stride + 1; }
  int64_t ow() const { return (w + 2 * padding - kw) / stride + 1; }
  bool operator==(const ConvShape&) const = default;
};

enum class ConvPass { kForward, kBackwardData, kBackwardFilter };

/// Key of the per-process algorithm cache: one choice per device, pass and shape.
struct ConvAlgoKey {
  int device = 0;
  ConvPass pass = ConvPass::kForward;
  ConvShape shape;
  bool operator==(const ConvAlgoKey&) const = default;
};
struct ConvAlgoKeyHash {
  size_t operator()(const ConvAlgoKey& key) const;
};

/// The value of DTRAIN_CUDNN: unset, "" or "1" lets CUDA convolutions use cuDNN; "0" sends them
/// to im2col + cuBLAS. Anything else throws ValueError naming the variable.
bool parse_cudnn_env(const char* value);

/// A library opened with dlopen: `handle` is null when none of the names loaded, and `error`
/// then holds each name's dlerror().
struct SharedLibrary {
  void* handle = nullptr;
  std::string name;   // the name that loaded
  std::string error;  // why none loaded
};
/// Tries `names` in order (RTLD_NOW | RTLD_LOCAL). The handle is never closed.
SharedLibrary open_shared_library(const std::vector<std::string>& names);

/// Whether CUDA convolutions may use cuDNN: DTRAIN_CUDNN, read at the first call, until
/// set_cudnn_allowed() changes it (tests run both paths in one process). Thread-safe.
bool cudnn_allowed();
void set_cudnn_allowed(bool allowed);

/// True when libcudnn.so.9 (or libcudnn.so) loaded and every entry point dtrain uses resolved.
/// Needs no GPU. The first time it is false, prints one line to stderr:
/// "dtrain: cuDNN not found (<why>); CUDA convolutions use im2col + cuBLAS". Thread-safe.
bool cudnn_loaded();
/// Why cudnn_loaded() is false; "" when it is true.
std::string cudnn_unavailable_reason();

/// The three passes on device memory of cuda:`device`, enqueued on its legacy default stream
/// (the stream every dtrain kernel uses, so no synchronisation is needed around them), with a
/// workspace from dtrain's caching allocator. FP32 arithmetic (no TF32) with an algorithm from
/// cuDNN's heuristics that is deterministic, chosen once per shape. Each returns false, having
/// done nothing, when cuDNN offers no such algorithm; the caller then uses im2col + cuBLAS.
/// Throws ValueError on a cuDNN or CUDA error. Requires cudnn_loaded().
/// y = conv(x, w), overwriting y.
bool cudnn_conv_forward(const ConvShape& s, const float* x, const float* w, float* y, int device);
/// dx = the gradient of conv(x, w) for x given gy, overwriting dx.
bool cudnn_conv_backward_data(const ConvShape& s, const float* gy, const float* w, float* dx,
                              int device);
/// dw = the gradient of conv(x, w) for w given gy, summed over the batch, overwriting dw.
bool cudnn_conv_backward_filter(const ConvShape& s, const float* gy, const float* x, float* dw,
                                int device);

}  // namespace dtrain::cuda
