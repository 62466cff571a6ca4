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

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "normexport/common.h"
#include "normexport/cpu_half.h"
#include "normexport/nhwc_columns.h"

namespace normexport {
namespace adain {
namespace nhwc {

inline constexpr int64_t kMaxBlockChannels = ::normexport::nhwc::kMaxColumns;
inline constexpr int64_t kTileElements = int64_t{1} << 15;

struct Moments {
  int64_t count = 0;
  double mean = 0.0;
  double m2 = 0.0;
};

// Chan et al.'s pairwise combination.
inline Moments Combine(const Moments& a, const Moments& b) noexcept {
  if (a.count == 0) return b;
  if (b.count == 0) return a;
  Moments r;
  r.count = a.count + b.count;
  const double n = static_cast<double>(r.count);
  const double delta = b.mean - a.mean;
  r.mean = a.mean + delta * (static_cast<double>(b.count) / n);
  r.m2 = a.m2 + b.m2 + delta * delta * (static_cast<double>(a.count) * static_cast<double>(b.count) / n);
  return r;
}

struct Tiling {
  int64_t N = 0, S = 0, C = 0;
  int64_t block_width = 0, num_blocks = 0;
  int64_t rows_per_tile = 0, row_tiles = 0;

  int64_t num_tiles() const noexcept { return N * row_tiles * num_blocks; }
  int64_t tile_elements() const noexcept { return rows_per_tile * block_width; }
};

// N >= 0, S >= 0, C > 0 (S == 0 or N == 0: no tiles)
inline Tiling MakeTiling(int64_t N, int64_t S, int64_t C) noexcept {
  Tiling t;
  t.N = N, t.S = S, t.C = C;
  t.num_blocks = (C + kMaxBlockChannels - 1) / kMaxBlockChannels;
  t.block_width = (C + t.num_blocks - 1) / t.num_blocks;
  t.rows_per_tile = std::max<int64_t>(1, std::min(S, kTileElements / t.block_width));
  t.row_tiles = (S + t.rows_per_tile - 1) / t.rows_per_tile;
  return t;
}

// tile index -> sample, row tile, columns [c0, c1), rows [r0, r0 + rows)
struct Tile {
  int64_t n, rt, c0, c1, r0, rows;
};
inline Tile TileOf(const Tiling& t, int64_t tile) noexcept {
  Tile r;
  const int64_t b = tile % t.num_blocks;
  r.rt = (tile / t.num_blocks) % t.row_tiles;
  r.n = tile / (t.num_blocks * t.row_tiles);
  r.c0 = b * t.block_width;
  r.c1 = std::min(t.C, r.c0 + t.block_width);
  r.r0 = r.rt * t.rows_per_tile;
  r.rows = std::min(t.rows_per_tile, t.S - r.r0);
  return r;
}

template <typename T>
inline double ToDouble(T v) noexcept {
  if constexpr (std::is_same<T, half>::value) {
    return static_cast<double>(half_bits_to_float(v.bits));
  } else {
    return static_cast<double>(v);
  }
}

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
  const int64_t w = tl.c1 - tl.c0;
  for (int64_t r = tl.r0; r < tl.r0 + tl.rows; ++r) {
    const int64_t off = (tl.n * t.S + r) * t.C + tl.c0;
    if constexpr (std::is_same<T, half>::value) {
      float buf[kMaxBlockChannels];
      half_to_float_n(x + off, buf, static_cast<size_t>(w));
      for (int64_t j = 0; j < w; ++j) buf[j] = (buf[j] - mm[j]) * aa[j] + bb[j];
      float_to_half_n(buf, y + off, static_cast<size_t>(w));
    } else {
      const T* xr = x + off;
      T* yr = y + off;
      for (int64_t j = 0; j < w; ++j) yr[j] = (xr[j] - mm[j]) * aa[j] + bb[j];
    }
  }
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
