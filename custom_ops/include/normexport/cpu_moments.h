// Framework-free CPU statistics helpers (host C++ only): numerically stable
// mean / biased variance of contiguous values, and a double split into a
// hi + lo pair of the compute type so that x - mean stays exact-ish for data
// with a large mean and a small spread (mean 1e3, std 1e-2 in float32).
//
// * Two passes (mean, then the mean of squared deviations) over chunks of
//   kMomentChunk values (the second pass hits L2, so memory is read once), the
//   chunks combined with Chan's formula (no E[x^2] - E[x]^2 anywhere).
//   double: double lanes. float (and float16, converted in stack chunks, F16C
//   when present): float lanes over short blocks (16 terms per lane) totalled
//   in double; pass 1 sums x - k (k = mean of the first 8 values), pass 2 sums
//   (x - m)^2 with m = the float-rounded mean, corrected exactly by n (mean - m)^2.
//   Overflow of the float sums (values near FLT_MAX) or NaN/Inf data fall back
//   to double lanes for the chunk (NaN/Inf then make the variance NaN).
// * plane_moments runs an AVX2 + FMA copy when the CPU has them (checked once;
//   the library targets baseline x86-64).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

#include "normexport/common.h"
#include "normexport/cpu_half.h"

namespace normexport {
namespace moments {

// Element type -> arithmetic type (float for float/half, double for double).
template <typename T>
struct compute_type {
  using type = float;
};
template <>
struct compute_type<double> {
  using type = double;
};

inline constexpr int64_t kHalfChunk = 2048;

#if defined(__GNUC__)
#define NX_MOM_INLINE_EARLY inline __attribute__((always_inline))
#else
#define NX_MOM_INLINE_EARLY inline
#endif

template <typename C>
NX_MOM_INLINE_EARLY double sum(const C* x, int64_t n) noexcept {
  constexpr int kLanes = 8;
  double acc[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += static_cast<double>(x[i + j]);
  double s = 0.0;
  for (; i < n; ++i) s += static_cast<double>(x[i]);
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  return s;
}

template <typename C>
NX_MOM_INLINE_EARLY double centered_sq_sum(const C* x, int64_t n, double mean) noexcept {
  constexpr int kLanes = 8;
  double acc[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const double d = static_cast<double>(x[i + j]) - mean;
      acc[j] += d * d;
    }
  }
  double s = 0.0;
  for (; i < n; ++i) {
    const double d = static_cast<double>(x[i]) - mean;
    s += d * d;
  }
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  return s;
}

struct Moments {
  double mean, var;  // biased variance
};

// count, mean and sum of squared deviations of a set of values (GroupNorm's chunks, the
// channels-last column tiles), merged with Chan et al.'s pairwise formula (stable: no
// large-number cancellation). NaN / Inf propagate through the arithmetic.
struct Counted {
  int64_t count = 0;
  double mean = 0.0;
  double m2 = 0.0;
};

inline Counted Combine(const Counted& a, const Counted& b) noexcept {
  if (a.count == 0) return b;
  if (b.count == 0) return a;
  Counted r;
  r.count = a.count + b.count;
  const double n = static_cast<double>(r.count);
  const double delta = b.mean - a.mean;
  r.mean = a.mean + delta * (static_cast<double>(b.count) / n);
  r.m2 = a.m2 + b.m2 + delta * delta * (static_cast<double>(a.count) * static_cast<double>(b.count) / n);
  return r;
}

#if defined(__GNUC__)
#define NX_MOM_INLINE inline __attribute__((always_inline))
#else
#define NX_MOM_INLINE inline
#endif

inline constexpr int64_t kMomentChunk = int64_t{1} << 15;  // values per two-pass chunk (128 KiB float)

namespace detail {

// count, mean, sum of squared deviations of a chunk; combined with Chan et al.'s formula.
struct Partial {
  int64_t n;
  double mean, m2;
};

inline Partial combine(const Partial& a, const Partial& b) noexcept {
  if (a.n == 0) return b;
  const int64_t n = a.n + b.n;
  const double dn = static_cast<double>(n);
  const double delta = b.mean - a.mean;
  if (!std::isfinite(delta))  // Inf/NaN data: the plain mean (+-Inf or NaN), variance NaN
    return {n, a.mean * (static_cast<double>(a.n) / dn) + b.mean * (static_cast<double>(b.n) / dn),
            std::numeric_limits<double>::quiet_NaN()};
  return {n, a.mean + delta * (static_cast<double>(b.n) / dn),
          a.m2 + b.m2 + delta * delta * (static_cast<double>(a.n) * static_cast<double>(b.n) / dn)};
}

// Float sums run in kFloatLanes float lanes (lane k holds the elements i with i % 16 == k of a
// block) over blocks of kFloatBlock elements (16 terms per lane), each block's lanes added into
// as many double lanes (vector adds, no serial chain), the double lanes summed pairwise at the
// end.
constexpr int kFloatLanes = 16;
constexpr int64_t kFloatBlock = 16 * kFloatLanes;

NX_MOM_INLINE double reduce_lanes(double (&d)[kFloatLanes]) noexcept {
  for (int w = kFloatLanes / 2; w > 0; w /= 2)
    for (int j = 0; j < w; ++j) d[j] += d[j + w];
  return d[0];
}

// Mean of the first (up to) 8 values (pairwise, float): the shift of shifted_sum_f.
NX_MOM_INLINE float shift_of(const float* x, int64_t n) noexcept {
  if (n < 8) return x[0];
  return (((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7]))) * 0.125f;
}

// Block sums of f(x - k) over whole 16-value rows of x[0, n): d = x - k (Square: d * d) per
// lane, into dacc; returns the number of values consumed (a multiple of kFloatLanes).
#if defined(__GNUC__)
template <bool Square>
NX_MOM_INLINE int64_t lane_sums(const float* x, int64_t n, float k, double (&dacc)[kFloatLanes]) noexcept {
  typedef float v8 __attribute__((vector_size(32)));
  const v8 kk = {k, k, k, k, k, k, k, k};
  int64_t i = 0;
  while (i + kFloatLanes <= n) {
    const int64_t rows = std::min<int64_t>(kFloatBlock, n - i) / kFloatLanes;
    v8 a0 = {0, 0, 0, 0, 0, 0, 0, 0}, a1 = a0;
    for (int64_t r = 0; r < rows; ++r, i += kFloatLanes) {
      v8 v0, v1;
      std::memcpy(&v0, x + i, sizeof(v0));
      std::memcpy(&v1, x + i + 8, sizeof(v1));
      v0 -= kk;
      v1 -= kk;
      if constexpr (Square) {
        a0 += v0 * v0;
        a1 += v1 * v1;
      } else {
        a0 += v0;
        a1 += v1;
      }
    }
    for (int j = 0; j < 8; ++j) {
      dacc[j] += static_cast<double>(a0[j]);
      dacc[j + 8] += static_cast<double>(a1[j]);
    }
  }
  return i;
}
#else
template <bool Square>
NX_MOM_INLINE int64_t lane_sums(const float* x, int64_t n, float k, double (&dacc)[kFloatLanes]) noexcept {
  int64_t i = 0;
  while (i + kFloatLanes <= n) {
    const int64_t rows = std::min<int64_t>(kFloatBlock, n - i) / kFloatLanes;
    float acc[kFloatLanes] = {};
    for (int64_t r = 0; r < rows; ++r, i += kFloatLanes)
      for (int j = 0; j < kFloatLanes; ++j) {
        const float d = x[i + j] - k;
        acc[j] += Square ? d * d : d;
      }
    for (int j = 0; j < kFloatLanes; ++j) dacc[j] += static_cast<double>(acc[j]);
  }
  return i;
}
#endif

// sum(x - k) in float lanes, blocks totalled in double
NX_MOM_INLINE double shifted_sum_f(const float* x, int64_t n, float k) noexcept {
  double dacc[kFloatLanes] = {};
  int64_t i = lane_sums<false>(x, n, k, dacc);
  double total = 0.0;
  for (; i < n; ++i) total += static_cast<double>(x[i] - k);
  return total + reduce_lanes(dacc);
}

// sum((x - m)^2), m = (float)mean, in float lanes, blocks totalled in double, then the exact
// identity sum((x - m)^2) = sum((x - mean)^2) + n (mean - m)^2 removes the rounding of m
NX_MOM_INLINE double centered_sq_sum_f(const float* x, int64_t n, double mean) noexcept {
  const float m = static_cast<float>(mean);
  double dacc[kFloatLanes] = {};
  int64_t i = lane_sums<true>(x, n, m, dacc);
  double total = 0.0;
  for (; i < n; ++i) {
    const double d = static_cast<double>(x[i] - m);
    total += d * d;
  }
  total += reduce_lanes(dacc);
  const double r = mean - static_cast<double>(m);
  const double m2 = total - static_cast<double>(n) * r * r;
  return m2 > 0.0 ? m2 : (m2 == m2 ? 0.0 : m2);
}

template <typename C>
NX_MOM_INLINE Partial chunk_double(const C* x, int64_t n) noexcept {
  const double mean = sum(x, n) / static_cast<double>(n);
  return {n, mean, centered_sq_sum(x, n, mean)};
}

NX_MOM_INLINE Partial chunk_float(const float* x, int64_t n) noexcept {
  const float k = shift_of(x, n);
  const double mean = static_cast<double>(k) + shifted_sum_f(x, n, k) / static_cast<double>(n);
  if (!std::isfinite(mean)) return chunk_double(x, n);  // overflow of x - k, or NaN/Inf data
  const double m2 = centered_sq_sum_f(x, n, mean);
  if (!std::isfinite(m2)) return {n, mean, centered_sq_sum(x, n, mean)};
  return {n, mean, m2};
}

NX_MOM_INLINE Partial chunk(const double* x, int64_t n) noexcept { return chunk_double(x, n); }
NX_MOM_INLINE Partial chunk(const float* x, int64_t n) noexcept { return chunk_float(x, n); }

template <typename C>
NX_MOM_INLINE Moments chunked(const C* x, int64_t n) noexcept {
  Partial r{0, 0.0, 0.0};
  for (int64_t off = 0; off < n; off += kMomentChunk)
    r = combine(r, chunk(x + off, std::min(kMomentChunk, n - off)));
  return {r.mean, r.m2 / static_cast<double>(n)};
}

NX_MOM_INLINE Moments chunked_half(const half* x, int64_t n) noexcept {
  float buf[kHalfChunk];
  Partial r{0, 0.0, 0.0};
  for (int64_t off = 0; off < n; off += kHalfChunk) {
    const int64_t len = (n - off < kHalfChunk) ? n - off : kHalfChunk;
    half_to_float_n(x + off, buf, static_cast<size_t>(len));
    r = combine(r, chunk_float(buf, len));
  }
  return {r.mean, r.m2 / static_cast<double>(n)};
}

inline Moments base_float(const float* x, int64_t n) noexcept { return chunked(x, n); }
inline Moments base_double(const double* x, int64_t n) noexcept { return chunked(x, n); }
inline Moments base_half(const half* x, int64_t n) noexcept { return chunked_half(x, n); }

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(__CUDACC__)
#define NX_MOM_DISPATCH 1
__attribute__((target("avx2,fma"))) inline Moments avx2_float(const float* x, int64_t n) noexcept {
  return chunked(x, n);
}
__attribute__((target("avx2,fma"))) inline Moments avx2_double(const double* x, int64_t n) noexcept {
  return chunked(x, n);
}
__attribute__((target("avx2,fma"))) inline Moments avx2_half(const half* x, int64_t n) noexcept {
  return chunked_half(x, n);
}
inline bool cpu_has_avx2_fma() noexcept {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
}
#endif

}  // namespace detail

// Mean and biased variance of n > 0 contiguous values (NaN/Inf propagate like
// numpy: an Inf gives mean +-Inf and variance NaN).
inline Moments plane_moments(const float* x, int64_t n) noexcept {
#if defined(NX_MOM_DISPATCH)
  if (detail::cpu_has_avx2_fma()) return detail::avx2_float(x, n);
#endif
  return detail::base_float(x, n);
}
inline Moments plane_moments(const double* x, int64_t n) noexcept {
#if defined(NX_MOM_DISPATCH)
  if (detail::cpu_has_avx2_fma()) return detail::avx2_double(x, n);
#endif
  return detail::base_double(x, n);
}
inline Moments plane_moments(const half* x, int64_t n) noexcept {
#if defined(NX_MOM_DISPATCH)
  if (detail::cpu_has_avx2_fma()) return detail::avx2_half(x, n);
#endif
  return detail::base_half(x, n);
}

// v ~= hi + lo in the compute type C: (x - hi) is exact when x is near v
// (Sterbenz), so (x - hi) - lo keeps the small deviations of data with a large
// mean. Non-finite v: hi = v, lo = 0.
template <typename C>
struct Split {
  C hi, lo;
};
template <typename C>
inline Split<C> split(double v) noexcept {
  const C hi = static_cast<C>(v);
  if (!std::isfinite(hi)) return {hi, C(0)};
  return {hi, static_cast<C>(v - static_cast<double>(hi))};
}

// Scalar element -> compute type.
inline float load(half v) noexcept { return half_bits_to_float(v.bits); }
inline float load(float v) noexcept { return v; }
inline double load(double v) noexcept { return v; }

}  // namespace moments
}  // namespace normexport
