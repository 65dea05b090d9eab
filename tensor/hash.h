// FNV-1a, 64-bit: the fingerprint ranks compare (configs, models, parameters, host keys). Not
// cryptographic; equal inputs give equal values on every machine.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace dtrain {

inline constexpr uint64_t kFnv1aOffset = 1469598103934665603ull;

/// Folds `n` bytes into `h` (start from kFnv1aOffset; chain calls to hash several buffers).
inline uint64_t fnv1a(const void* data, size_t n, uint64_t h = kFnv1aOffset) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

inline uint64_t fnv1a(std::string_view s, uint64_t h = kFnv1aOffset) {
  return fnv1a(s.data(), s.size(), h);
}

}  // namespace dtrain
