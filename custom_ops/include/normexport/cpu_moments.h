// Framework-free CPU statistics helpers (host C++ only): numerically stable
// mean / biased variance of contiguous values, and a double split into a
// hi + lo pair of the compute type so that x - mean stays exact-ish for data
// with a large mean and a small spread (mean 1e3, std 1e-2 in float32).
//
// * Two passes (mean, then the mean of squared deviations), both accumulated
//   in double in independent lanes (vectorisable without -ffast-math). The
//   second pass normally hits cache (a plane is read back to back).
// * float16 data is converted to float in stack chunks (F16C when present).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
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

template <typename C>
inline double sum(const C* x, int64_t n) noexcept {
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
inline double centered_sq_sum(const C* x, int64_t n, double mean) noexcept {
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

// Mean and biased variance of n > 0 contiguous values (NaN/Inf propagate like
// numpy: an Inf gives mean +-Inf and variance NaN).
template <typename C>
inline Moments plane_moments(const C* x, int64_t n) noexcept {
  const double mean = sum(x, n) / static_cast<double>(n);
  return {mean, centered_sq_sum(x, n, mean) / static_cast<double>(n)};
}

inline Moments plane_moments(const half* x, int64_t n) noexcept {
  float buf[kHalfChunk];
  if (n <= kHalfChunk) {
    half_to_float_n(x, buf, static_cast<size_t>(n));
    return plane_moments<float>(buf, n);
  }
  double s = 0.0;
  for (int64_t off = 0; off < n; off += kHalfChunk) {
    const int64_t len = (n - off < kHalfChunk) ? n - off : kHalfChunk;
    half_to_float_n(x + off, buf, static_cast<size_t>(len));
    s += sum(buf, len);
  }
  const double mean = s / static_cast<double>(n);
  double s2 = 0.0;
  for (int64_t off = 0; off < n; off += kHalfChunk) {
    const int64_t len = (n - off < kHalfChunk) ? n - off : kHalfChunk;
    half_to_float_n(x + off, buf, static_cast<size_t>(len));
    s2 += centered_sq_sum(buf, len, mean);
  }
  return {mean, s2 / static_cast<double>(n)};
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
