// Framework-free CPU core of normexport::AdaIN.
//
// For every (n, c) plane, content plane X (Sx elements) and style plane Z (Sz elements):
//   mu_x, var_x = mean, biased variance of X     one pass of shifted sums (see
//   mu_z, var_z = mean, biased variance of Z     shifted_sums / finish: no cancellation)
//   s = sqrt(var_z + eps) / sqrt(var_x + eps)
//   y = alpha * (s * (x - mu_x) + mu_z) + (1 - alpha) * x
//     = (x - mu_x) * a + b,   a = alpha * s + (1 - alpha),  b = alpha * mu_z + (1 - alpha) * mu_x
// a and b are computed in double once per plane; the elementwise pass is one
// subtract + multiply-add in the compute type (float for float/half, double for
// double). mu_x is carried as a float pair (hi + lo) so x - mu_x stays accurate
// when the plane's mean is large compared to its spread (mean 1e3, std 1e-2).
// float16 data is converted to float in stack chunks (F16C when present).
// NaN / Inf in a plane make its statistics NaN, hence the whole output plane,
// like the float64 reference.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "normexport/common.h"
#include "normexport/cpu_half.h"
#include "normexport/cpu_stream.h"

// The hot functions are force-inlined so that adain_cpu.cc can compile them a second time
// inside AVX2 + FMA wrappers (run-time dispatch; the library targets baseline x86-64).
#if defined(__GNUC__)
#define NX_ADAIN_INLINE inline __attribute__((always_inline))
#else
#define NX_ADAIN_INLINE inline
#endif

namespace normexport {
namespace adain {

struct PlaneRange {
  int64_t begin;  // first plane index (plane = n * C + c)
  int64_t end;    // one past the last plane
};

namespace detail {

template <typename T>
struct compute_type {
  using type = float;
};
template <>
struct compute_type<double> {
  using type = double;
};

constexpr int64_t kChunk = 2048;  // float16 conversion chunk (elements)

// Shifted sums in one pass: d = x - shift, s += d, q += d^2.
// double: double lanes. float (also half, converted): 16 float lanes (lane k holds the
// elements i with i % 16 == k of a block) over blocks of kFloatBlock elements, each block's
// lanes added into 16 double lanes (a vector add, no serial chain), so the float rounding
// error stays that of a 32-term sum whatever the plane size while the inner loop runs at full
// float width. The double lanes are summed once per plane. The result does not depend on how
// the caller splits its work. Two things matter for speed, because this pass streams from
// memory: full-width (8-float) loads, so the out-of-order window reaches far enough ahead, and
// no serial double chain per block (both cost about a third of the plane time when present).
constexpr int64_t kFloatLanes = 16;
constexpr int64_t kFloatBlock = 32 * kFloatLanes;

#if defined(__GNUC__)
// Explicit 8-lane vectors (GCC/Clang vector extensions: one ymm register each in the AVX2
// build, two xmm registers in the baseline one; plain arrays were not kept in registers).
NX_ADAIN_INLINE void shifted_sums_block(const float* x, int64_t n, float shift, double* ds, double* dq) noexcept {
  typedef float v8 __attribute__((vector_size(32)));
  const v8 sh = {shift, shift, shift, shift, shift, shift, shift, shift};
  v8 s0 = {0, 0, 0, 0, 0, 0, 0, 0}, s1 = s0, q0 = s0, q1 = s0;
  for (int64_t i = 0; i + kFloatLanes <= n; i += kFloatLanes) {
    v8 a, b;
    std::memcpy(&a, x + i, sizeof(a));
    std::memcpy(&b, x + i + 8, sizeof(b));
    a -= sh;
    b -= sh;
    s0 += a;
    s1 += b;
    q0 += a * a;
    q1 += b * b;
  }
  for (int j = 0; j < 8; ++j) {
    ds[j] += static_cast<double>(s0[j]);
    ds[j + 8] += static_cast<double>(s1[j]);
    dq[j] += static_cast<double>(q0[j]);
    dq[j + 8] += static_cast<double>(q1[j]);
  }
}
#else
NX_ADAIN_INLINE void shifted_sums_block(const float* x, int64_t n, float shift, double* ds, double* dq) noexcept {
  float s[kFloatLanes] = {}, q[kFloatLanes] = {};
  for (int64_t i = 0; i + kFloatLanes <= n; i += kFloatLanes)
    for (int j = 0; j < kFloatLanes; ++j) {
      const float d = x[i + j] - shift;
      s[j] += d;
      q[j] += d * d;
    }
  for (int j = 0; j < kFloatLanes; ++j) {
    ds[j] += static_cast<double>(s[j]);
    dq[j] += static_cast<double>(q[j]);
  }
}
#endif

// Pairwise sum of the 16 double lanes (vector adds).
NX_ADAIN_INLINE double reduce_lanes(double* d) noexcept {
  for (int w = kFloatLanes / 2; w > 0; w /= 2)
    for (int j = 0; j < w; ++j) d[j] += d[j + w];
  return d[0];
}

template <typename C>
NX_ADAIN_INLINE void shifted_sums(const C* x, int64_t n, C shift, double* s_out, double* q_out) noexcept {
  double st = 0.0, qt = 0.0;
  int64_t i = 0;
  if constexpr (std::is_same<C, float>::value) {
    double ds[kFloatLanes] = {}, dq[kFloatLanes] = {};
    for (; i + kFloatLanes <= n;) {
      const int64_t len = (n - i < kFloatBlock) ? (n - i) / kFloatLanes * kFloatLanes : kFloatBlock;
      shifted_sums_block(x + i, len, shift, ds, dq);
      i += len;
    }
    st = reduce_lanes(ds);
    qt = reduce_lanes(dq);
  } else {
    constexpr int kLanes = 8;
    double s[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
    double q[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (; i + kLanes <= n; i += kLanes)
      for (int j = 0; j < kLanes; ++j) {
        const double d = x[i + j] - shift;
        s[j] += d;
        q[j] += d * d;
      }
    for (int j = 0; j < kLanes; ++j) {
      st += s[j];
      qt += q[j];
    }
  }
  for (; i < n; ++i) {
    const double d = static_cast<double>(x[i]) - static_cast<double>(shift);
    st += d;
    qt += d * d;
  }
  *s_out += st;
  *q_out += qt;
}

// Shift near the mean: the mean of the first (up to) 64 values, in double.
template <typename C>
NX_ADAIN_INLINE double pilot_mean(const C* x, int64_t n) noexcept {
  const int64_t m = n < 64 ? n : 64;
  double s = 0.0;
  for (int64_t i = 0; i < m; ++i) s += static_cast<double>(x[i]);
  return s / static_cast<double>(m);
}

struct Moments {
  double mean, var;  // biased variance
};

// mean = shift + S / n, var = (Q - S^2 / n) / n with shift = the mean of the plane's
// first values (pilot_mean): the sums are taken next to the mean, so there is no
// E[x^2] - E[x]^2 cancellation (S^2 / n is a small correction). A non-finite value
// makes both NaN (the output plane is NaN either way, like the reference).
inline Moments finish(double shift, double s, double q, int64_t n) noexcept {
  const double inv_n = 1.0 / static_cast<double>(n);
  const double m2 = q - s * s * inv_n;
  return {shift + s * inv_n, (m2 < 0.0 ? 0.0 : m2) * inv_n};  // NaN stays NaN
}

// float / double planes: straight on the tensor memory.
template <typename C>
NX_ADAIN_INLINE Moments moments(const C* x, int64_t n) noexcept {
  if (n <= 0) return {NAN, NAN};  // mean of nothing, like the reference
  const C shift = static_cast<C>(pilot_mean(x, n));
  double s = 0.0, q = 0.0;
  shifted_sums(x, n, shift, &s, &q);
  return finish(static_cast<double>(shift), s, q, n);
}

NX_ADAIN_INLINE Moments moments(const half* x, int64_t n) noexcept {
  if (n <= 0) return {NAN, NAN};
  float buf[kChunk];
  float shift = 0.0f;
  double s = 0.0, q = 0.0;
  for (int64_t off = 0; off < n; off += kChunk) {
    const int64_t len = (n - off < kChunk) ? n - off : kChunk;
    half_to_float_n(x + off, buf, static_cast<size_t>(len));
    if (off == 0) shift = static_cast<float>(pilot_mean(buf, len));
    shifted_sums(buf, len, shift, &s, &q);
  }
  return finish(static_cast<double>(shift), s, q, n);
}

// y = ((x - m_hi) - m_lo) * a + b. x and y may alias exactly.
template <typename C>
NX_ADAIN_INLINE void apply(const C* x, C* y, int64_t n, C m_hi, C m_lo, C a, C b) noexcept {
  for (int64_t i = 0; i < n; ++i) y[i] = ((x[i] - m_hi) - m_lo) * a + b;
}

template <typename C>
struct PlaneCoeffs {
  C m_hi, m_lo, a, b;
};

template <typename C>
inline PlaneCoeffs<C> coeffs(const Moments& mx, const Moments& mz, float eps, float alpha) noexcept {
  const double e = static_cast<double>(eps), al = static_cast<double>(alpha);
  const double s = std::sqrt(mz.var + e) / std::sqrt(mx.var + e);
  const double a = al * s + (1.0 - al);
  const double b = al * mz.mean + (1.0 - al) * mx.mean;
  const C hi = static_cast<C>(mx.mean);
  const C lo = static_cast<C>(mx.mean - static_cast<double>(hi));  // NaN when mean is inf/NaN
  return {hi, lo, static_cast<C>(a), static_cast<C>(b)};
}

// nt: streaming stores through a tile (normexport/cpu_stream.h); a content plane bigger than the
// L2 budget is written tail first (its tail, read last, is still in L2).
template <typename C>
NX_ADAIN_INLINE void process_plane(const C* x, int64_t sx, const C* z, int64_t sz, C* y, float eps, float alpha,
                          bool nt) noexcept {
  const Moments mz = moments(z, sz);  // style first: the content read last stays in L2 for the apply
  const PlaneCoeffs<C> k = coeffs<C>(moments(x, sx), mz, eps, alpha);
  stream::WriteTiledTailFirst(y, sx, nt, [&](C* out, int64_t off, int64_t len) NX_STREAM_LAMBDA {
    apply<C>(x + off, out, len, k.m_hi, k.m_lo, k.a, k.b);
  });
}

NX_ADAIN_INLINE void process_plane(const half* x, int64_t sx, const half* z, int64_t sz, half* y, float eps, float alpha,
                          bool nt) noexcept {
  const PlaneCoeffs<float> k = coeffs<float>(moments(x, sx), moments(z, sz), eps, alpha);
  float buf[kChunk];
  for (int64_t off = 0; off < sx; off += kChunk) {
    const int64_t len = (sx - off < kChunk) ? sx - off : kChunk;
    half_to_float_n(x + off, buf, static_cast<size_t>(len));
    apply<float>(buf, buf, len, k.m_hi, k.m_lo, k.a, k.b);
    stream::FloatToHalf(buf, y + off, len, nt);
  }
}

}  // namespace detail

// Processes planes [range.begin, range.end) of contiguous content (P, sx) and
// style (P, sz) tensors into y (P, sx). T: float, normexport::half (float math)
// or double. nt: streaming stores (the caller issues stream::Fence() at the end of its task).
// Never throws.
template <typename T>
NX_ADAIN_INLINE void adain_planes(const T* content, const T* style, T* y, int64_t content_plane, int64_t style_plane,
                  PlaneRange range, float eps, float alpha, bool nt = false) noexcept {
  if (content_plane <= 0) return;
  for (int64_t p = range.begin; p < range.end; ++p) {
    detail::process_plane(content + p * content_plane, content_plane, style + p * style_plane, style_plane,
                          y + p * content_plane, eps, alpha, nt);
  }
}

}  // namespace adain
}  // namespace normexport
