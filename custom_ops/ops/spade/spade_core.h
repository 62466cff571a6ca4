// Framework-free CPU core of normexport::SPADE (normalize + modulate).
//
// X, gamma_map, beta_map, Y: contiguous (N, C, S) (S = product of the spatial dims).
//   mode 0 (batch)   : mu = running_mean[c], var = running_var[c]
//   mode 1 (instance): mu, var = mean, biased variance of the plane X[n, c]
//   x_hat = (x - mu) / sqrt(var + eps);  y = x_hat * (1 + gamma_map) + beta_map
//
// Mode 0 is one fused streaming pass over the flat tensor (work unit: an
// element range, so a few huge planes still split across threads). Mode 1
// works plane by plane: two-pass statistics accumulated in double, then the
// fused pass while the plane is hot. mu is applied as hi + lo of the compute
// type (moments::split) so x - mu keeps the deviations of a large-mean plane.
// float16 is computed in float on stack chunks; double in double.
#pragma once

#include <cmath>
#include <cstdint>

#include "normexport/common.h"
#include "normexport/cpu_half.h"
#include "normexport/cpu_moments.h"
#include "normexport/cpu_stream.h"

// The streaming loops are force-inlined so that spade_cpu.cc can compile them a second time
// inside AVX2 + FMA wrappers (run-time dispatch; the library targets baseline x86-64).
#if defined(__GNUC__)
#define NX_SPADE_INLINE inline __attribute__((always_inline))
#else
#define NX_SPADE_INLINE inline
#endif

namespace normexport {
namespace spade {

namespace detail {

template <typename C>
struct Norm {
  C hi, lo, inv;  // x_hat = ((x - hi) - lo) * inv
};

template <typename C>
inline Norm<C> make_norm(double mean, double var, float eps) noexcept {
  const moments::Split<C> s = moments::split<C>(mean);
  return {s.hi, s.lo, static_cast<C>(1.0 / std::sqrt(var + static_cast<double>(eps)))};
}

// y = ((x - hi) - lo) * inv * (1 + g) + b on n contiguous values of the compute type.
template <typename C>
NX_SPADE_INLINE void modulate_values(const C* x, const C* g, const C* b, C* y, int64_t n, Norm<C> p) noexcept {
  for (int64_t i = 0; i < n; ++i) {
    const C xh = ((x[i] - p.hi) - p.lo) * p.inv;
    y[i] = xh * (C(1) + g[i]) + b[i];
  }
}

// nt: streaming stores through a tile (normexport/cpu_stream.h).
template <typename C>
NX_SPADE_INLINE void modulate(const C* x, const C* g, const C* b, C* y, int64_t n, Norm<C> p, bool nt) noexcept {
  stream::WriteTiled(y, n, nt, [&](C* out, int64_t off, int64_t len) NX_STREAM_LAMBDA {
    modulate_values<C>(x + off, g + off, b + off, out, len, p);
  });
}

NX_SPADE_INLINE void modulate(const half* x, const half* g, const half* b, half* y, int64_t n, Norm<float> p,
                     bool nt) noexcept {
  constexpr int64_t kChunk = 1024;
  float bx[kChunk], bg[kChunk], bb[kChunk];
  for (int64_t off = 0; off < n; off += kChunk) {
    const int64_t len = (n - off < kChunk) ? n - off : kChunk;
    half_to_float_n(x + off, bx, static_cast<size_t>(len));
    half_to_float_n(g + off, bg, static_cast<size_t>(len));
    half_to_float_n(b + off, bb, static_cast<size_t>(len));
    modulate_values<float>(bx, bg, bb, bx, len, p);
    stream::FloatToHalf(bx, y + off, len, nt);
  }
}

}  // namespace detail

template <typename T>
struct Tensors {
  const T* x;
  const T* gamma_map;
  const T* beta_map;
  const T* running_mean;  // C values (mode 0)
  const T* running_var;   // C values (mode 0)
  T* y;
  int64_t channels, plane_size;
  float eps;
  bool nt = false;  // streaming stores (the caller fences at the end of each task)
};

// Mode 0 on the flat element range [begin, end). Never throws.
template <typename T>
NX_SPADE_INLINE void spade_batch_elements(const Tensors<T>& t, int64_t begin, int64_t end) noexcept {
  using C = typename moments::compute_type<T>::type;
  if (t.plane_size <= 0 || t.channels <= 0) return;
  int64_t pos = begin;
  while (pos < end) {
    const int64_t plane = pos / t.plane_size;
    const int64_t in_plane = pos - plane * t.plane_size;
    const int64_t len = (t.plane_size - in_plane < end - pos) ? t.plane_size - in_plane : end - pos;
    const int64_t c = plane % t.channels;
    const auto p = detail::make_norm<C>(moments::load(t.running_mean[c]), moments::load(t.running_var[c]), t.eps);
    detail::modulate(t.x + pos, t.gamma_map + pos, t.beta_map + pos, t.y + pos, len, p, t.nt);
    pos += len;
  }
}

// Mode 1 on planes [begin, end) (plane = n * C + c). Never throws.
template <typename T>
NX_SPADE_INLINE void spade_instance_planes(const Tensors<T>& t, int64_t begin, int64_t end) noexcept {
  using C = typename moments::compute_type<T>::type;
  if (t.plane_size <= 0) return;
  for (int64_t plane = begin; plane < end; ++plane) {
    const int64_t off = plane * t.plane_size;
    const moments::Moments m = moments::plane_moments(t.x + off, t.plane_size);
    detail::modulate(t.x + off, t.gamma_map + off, t.beta_map + off, t.y + off, t.plane_size,
                     detail::make_norm<C>(m.mean, m.var, t.eps), t.nt);
  }
}

}  // namespace spade
}  // namespace normexport
