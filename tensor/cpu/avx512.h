// The AVX-512 intrinsics, where the build targets them (-march=native on such a CPU).
#pragma once

#if defined(__AVX512F__)
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
