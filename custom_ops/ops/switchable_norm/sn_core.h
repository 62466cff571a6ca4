// Framework-free CPU core of normexport::SwitchableNorm (eval form).
//
// X, Y: contiguous (N, C, S) (S = product of the spatial dims, 1 for rank 2).
// Three phases, each split by the caller over independent units:
//   1. plane_stats   (planes)  : IN mean / biased variance of every plane X[n, c],
//                                two passes accumulated in double
//   2. mix_sample    (samples) : LN statistics of X[n] from the IN ones (law of
//                                total variance, no E[x^2] - E[x]^2 cancellation),
//                                softmax-weighted mean / var per (n, c) with the BN
//                                running statistics, folded with scale into one
//                                per-plane multiplier
//   3. apply_planes  (planes)  : y = ((x - mu_hi) - mu_lo) * a + bias[c]
// Statistics and mixing are done in double for every T; the streaming pass in
// the compute type (float for float/half, double for double). An absent branch
// (IN for rank 2, BN without using_bn) contributes exactly nothing, as in the
// function body (no 0 * Inf).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "normexport/common.h"
#include "normexport/cpu_half.h"
#include "normexport/cpu_moments.h"
#include "normexport/cpu_stream.h"

// apply_planes and its loops are force-inlined so that sn_cpu.cc can compile them a second time
// inside an AVX2 + FMA wrapper (run-time dispatch; the library targets baseline x86-64).
#if defined(__GNUC__)
#define NX_SN_INLINE inline __attribute__((always_inline))
#else
#define NX_SN_INLINE inline
#endif

namespace normexport {
namespace switchable_norm {

// Branch weights: softmax of the logits, placed at IN / LN / BN (0 when absent).
struct Weights {
  double in = 0.0, ln = 0.0, bn = 0.0;
  bool has_in = false, has_bn = false;
};

// Softmax in double like the function body (max-shifted, NaN propagating).
template <typename T>
inline Weights softmax_weights(const T* logits, int64_t k, bool has_in, bool has_bn) noexcept {
  double v[3] = {0.0, 0.0, 0.0};
  double mx = -std::numeric_limits<double>::infinity();
  bool nan = false;
  for (int64_t i = 0; i < k; ++i) {
    v[i] = static_cast<double>(moments::load(logits[i]));
    if (std::isnan(v[i])) nan = true;
    if (v[i] > mx) mx = v[i];
  }
  double e[3] = {0.0, 0.0, 0.0};
  double s = 0.0;
  for (int64_t i = 0; i < k; ++i) {
    e[i] = nan ? std::numeric_limits<double>::quiet_NaN() : std::exp(v[i] - mx);
    s += e[i];
  }
  Weights w;
  w.has_in = has_in;
  w.has_bn = has_bn;
  int64_t j = 0;
  if (has_in) w.in = e[j++] / s;
  w.ln = e[j++] / s;
  if (has_bn) w.bn = e[j++] / s;
  return w;
}

template <typename T>
struct Tensors {
  const T* x;
  const T* scale;         // C
  const T* bias;          // C
  const T* running_mean;  // C (read when using_bn)
  const T* running_var;   // C (read when using_bn)
  T* y;
  int64_t channels, plane_size;
  float eps;
  Weights wm, wv;
  // scratch, 2 doubles per plane of the planes in flight, stat0[i] / stat1[i] for plane
  // stat_base + i: phase 1 writes (IN mean, IN var), phase 2 overwrites them in place with
  // (mu, a = scale / sqrt(var + eps))
  double* stat0;
  double* stat1;
  int64_t stat_base = 0;
  bool nt = false;  // streaming stores in apply_planes (the caller fences at the end of each task)
};

// Phase 1 on planes [begin, end).
template <typename T>
void plane_stats(const Tensors<T>& t, int64_t begin, int64_t end) noexcept {
  for (int64_t plane = begin; plane < end; ++plane) {
    const moments::Moments m = moments::plane_moments(t.x + plane * t.plane_size, t.plane_size);
    t.stat0[plane - t.stat_base] = m.mean;
    t.stat1[plane - t.stat_base] = m.var;
  }
}

// LN statistics of one sample from its C planes' IN statistics (law of total variance):
// mean_ln = mean of the plane means, var_ln = mean of the plane variances + variance of the
// plane means. in_mean(c), in_var(c): double.
struct LnStats {
  double mean, var;
};
template <typename MeanOf, typename VarOf>
inline LnStats ln_stats(int64_t C, const MeanOf& in_mean, const VarOf& in_var) noexcept {
  const double inv_c = 1.0 / static_cast<double>(C);
  double s = 0.0;
  for (int64_t c = 0; c < C; ++c) s += in_mean(c);
  const double mean_ln = s * inv_c;
  double sv = 0.0, se = 0.0;
  for (int64_t c = 0; c < C; ++c) {
    const double e = in_mean(c) - mean_ln;
    sv += in_var(c);
    se += e * e;
  }
  return {mean_ln, sv * inv_c + se * inv_c};
}

// Channel c's softmax-mixed mean mu and multiplier a = scale / sqrt(var + eps), from the
// sample's LN statistics and the plane's IN mean / variance (BN: the running statistics).
struct Mixed {
  double mu, a;
};
template <typename T>
inline Mixed mix_channel(const Tensors<T>& t, int64_t c, const LnStats& ln, double in_mean, double in_var) noexcept {
  double mu = t.wm.ln * ln.mean;
  double v = t.wv.ln * ln.var;
  if (t.wm.has_in) mu = t.wm.in * in_mean + mu;
  if (t.wv.has_in) v = t.wv.in * in_var + v;
  if (t.wm.has_bn) mu = mu + t.wm.bn * static_cast<double>(moments::load(t.running_mean[c]));
  if (t.wv.has_bn) v = v + t.wv.bn * static_cast<double>(moments::load(t.running_var[c]));
  return {mu, static_cast<double>(moments::load(t.scale[c])) / std::sqrt(v + static_cast<double>(t.eps))};
}

// Phase 2 on samples [begin, end).
template <typename T>
void mix_samples(const Tensors<T>& t, int64_t begin, int64_t end) noexcept {
  const int64_t C = t.channels;
  for (int64_t n = begin; n < end; ++n) {
    double* mean = t.stat0 + (n * C - t.stat_base);
    double* var = t.stat1 + (n * C - t.stat_base);
    const LnStats ln = ln_stats(C, [mean](int64_t c) { return mean[c]; }, [var](int64_t c) { return var[c]; });
    for (int64_t c = 0; c < C; ++c) {
      const Mixed m = mix_channel(t, c, ln, mean[c], var[c]);
      mean[c] = m.mu;
      var[c] = m.a;
    }
  }
}

namespace detail {
template <typename C>
NX_SN_INLINE void affine_values(const C* x, C* y, int64_t n, C hi, C lo, C a, C b) noexcept {
  for (int64_t i = 0; i < n; ++i) y[i] = ((x[i] - hi) - lo) * a + b;
}
// (a plane above the L2 budget tail first: with the planes applied last to first, the whole
// sample is then re-read in the reverse order of its statistics pass, most recently read first)
template <typename C>
NX_SN_INLINE void affine(const C* x, C* y, int64_t n, C hi, C lo, C a, C b, bool nt) noexcept {
  stream::WriteTiledTailFirst(y, n, nt, [&](C* out, int64_t off, int64_t len) NX_STREAM_LAMBDA {
    affine_values<C>(x + off, out, len, hi, lo, a, b);
  });
}
NX_SN_INLINE void affine(const half* x, half* y, int64_t n, float hi, float lo, float a, float b, bool nt) noexcept {
  float buf[moments::kHalfChunk];
  for (int64_t off = 0; off < n; off += moments::kHalfChunk) {
    const int64_t len = (n - off < moments::kHalfChunk) ? n - off : moments::kHalfChunk;
    half_to_float_n(x + off, buf, static_cast<size_t>(len));
    affine_values<float>(buf, buf, len, hi, lo, a, b);
    stream::FloatToHalf(buf, y + off, len, nt);
  }
}
}  // namespace detail

// Phase 3 on planes [begin, end), last plane first (the caller may number the planes backwards
// so the planes phase 1 read last, still in cache, are applied first).
template <typename T>
NX_SN_INLINE void apply_planes(const Tensors<T>& t, int64_t begin, int64_t end) noexcept {
  using C = typename moments::compute_type<T>::type;
  for (int64_t plane = end - 1; plane >= begin; --plane) {
    const moments::Split<C> mu = moments::split<C>(t.stat0[plane - t.stat_base]);
    const int64_t off = plane * t.plane_size;
    detail::affine(t.x + off, t.y + off, t.plane_size, mu.hi, mu.lo, static_cast<C>(t.stat1[plane - t.stat_base]),
                   static_cast<C>(moments::load(t.bias[plane % t.channels])), t.nt);
  }
}

// All three phases on samples [begin, end) of a tensor whose planes hold one element
// (plane_size == 1: rank 2, or spatial dims of 1), without scratch: a plane's IN mean is its
// value and its IN variance 0, so the per-plane statistics are recomputed from X. The same
// formulas, in the same order, as plane_stats + mix_samples + apply_planes.
template <typename T>
void one_element_planes(const Tensors<T>& t, int64_t begin, int64_t end) noexcept {
  using C = typename moments::compute_type<T>::type;
  constexpr int64_t kChunk = moments::kHalfChunk;
  const int64_t ch = t.channels;
  C buf[kChunk];
  for (int64_t n = begin; n < end; ++n) {
    const T* x = t.x + n * ch;
    T* y = t.y + n * ch;
    const LnStats ln = ln_stats(
        ch, [x](int64_t c) { return static_cast<double>(moments::load(x[c])); }, [](int64_t) { return 0.0; });
    for (int64_t c0 = 0; c0 < ch; c0 += kChunk) {
      const int64_t len = (ch - c0 < kChunk) ? ch - c0 : kChunk;
      for (int64_t k = 0; k < len; ++k) {
        const int64_t c = c0 + k;
        const C xv = static_cast<C>(moments::load(x[c]));
        const Mixed mx = mix_channel(t, c, ln, static_cast<double>(xv), 0.0);
        const moments::Split<C> m = moments::split<C>(mx.mu);
        buf[k] = ((xv - m.hi) - m.lo) * static_cast<C>(mx.a) + static_cast<C>(moments::load(t.bias[c]));
      }
      if constexpr (std::is_same<T, half>::value) {
        float_to_half_n(buf, y + c0, static_cast<size_t>(len));
      } else {
        for (int64_t k = 0; k < len; ++k) y[c0 + k] = buf[k];
      }
    }
  }
}

}  // namespace switchable_norm
}  // namespace normexport
