// The x86 vector intrinsics, where the build targets AVX-512 or AVX2 (-march=native on such a
// CPU). The kernels test __AVX512F__ first and fall back to __AVX2__ (with __FMA__), then to
// scalar code.
#pragma once

#if defined(__AVX512F__) || defined(__AVX2__)
// GCC 12's AVX-512 intrinsics start some vectors from _mm512_undefined_*, which its middle end
// reports as uninitialised where they are inlined (GCC bug 105593, fixed in GCC 13).
#if !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif
