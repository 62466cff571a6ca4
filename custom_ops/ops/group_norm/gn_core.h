// Framework-free CPU core of normexport::GroupNorm.
//
// X is contiguous (N, C, S) (S = product of the spatial dims, 1 for rank 2). Group g of
// sample n is the contiguous block of M = (C / G) * S elements starting at (n * G + g) * M.
// For every group:
//   mean = k + sum(x - k) / M                 k = mean of the first 8 values; float lanes
//                                             summed per block in double (double data: sum(x)
//                                             in double lanes)
//   m2   = sum((x - mean)^2)                  second pass over the (cache-hot) group
//                                             (double; float lanes summed per block for float)
//   rstd = 1 / sqrt(m2 / M + eps)             double
//   per channel c (folded once, then one shift-multiply-add per element):
//     m = (Cmp)mean, a = (Cmp)(scale[c] * rstd), b = (Cmp)(bias[c] - (mean - m) * scale[c] * rstd)
//     y = act((x - m) * a + b)
// Cmp is the compute type: float for float and float16 (converted in stack chunks, F16C when
// present), double for double. Subtracting the float-rounded mean before the multiply (and
// putting the rounding remainder into b) keeps y accurate to a few ulps even when the mean
// is large against the standard deviation: the folded x * a + (bias - mean * a) would lose
// |mean| * a * 2^-24 absolute (6e-3 for mean 1e3, std 1e-2).
//
// Groups too large to stay in cache are split into chunks by the caller: moments() of every
// chunk (two-pass, chunk hot), combine() (Chan et al.), then normalize_range() per chunk.
// Never uses E[x^2] - E[x]^2. NaN/Inf: any NaN or Inf in a group makes m2 NaN, so the whole
// group becomes NaN, as in the float64 reference.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "normexport/common.h"
#include "normexport/cpu_half.h"
#include "normexport/cpu_moments.h"
#include "normexport/cpu_stream.h"

// The hot functions are force-inlined so that gn_cpu.cc can compile them a second time
// inside AVX2-targeted wrappers (run-time dispatch; the library targets baseline x86-64).
#if defined(__GNUC__)
#define NX_GN_INLINE inline __attribute__((always_inline))
#else
#define NX_GN_INLINE inline
#endif

namespace normexport {
namespace gn {

namespace mom = ::normexport::moments;  // the shared statistics loops (normexport/cpu_moments.h)

enum Activation : int { kNone = 0, kRelu = 1, kSilu = 2 };

// count, mean, M2 and their Chan combination (normexport/cpu_moments.h)
using Moments = mom::Counted;
inline Moments combine(const Moments& a, const Moments& b) noexcept { return mom::Combine(a, b); }

namespace detail {

template <typename T>
struct compute_type {
  using type = float;
};
template <>
struct compute_type<double> {
  using type = double;
};

constexpr int64_t kHalfChunk = 8192;  // float16: elements converted per stack chunk (32 KiB)

// exp(t) in float for the SiLU, t already clamped to [-87, 88] (NaN allowed): Cody-Waite range
// reduction t = k ln2 + r, |r| <= ln2 / 2, Cephes' degree-6 polynomial (about 1 ulp), 2^k
// assembled from the exponent bits. No branches or selects, so loops over it vectorize
// (std::exp is a scalar call, ~20x slower; with -ftrapping-math GCC will not vectorize a
// select that feeds arithmetic, hence the clamp in a separate loop below).
NX_GN_INLINE float exp_clamped(float tc) noexcept {
  const float kf = (tc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  float r = tc - kf * 0.693359375f;
  r = r - kf * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(kf) + 127) * (1 << 23);  // kf in [-126, 127]
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// y[i] = v * sigmoid(v) = v / (1 + exp(-v)) for v = y[i], in place: NaN -> NaN, +inf -> inf,
// -inf -> NaN (as the reference).
NX_GN_INLINE void silu_inplace(float* y, int64_t n) noexcept {
  constexpr int64_t kTile = 256;
  float t[kTile];
  for (int64_t off = 0; off < n; off += kTile) {
    const int64_t len = std::min(kTile, n - off);
    float* v = y + off;
    for (int64_t i = 0; i < len; ++i) {  // clamp of -v (NaN passes through)
      float c = -v[i];
      c = c < -87.0f ? -87.0f : c;
      t[i] = c > 88.0f ? 88.0f : c;
    }
    for (int64_t i = 0; i < len; ++i) {
      // v > 87: exp(-87) ~ 1.6e-38 leaves v unchanged; v < -88: |y| < 6e-37 (true value
      // smaller still); v = -inf: -inf / 1.6e38 -> fixed up to NaN like the reference
      const float yv = v[i] / (1.0f + exp_clamped(t[i]));
      v[i] = v[i] == -std::numeric_limits<float>::infinity() ? std::numeric_limits<float>::quiet_NaN() : yv;
    }
  }
}

NX_GN_INLINE void silu_inplace(double* y, int64_t n) noexcept {
  for (int64_t i = 0; i < n; ++i) y[i] = y[i] / (1.0 + std::exp(-y[i]));
}

// y = act((x - m) * a + b); x and y may alias exactly.
template <typename C>
NX_GN_INLINE void shift_scale_act(const C* x, C* y, int64_t n, C m, C a, C b, int act) noexcept {
  switch (act) {
    case kRelu:
      for (int64_t i = 0; i < n; ++i) {
        const C v = (x[i] - m) * a + b;
        y[i] = (v < C(0)) ? C(0) : v;  // NaN kept (comparison false)
      }
      break;
    case kSilu:
      for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - m) * a + b;
      silu_inplace(y, n);
      break;
    default:
      for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - m) * a + b;
      break;
  }
}

template <typename C>
struct ChannelAffine {
  C m, a, b;
};

template <typename T, typename C = typename compute_type<T>::type>
inline ChannelAffine<C> channel_affine(T scale, T bias, double mean, double rstd) noexcept {
  double s, bi;
  if constexpr (std::is_same<T, half>::value) {
    s = static_cast<double>(to_float(scale));
    bi = static_cast<double>(to_float(bias));
  } else {
    s = static_cast<double>(scale);
    bi = static_cast<double>(bias);
  }
  const C m = static_cast<C>(mean);
  const double a = s * rstd;
  // mean - m is the rounding remainder of the mean (0 for double); NaN/Inf mean -> NaN b
  const double rem = std::isfinite(mean) ? mean - static_cast<double>(m) : mean;
  return {m, static_cast<C>(a), static_cast<C>(bi - rem * a)};
}

// y = act((x - m) * a + b) over one channel segment. nt: streaming stores (through an
// L1-resident tile, normexport/cpu_stream.h) for outputs much larger than the cache.
template <typename T>
NX_GN_INLINE void apply_segment(const T* x, T* y, int64_t n, const ChannelAffine<typename compute_type<T>::type>& p,
                                int act, bool nt = false) noexcept {
  if constexpr (std::is_same<T, half>::value) {
    if (nt) {
      float buf[stream::kTile];
      half hbuf[stream::kTile];
      for (int64_t off = 0; off < n; off += stream::kTile) {
        const int64_t len = std::min(stream::kTile, n - off);
        half_to_float_n(x + off, buf, static_cast<size_t>(len));
        shift_scale_act<float>(buf, buf, len, p.m, p.a, p.b, act);
        float_to_half_n(buf, hbuf, static_cast<size_t>(len));
        stream::Store(y + off, hbuf, len);
      }
      return;
    }
    float buf[kHalfChunk];
    for (int64_t off = 0; off < n; off += kHalfChunk) {
      const int64_t len = std::min(kHalfChunk, n - off);
      half_to_float_n(x + off, buf, static_cast<size_t>(len));
      shift_scale_act<float>(buf, buf, len, p.m, p.a, p.b, act);
      float_to_half_n(buf, y + off, static_cast<size_t>(len));
    }
  } else {
    if (!nt) {
      shift_scale_act(x, y, n, p.m, p.a, p.b, act);
      return;
    }
    T tile[stream::kTile];
    for (int64_t off = 0; off < n; off += stream::kTile) {
      const int64_t len = std::min(stream::kTile, n - off);
      shift_scale_act(x + off, tile, len, p.m, p.a, p.b, act);
      stream::Store(y + off, tile, len);
    }
  }
}

// float -> half of n values into y, streamed when nt.
NX_GN_INLINE void store_half(const float* buf, half* y, int64_t n, bool nt) noexcept {
  if (!nt) {
    float_to_half_n(buf, y, static_cast<size_t>(n));
    return;
  }
  half hbuf[stream::kTile];
  for (int64_t off = 0; off < n; off += stream::kTile) {
    const int64_t len = std::min(stream::kTile, n - off);
    float_to_half_n(buf + off, hbuf, static_cast<size_t>(len));
    stream::Store(y + off, hbuf, len);
  }
}

inline double rstd_of(const Moments& mom, float eps) noexcept {
  return 1.0 / std::sqrt(mom.m2 / static_cast<double>(mom.count) + static_cast<double>(eps));
}

}  // namespace detail

// Two-pass moments of x[0, n), n > 0 (read twice back to back: the second read hits cache
// for ranges up to a few hundred KiB).
template <typename T>
NX_GN_INLINE Moments moments(const T* x, int64_t n) noexcept {
  Moments r;
  r.count = n;
  if (n <= 0) return r;
  const double dn = static_cast<double>(n);
  if constexpr (std::is_same<T, double>::value) {
    r.mean = mom::sum(x, n) / dn;
    r.m2 = mom::centered_sq_sum(x, n, r.mean);
  } else if constexpr (std::is_same<T, float>::value) {
    // pass 1: shifted float sum (mean to ~1e-7 std); pass 2: centered squares
    const float k = mom::detail::shift_of(x, n);
    r.mean = static_cast<double>(k) + mom::detail::shifted_sum_f(x, n, k) / dn;
    if (!std::isfinite(r.mean)) r.mean = mom::sum(x, n) / dn;  // float overflow of x - k, or NaN/Inf data
    r.m2 = mom::detail::centered_sq_sum_f(x, n, r.mean);
    if (!std::isfinite(r.m2) && std::isfinite(r.mean)) r.m2 = mom::centered_sq_sum(x, n, r.mean);
  } else {  // half: the same on float chunks
    float buf[detail::kHalfChunk];
    const int64_t first = std::min(detail::kHalfChunk, n);
    half_to_float_n(x, buf, static_cast<size_t>(first));
    const float k = mom::detail::shift_of(buf, first);
    double s = 0.0;
    for (int64_t off = 0; off < n; off += detail::kHalfChunk) {
      const int64_t len = std::min(detail::kHalfChunk, n - off);
      if (off > 0) half_to_float_n(x + off, buf, static_cast<size_t>(len));
      s += mom::detail::shifted_sum_f(buf, len, k);
    }
    r.mean = static_cast<double>(k) + s / dn;  // half values cannot overflow x - k in float
    double q = 0.0;
    for (int64_t off = 0; off < n; off += detail::kHalfChunk) {
      const int64_t len = std::min(detail::kHalfChunk, n - off);
      half_to_float_n(x + off, buf, static_cast<size_t>(len));
      q += mom::detail::centered_sq_sum_f(buf, len, r.mean);
    }
    r.m2 = q;
  }
  return r;
}

// Normalizes elements [begin, end) of one group (offsets inside the group; xg/yg point at the
// group's first element) with the group's moments. channel0: the channel index (into
// scale/bias) of the group's first channel; spatial: elements per channel.
template <typename T>
NX_GN_INLINE void normalize_range(const T* xg, T* yg, int64_t begin, int64_t end, int64_t spatial, const T* scale,
                     const T* bias, int64_t channel0, const Moments& mom, float eps, int act,
                     bool nt = false) noexcept {
  const double rstd = detail::rstd_of(mom, eps);
  int64_t i = begin;
  while (i < end) {
    const int64_t cl = i / spatial;
    const int64_t seg_end = std::min(end, (cl + 1) * spatial);
    const auto p = detail::channel_affine<T>(scale[channel0 + cl], bias[channel0 + cl], mom.mean, rstd);
    detail::apply_segment<T>(xg + i, yg + i, seg_end - i, p, act, nt);
    i = seg_end;
  }
}

struct GroupRange {
  int64_t begin;  // first group index (group = n * G + g)
  int64_t end;    // one past the last
};

// Whole groups [range.begin, range.end) of a contiguous (N, C, spatial) tensor with
// `groups` groups (C % groups == 0). T: float, half (computed in float) or double.
template <typename T>
NX_GN_INLINE void group_norm_groups(const T* x, T* y, const T* scale, const T* bias, int64_t channels, int64_t spatial,
                       int64_t groups, GroupRange range, float eps, int act, bool nt = false) noexcept {
  if (channels <= 0 || spatial <= 0 || groups <= 0) return;
  const int64_t cpg = channels / groups;
  const int64_t m = cpg * spatial;
  for (int64_t grp = range.begin; grp < range.end; ++grp) {
    const int64_t channel0 = (grp % groups) * cpg;
    const T* xg = x + grp * m;
    T* yg = y + grp * m;
    if constexpr (std::is_same<T, half>::value) {
      if (m <= detail::kHalfChunk) {  // convert once, keep the group in float for all passes
        float buf[detail::kHalfChunk];
        half_to_float_n(xg, buf, static_cast<size_t>(m));
        Moments mom = moments<float>(buf, m);
        const double rstd = detail::rstd_of(mom, eps);
        for (int64_t cl = 0; cl < cpg; ++cl) {
          const auto p = detail::channel_affine<half>(scale[channel0 + cl], bias[channel0 + cl], mom.mean, rstd);
          float* seg = buf + cl * spatial;
          detail::shift_scale_act<float>(seg, seg, spatial, p.m, p.a, p.b, act);
        }
        detail::store_half(buf, yg, m, nt);
        continue;
      }
    }
    const Moments mom = moments<T>(xg, m);
    const double rstd = detail::rstd_of(mom, eps);
    for (int64_t cl = 0; cl < cpg; ++cl) {  // channel by channel: no index division
      const auto p = detail::channel_affine<T>(scale[channel0 + cl], bias[channel0 + cl], mom.mean, rstd);
      detail::apply_segment<T>(xg + cl * spatial, yg + cl * spatial, spatial, p, act, nt);
    }
  }
}

}  // namespace gn
}  // namespace normexport
