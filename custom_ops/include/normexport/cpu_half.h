// Bulk float16 <-> float conversion for CPU kernels (host C++ only, not for nvcc).
//
// Uses the x86 F16C instructions when the running CPU has them (checked once at
// run time, so the library still targets baseline x86-64) and the exact scalar
// conversions of common.h otherwise. Both paths round to nearest even and give
// bit-identical results for every non-NaN value.
#pragma once

#include <cstddef>
#include <cstdint>

#include "normexport/common.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(__CUDACC__)
#define NORMEXPORT_HAVE_F16C_DISPATCH 1
#include <immintrin.h>
#endif

namespace normexport {

inline void half_to_float_n_scalar(const half* src, float* dst, size_t n) noexcept {
  for (size_t i = 0; i < n; ++i) dst[i] = half_bits_to_float(src[i].bits);
}

inline void float_to_half_n_scalar(const float* src, half* dst, size_t n) noexcept {
  for (size_t i = 0; i < n; ++i) dst[i].bits = float_to_half_bits(src[i]);
}

#if defined(NORMEXPORT_HAVE_F16C_DISPATCH)
namespace detail {
__attribute__((target("avx,f16c"))) inline void half_to_float_n_f16c(const half* src, float* dst,
                                                                    size_t n) noexcept {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) dst[i] = half_bits_to_float(src[i].bits);
}

__attribute__((target("avx,f16c"))) inline void float_to_half_n_f16c(const float* src, half* dst,
                                                                    size_t n) noexcept {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
  }
  for (; i < n; ++i) dst[i].bits = float_to_half_bits(src[i]);
}

inline bool cpu_has_f16c() noexcept {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  }();
  return has;
}
}  // namespace detail
#endif

inline void half_to_float_n(const half* src, float* dst, size_t n) noexcept {
#if defined(NORMEXPORT_HAVE_F16C_DISPATCH)
  if (detail::cpu_has_f16c()) return detail::half_to_float_n_f16c(src, dst, n);
#endif
  half_to_float_n_scalar(src, dst, n);
}

inline void float_to_half_n(const float* src, half* dst, size_t n) noexcept {
#if defined(NORMEXPORT_HAVE_F16C_DISPATCH)
  if (detail::cpu_has_f16c()) return detail::float_to_half_n_f16c(src, dst, n);
#endif
  float_to_half_n_scalar(src, dst, n);
}

}  // namespace normexport
