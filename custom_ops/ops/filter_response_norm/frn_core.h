// Framework-free CPU core of normexport::FilterResponseNorm.
//
// For every (n, c) plane P of X (shape (N, C, D1..Dk), contiguous):
//   nu2   = mean(x^2 over P)                 float blocks of 512, totalled in double
//   scale = gamma[c] / sqrt(nu2 + eps)        computed in double, applied in float
//   y     = x * scale + beta[c]
//   y     = max(y, tau[c])  if tlu            NaN-propagating like numpy.maximum
//
// The work unit is a range of planes so a caller can split N*C planes across
// threads. Each plane is read twice back to back (sum of squares, then the
// fused scale/shift/max pass) so the second read normally hits cache; both
// inner loops are simple enough for the compiler to vectorise.
// float16 data is converted to float in cache-sized chunks (F16C when present);
// double data is computed in double.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "normexport/common.h"
#include "normexport/cpu_half.h"
#include "normexport/cpu_stream.h"

// The hot functions are force-inlined so that frn_cpu.cc can compile them a second time inside
// AVX2 + FMA wrappers (run-time dispatch; the library targets baseline x86-64).
#if defined(__GNUC__)
#define NX_FRN_INLINE inline __attribute__((always_inline))
#else
#define NX_FRN_INLINE inline
#endif

namespace normexport {
namespace frn {

struct PlaneRange {
  int64_t begin;  // first plane index (plane = n * C + c)
  int64_t end;    // one past the last plane
};

namespace detail {

// Element type -> type the arithmetic is done in (float for float/half, double for double).
template <typename T>
struct compute_type {
  using type = float;
};
template <>
struct compute_type<double> {
  using type = double;
};

// Sum of squares. Double data: double lanes. Float data: 8 float lanes, each summing at most
// 64 squares (a block of 512 elements, relative error <= 64 * 2^-24 ~ 4e-6 on the block, far
// below the float32 bound once halved by the square root) before the block is added to a double
// total, so the plane may hold billions of elements. Independent lanes let the compiler
// vectorise without reassociating (no -ffast-math); squares are never negative, so there is
// no cancellation.
template <typename C>
NX_FRN_INLINE double sum_squares(const C* x, int64_t n) noexcept {
  constexpr int kLanes = 8;
  constexpr int64_t kBlock = 64 * kLanes;
  double total = 0.0;
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    C acc[kLanes] = {};
    for (int64_t k = 0; k < kBlock; k += kLanes) {
      for (int j = 0; j < kLanes; ++j) acc[j] += x[i + k + j] * x[i + k + j];
    }
    double block = 0.0;
    for (int j = 0; j < kLanes; ++j) block += static_cast<double>(acc[j]);
    total += block;
  }
  for (; i < n; ++i) {
    const double v = static_cast<double>(x[i]);
    total += v * v;
  }
  return total;
}

// y = x * scale + shift, then (if tlu) max(y, tau) keeping NaN from y.
// x and y may alias exactly (in-place), nothing else.
template <typename C>
NX_FRN_INLINE void affine_tlu(const C* x, C* y, int64_t n, C scale, C shift, bool tlu, C tau) noexcept {
  if (tlu) {
    if (std::isnan(tau)) {  // max(anything, NaN) = NaN, like numpy.maximum / ONNX Max
      const C qnan = std::numeric_limits<C>::quiet_NaN();
      for (int64_t i = 0; i < n; ++i) y[i] = qnan;
      return;
    }
    for (int64_t i = 0; i < n; ++i) {
      const C v = x[i] * scale + shift;
      y[i] = (v < tau) ? tau : v;  // v NaN -> comparison false -> NaN kept
    }
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale + shift;
  }
}

// gamma / sqrt(mean + eps), in double, rounded once to the compute type.
template <typename C>
inline C plane_scale(double sum_sq, int64_t plane_size, C gamma, float eps) noexcept {
  const double nu2 = sum_sq / static_cast<double>(plane_size);
  return static_cast<C>(static_cast<double>(gamma) / std::sqrt(nu2 + static_cast<double>(eps)));
}

template <typename C>
struct ChannelParams {
  C gamma, beta, tau;
};

template <typename T, typename C = typename compute_type<T>::type>
inline ChannelParams<C> channel_params(const T* gamma, const T* beta, const T* tau, int64_t c, bool tlu) noexcept {
  if constexpr (std::is_same<T, half>::value) {
    return {to_float(gamma[c]), to_float(beta[c]), tlu ? to_float(tau[c]) : 0.0f};
  } else {
    return {static_cast<C>(gamma[c]), static_cast<C>(beta[c]), tlu ? static_cast<C>(tau[c]) : C(0)};
  }
}

// float and double: both passes straight on the tensor memory (nt: streaming stores through a
// tile, normexport/cpu_stream.h; a plane bigger than the L2 budget is written tail first).
template <typename C>
NX_FRN_INLINE void process_plane(const C* x, C* y, int64_t n, const ChannelParams<C>& p, float eps, bool tlu,
                          bool nt = false) noexcept {
  const C scale = plane_scale<C>(sum_squares(x, n), n, p.gamma, eps);
  stream::WriteTiledTailFirst(y, n, nt, [&](C* out, int64_t off, int64_t len) NX_STREAM_LAMBDA {
    affine_tlu<C>(x + off, out, len, scale, p.beta, tlu, p.tau);
  });
}

// float16: convert chunks to float on the stack. Planes that fit in one chunk
// are converted once and reused for both passes.
NX_FRN_INLINE void process_plane(const half* x, half* y, int64_t n, const ChannelParams<float>& p, float eps,
                          bool tlu, bool nt = false) noexcept {
  constexpr int64_t kChunk = 2048;
  float buf[kChunk];
  if (n <= kChunk) {
    half_to_float_n(x, buf, static_cast<size_t>(n));
    const float scale = plane_scale<float>(sum_squares(buf, n), n, p.gamma, eps);
    affine_tlu<float>(buf, buf, n, scale, p.beta, tlu, p.tau);
    stream::FloatToHalf(buf, y, n, nt);
    return;
  }
  double sum_sq = 0.0;
  for (int64_t off = 0; off < n; off += kChunk) {
    const int64_t len = (n - off < kChunk) ? n - off : kChunk;
    half_to_float_n(x + off, buf, static_cast<size_t>(len));
    sum_sq += sum_squares(buf, len);
  }
  const float scale = plane_scale<float>(sum_sq, n, p.gamma, eps);
  for (int64_t off = 0; off < n; off += kChunk) {
    const int64_t len = (n - off < kChunk) ? n - off : kChunk;
    half_to_float_n(x + off, buf, static_cast<size_t>(len));
    affine_tlu<float>(buf, buf, len, scale, p.beta, tlu, p.tau);
    stream::FloatToHalf(buf, y + off, len, nt);
  }
}

}  // namespace detail

// Processes planes [range.begin, range.end) of a contiguous (N, C, plane_size)
// tensor. gamma/beta/tau hold C values (tau is not read when tlu is false).
// T is float, normexport::half (computed in float) or double. nt: streaming stores (the caller
// issues stream::Fence() at the end of its task). Never throws.
template <typename T>
NX_FRN_INLINE void filter_response_norm_planes(const T* x, T* y, const T* gamma, const T* beta, const T* tau,
                                 int64_t channels, int64_t plane_size, PlaneRange range, float eps,
                                 bool tlu, bool nt = false) noexcept {
  if (plane_size <= 0 || channels <= 0) return;
  for (int64_t plane = range.begin; plane < range.end; ++plane) {
    const int64_t c = plane % channels;
    const int64_t offset = plane * plane_size;
    detail::process_plane(x + offset, y + offset, plane_size, detail::channel_params(gamma, beta, tau, c, tlu),
                          eps, tlu, nt);
  }
}

}  // namespace frn
}  // namespace normexport
