// Framework-free CPU core of normexport::FilterResponseNorm for channels-last input
// (channels_last=1).
//
// X is contiguous (N, S, C) (S = product of the spatial dims): a sample is an S x C row-major
// matrix and the plane of channel c is its column c. The work is cut into tiles that depend
// only on the shape (never on the thread count), so any thread count gives bit-identical
// results:
//   channel block  at most kMaxBlockChannels columns
//   row tile       rows_per_tile rows, a tile being about kTileElements elements
//   tile           (sample n, row tile rt, channel block b)
// Per tile: per-column sums of x^2 in double (positive terms, no cancellation). The row tiles
// of a column are added in row-tile order: nu2 = sum / S, scale = gamma / sqrt(nu2 + eps) in
// double, applied in the compute type (float for float and float16, double for double):
// y = x * scale + beta, then max(y, tau) if tlu (NaN from either side propagates, as
// numpy.maximum). A tiling with one row tile normalizes right after the statistics (the
// tile is then read from cache). 64-bit indexing throughout.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "normexport/common.h"
#include "normexport/cpu_half.h"
#include "normexport/nhwc_columns.h"

namespace normexport {
namespace frn {
namespace nhwc {

inline constexpr int64_t kMaxBlockChannels = ::normexport::nhwc::kMaxColumns;
inline constexpr int64_t kTileElements = int64_t{1} << 15;

struct Tiling {
  int64_t N = 0, S = 0, C = 0;
  int64_t block_width = 0, num_blocks = 0;
  int64_t rows_per_tile = 0, row_tiles = 0;

  int64_t num_tiles() const noexcept { return N * row_tiles * num_blocks; }
  int64_t tile_elements() const noexcept { return rows_per_tile * block_width; }
  bool fused() const noexcept { return row_tiles == 1; }
};

// N, S, C > 0
inline Tiling MakeTiling(int64_t N, int64_t S, int64_t C) noexcept {
  Tiling t;
  t.N = N, t.S = S, t.C = C;
  t.num_blocks = (C + kMaxBlockChannels - 1) / kMaxBlockChannels;
  t.block_width = (C + t.num_blocks - 1) / t.num_blocks;  // equal-width blocks
  t.rows_per_tile = std::max<int64_t>(1, std::min(S, kTileElements / t.block_width));
  t.row_tiles = (S + t.rows_per_tile - 1) / t.rows_per_tile;
  return t;
}

// columns [c0, c1) of block b
inline void BlockColumns(const Tiling& t, int64_t b, int64_t* c0, int64_t* c1) noexcept {
  *c0 = b * t.block_width;
  *c1 = std::min(t.C, *c0 + t.block_width);
}

namespace detail {

template <typename T>
struct compute_type {
  using type = float;
};
template <>
struct compute_type<double> {
  using type = double;
};

template <typename T>
inline double to_double(T v) noexcept {
  if constexpr (std::is_same<T, half>::value) {
    return static_cast<double>(half_bits_to_float(v.bits));
  } else {
    return static_cast<double>(v);
  }
}

// y[j] = x[j] * s[j] + b[j], then max(y, tau[j]) NaN-propagating; x and y may alias exactly.
template <typename C>
inline void affine_tlu(const C* x, C* y, int64_t w, const C* s, const C* b, const C* tau, bool tlu) noexcept {
  for (int64_t j = 0; j < w; ++j) y[j] = x[j] * s[j] + b[j];
  if (tlu) {
    for (int64_t j = 0; j < w; ++j) {
      const C t = tau[j];
      // y NaN: comparison false, NaN kept; tau NaN: NaN (max(anything, NaN) = NaN)
      y[j] = (y[j] < t || t != t) ? t : y[j];
    }
  }
}

}  // namespace detail

// Per-column sums of x^2 over rows [r0, r0 + rows) and columns [c0, c1) of a sample (`x` at its
// first element): out[j] for column c0 + j.
template <typename T>
inline void TileSumSquares(const T* x, const Tiling& t, int64_t c0, int64_t c1, int64_t r0, int64_t rows,
                           double* out) noexcept {
  ::normexport::nhwc::ColumnSums(x + r0 * t.C + c0, t.C, rows, c1 - c0, out,
                                 [](double v, int64_t) noexcept { return v * v; });
}

// Normalizes rows [r0, r0 + rows), columns [c0, c1) of a sample with the complete sums of
// squares of those columns, sum_sq[j] (over all S rows).
template <typename T>
inline void TileNormalize(const T* x, T* y, const T* gamma, const T* beta, const T* tau, const Tiling& t, int64_t c0,
                          int64_t c1, int64_t r0, int64_t rows, const double* sum_sq, float eps, bool tlu) noexcept {
  using C = typename detail::compute_type<T>::type;
  const int64_t w = c1 - c0;
  C s[kMaxBlockChannels], b[kMaxBlockChannels], ta[kMaxBlockChannels];
  for (int64_t j = 0; j < w; ++j) {
    const double nu2 = sum_sq[j] / static_cast<double>(t.S);
    s[j] = static_cast<C>(detail::to_double(gamma[c0 + j]) / std::sqrt(nu2 + static_cast<double>(eps)));
    b[j] = static_cast<C>(detail::to_double(beta[c0 + j]));
    ta[j] = tlu ? static_cast<C>(detail::to_double(tau[c0 + j])) : C(0);
  }
  for (int64_t r = r0; r < r0 + rows; ++r) {
    const int64_t off = r * t.C + c0;
    if constexpr (std::is_same<T, half>::value) {
      float buf[kMaxBlockChannels];
      half_to_float_n(x + off, buf, static_cast<size_t>(w));
      detail::affine_tlu<float>(buf, buf, w, s, b, ta, tlu);
      float_to_half_n(buf, y + off, static_cast<size_t>(w));
    } else {
      detail::affine_tlu<C>(x + off, y + off, w, s, b, ta, tlu);
    }
  }
}

}  // namespace nhwc
}  // namespace frn
}  // namespace normexport
