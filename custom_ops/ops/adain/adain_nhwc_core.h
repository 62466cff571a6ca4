// Framework-free CPU core of normexport::AdaIN for channels-last input (channels_last=1).
//
// content is contiguous (N, Sx, C), style (N, Sz, C): the plane of channel c of sample n is
// column c of a row-major S x C matrix. Each tensor is cut into tiles that depend only on its
// shape (never on the thread count), so any thread count gives bit-identical results:
//   channel block  at most kMaxBlockChannels columns (equal widths)
//   row tile       rows_per_tile rows, a tile being about kTileElements elements
//   tile           (sample n, row tile rt, channel block b)
// Per tile and column, two passes in double over the (cache-hot) tile: the column sum ->
// mean, then the sum of (x - mean)^2 -> m2. The row tiles of a column are combined in
// row-tile order with Chan et al.'s formula (no E[x^2] - E[x]^2). Then per (n, c), in double:
//   s = sqrt(var_z + eps) / sqrt(var_x + eps), a = alpha * s + (1 - alpha),
//   b = alpha * mu_z + (1 - alpha) * mu_x,
//   m = (Cmp)mu_x, b' = b - (mu_x - m) * a    (the rounding remainder of the mean into b)
//   y = (x - m) * a + b'                      in Cmp: float for float / float16, double for double
// When every column of both tensors fits in one row tile, a task does a channel block of a
// sample completely (statistics, coefficients, normalization: one parallel pass); otherwise
// the statistics of all content and style tiles run as one parallel pass and the
// normalization as a second.
// A plane of zero style elements has a NaN mean (like the reference), so its output is NaN;
// NaN / Inf in a plane make its statistics NaN, hence the whole output plane.
// 64-bit indexing throughout.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "normexport/nhwc_columns.h"

namespace normexport {
namespace adain {
namespace nhwc {

inline constexpr int64_t kMaxBlockChannels = ::normexport::nhwc::kMaxColumns;

using ::normexport::nhwc::Combine;
using ::normexport::nhwc::MakeTiling;  // equal-width channel blocks: the same in both tensors
using ::normexport::nhwc::Moments;
using ::normexport::nhwc::Tile;
using ::normexport::nhwc::TileOf;
using ::normexport::nhwc::Tiling;

// Column moments of one tile: out[j] for column tl.c0 + j. `x` points at the tensor's first
// element.
template <typename T>
inline void TileColumnMoments(const T* x, const Tiling& t, const Tile& tl, Moments* out) noexcept {
  const int64_t w = tl.c1 - tl.c0;
  const T* tile = x + (tl.n * t.S + tl.r0) * t.C + tl.c0;
  double acc[kMaxBlockChannels];
  double mean[kMaxBlockChannels];
  ::normexport::nhwc::ColumnSums(tile, t.C, tl.rows, w, acc, [](double v, int64_t) noexcept { return v; });
  const double inv = 1.0 / static_cast<double>(tl.rows);
  for (int64_t j = 0; j < w; ++j) mean[j] = acc[j] * inv;
  ::normexport::nhwc::ColumnSums(tile, t.C, tl.rows, w, acc, [&mean](double v, int64_t j) noexcept {
    const double d = v - mean[j];
    return d * d;
  });
  for (int64_t j = 0; j < w; ++j) out[j] = {tl.rows, mean[j], acc[j]};
}

// y = (x - m) * a + b over one content tile; mm, aa, bb: the coefficients of the tile's
// columns (mm[j] for column tl.c0 + j).
template <typename T, typename Cmp>
inline void TileApply(const T* x, T* y, const Tiling& t, const Tile& tl, const Cmp* mm, const Cmp* aa,
                      const Cmp* bb) noexcept {
  const int64_t off = tl.n * t.S * t.C + tl.c0;
  ::normexport::nhwc::MapRows(x + off, y + off, t.C, tl.r0, tl.rows, tl.c1 - tl.c0,
                              [&](const auto* in, auto* out, int64_t w) noexcept {
                                for (int64_t j = 0; j < w; ++j) out[j] = (in[j] - mm[j]) * aa[j] + bb[j];
                              });
}

// The per-plane coefficients (m, a, b) from the content and style moments.
template <typename Cmp>
inline void Coefficients(const Moments& mx, const Moments& mz, float eps, float alpha, Cmp* m, Cmp* a,
                         Cmp* b) noexcept {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double mu_x = mx.count > 0 ? mx.mean : nan, var_x = mx.count > 0 ? mx.m2 / mx.count : nan;
  const double mu_z = mz.count > 0 ? mz.mean : nan, var_z = mz.count > 0 ? mz.m2 / mz.count : nan;
  const double e = static_cast<double>(eps), al = static_cast<double>(alpha);
  const double s = std::sqrt(var_z + e) / std::sqrt(var_x + e);
  const double ad = al * s + (1.0 - al);
  const double bd = al * mu_z + (1.0 - al) * mu_x;
  const Cmp mc = static_cast<Cmp>(mu_x);
  const double rem = std::isfinite(mu_x) ? mu_x - static_cast<double>(mc) : mu_x;  // NaN/Inf -> NaN b
  *m = mc;
  *a = static_cast<Cmp>(ad);
  *b = static_cast<Cmp>(bd - rem * ad);
}

}  // namespace nhwc
}  // namespace adain
}  // namespace normexport
