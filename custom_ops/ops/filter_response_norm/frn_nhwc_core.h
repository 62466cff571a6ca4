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

#include <cmath>
#include <cstdint>

#include "normexport/nhwc_columns.h"

namespace normexport {
namespace frn {
namespace nhwc {

inline constexpr int64_t kMaxBlockChannels = ::normexport::nhwc::kMaxColumns;

// equal-width channel blocks (N, S, C > 0); one row tile: statistics and normalization fused
using ::normexport::nhwc::MakeTiling;
using ::normexport::nhwc::Tile;
using ::normexport::nhwc::TileOf;
using ::normexport::nhwc::Tiling;
inline bool Fused(const Tiling& t) noexcept { return t.row_tiles == 1; }

namespace detail {

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
  using C = typename ::normexport::nhwc::ComputeType<T>::type;
  using ::normexport::nhwc::ToDouble;
  const int64_t w = c1 - c0;
  C s[kMaxBlockChannels], b[kMaxBlockChannels], ta[kMaxBlockChannels];
  for (int64_t j = 0; j < w; ++j) {
    const double nu2 = sum_sq[j] / static_cast<double>(t.S);
    s[j] = static_cast<C>(ToDouble(gamma[c0 + j]) / std::sqrt(nu2 + static_cast<double>(eps)));
    b[j] = static_cast<C>(ToDouble(beta[c0 + j]));
    ta[j] = tlu ? static_cast<C>(ToDouble(tau[c0 + j])) : C(0);
  }
  ::normexport::nhwc::MapRows(x + c0, y + c0, t.C, r0, rows, w, [&](const C* in, C* out, int64_t n) noexcept {
    detail::affine_tlu<C>(in, out, n, s, b, ta, tlu);
  });
}

}  // namespace nhwc
}  // namespace frn
}  // namespace normexport
