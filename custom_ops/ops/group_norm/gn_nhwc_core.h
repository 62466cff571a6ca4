// Framework-free CPU core of normexport::GroupNorm for channels-last input (channels_last=1).
//
// X is contiguous (N, S, C) (S = product of the spatial dims, 1 for rank 2): a sample is an
// S x C row-major matrix and group g is the column band [g * cpg, (g + 1) * cpg), cpg = C / G,
// of every row. The work is cut into tiles that depend only on the shape (never on the thread
// count), so any thread count gives bit-identical results:
//
//   channel block  at most kMaxBlockChannels columns; holds whole groups when
//                  cpg <= kMaxBlockChannels, else one group is split into blocks_per_group
//                  equal-width blocks (every block lies inside one group, or holds whole ones)
//   row tile       rows_per_tile rows, so that a tile is about kTileElements elements
//   tile           (sample n, row tile rt, channel block b)
//
// Per tile, the moments of every group segment (group x block x row tile) are computed in
// double by two passes over the (cache-hot) tile: per-column sums -> segment mean, then
// per-column sums of (x - mean)^2 -> segment m2. Segments are combined per group in a fixed
// order (row tile, then block) with Chan et al.'s formula. Never uses E[x^2] - E[x]^2.
// Normalization: per column c, m = (Cmp)mean, a = (Cmp)(scale[c] * rstd),
// b = (Cmp)(bias[c] - (mean - m) * a), y = act((x - m) * a + b), Cmp = float for float and
// float16 (converted row segment by row segment), double for double; the rounding remainder
// of the mean goes into b, so a large mean against a small spread keeps its few-ulp accuracy.
// A tile holding whole groups over all rows (one row tile, whole-group blocks) normalizes
// right after its statistics (one task reads the tile three times, two of them from cache).
// NaN/Inf: any NaN or Inf in a group makes its m2 NaN, so the whole group becomes NaN, as in
// the float64 reference. 64-bit indexing throughout.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "normexport/nhwc_columns.h"

namespace normexport {
namespace gn {
namespace nhwc {

inline constexpr int64_t kMaxBlockChannels = ::normexport::nhwc::kMaxColumns;

using ::normexport::nhwc::Combine;
using ::normexport::nhwc::Moments;
using ::normexport::nhwc::Tile;
using ::normexport::nhwc::TileOf;  // n, rt, b, r0, rows (columns: BlockOf)

// The shape-only split of an (N, S, C) tensor with G groups into tiles: the row tiles and tile
// order of nhwc_columns.h, with group-aware channel blocks.
struct Tiling : ::normexport::nhwc::Tiling {
  int64_t G = 0, cpg = 0;
  int64_t groups_per_block = 1;   // whole-group blocks (cpg <= kMaxBlockChannels), else 1
  int64_t blocks_per_group = 1;   // > 1 when a group is split into blocks

  // one task per tile sees whole groups over all rows: statistics and normalization fused
  bool fused() const noexcept { return row_tiles == 1 && blocks_per_group == 1; }
  // partial moments: index of (n, row tile, group, block of the group)
  int64_t num_partials() const noexcept { return N * row_tiles * G * blocks_per_group; }
  int64_t partial_index(int64_t n, int64_t rt, int64_t g, int64_t k) const noexcept {
    return ((n * row_tiles + rt) * G + g) * blocks_per_group + k;
  }
};

// N, S, C > 0, G > 0 divides C.
inline Tiling MakeTiling(int64_t N, int64_t S, int64_t C, int64_t G) noexcept {
  Tiling t;
  t.N = N, t.S = S, t.C = C, t.G = G, t.cpg = C / G;
  if (t.cpg <= kMaxBlockChannels) {
    t.groups_per_block = std::max<int64_t>(1, std::min(G, kMaxBlockChannels / t.cpg));
    t.blocks_per_group = 1;
    t.block_width = t.groups_per_block * t.cpg;
    t.num_blocks = (G + t.groups_per_block - 1) / t.groups_per_block;
  } else {
    t.groups_per_block = 1;
    t.blocks_per_group = (t.cpg + kMaxBlockChannels - 1) / kMaxBlockChannels;
    t.block_width = (t.cpg + t.blocks_per_group - 1) / t.blocks_per_group;
    t.num_blocks = G * t.blocks_per_group;
  }
  ::normexport::nhwc::SetRowTiles(t);
  return t;
}

// Channel block b: columns [c0, c1); the groups [g0, g1) it touches; k = its index inside its
// group when groups are split (0 otherwise).
struct Block {
  int64_t c0, c1, g0, g1, k;
};
inline Block BlockOf(const Tiling& t, int64_t b) noexcept {
  Block r;
  if (t.blocks_per_group == 1) {
    r.g0 = b * t.groups_per_block;
    r.g1 = std::min(t.G, r.g0 + t.groups_per_block);
    r.c0 = r.g0 * t.cpg;
    r.c1 = r.g1 * t.cpg;
    r.k = 0;
  } else {
    r.g0 = b / t.blocks_per_group;
    r.g1 = r.g0 + 1;
    r.k = b % t.blocks_per_group;
    r.c0 = r.g0 * t.cpg + r.k * t.block_width;
    r.c1 = r.g0 * t.cpg + std::min(t.cpg, (r.k + 1) * t.block_width);
  }
  return r;
}

namespace detail {

inline float silu(float v) noexcept { return v / (1.0f + std::exp(-v)); }  // -inf -> NaN, as the reference
inline double silu(double v) noexcept { return v / (1.0 + std::exp(-v)); }

// y[j] = act((x[j] - m[j]) * a[j] + b[j]) for j < w; x and y may alias exactly.
template <typename C>
inline void affine_act(const C* x, C* y, int64_t w, const C* m, const C* a, const C* b, int act) noexcept {
  for (int64_t j = 0; j < w; ++j) y[j] = (x[j] - m[j]) * a[j] + b[j];
  if (act == 1) {
    for (int64_t j = 0; j < w; ++j) y[j] = y[j] < C(0) ? C(0) : y[j];  // NaN kept
  } else if (act == 2) {
    for (int64_t j = 0; j < w; ++j) y[j] = silu(y[j]);
  }
}

}  // namespace detail

// Moments of every group segment of tile (rows [r0, r0 + rows) of sample n, block blk):
// out[g - blk.g0] for the groups [blk.g0, blk.g1). `x` points at the sample's first element.
template <typename T>
inline void TileMoments(const T* x, const Tiling& t, const Block& blk, int64_t r0, int64_t rows,
                        Moments* out) noexcept {
  const int64_t w = blk.c1 - blk.c0;
  const T* tile = x + r0 * t.C + blk.c0;
  double col[kMaxBlockChannels];
  double mean_of_col[kMaxBlockChannels];
  // pass 1: column sums
  ::normexport::nhwc::ColumnSums(tile, t.C, rows, w, col, [](double v, int64_t) noexcept { return v; });
  for (int64_t g = blk.g0; g < blk.g1; ++g) {  // segment means, spread over their columns
    const int64_t s0 = std::max(blk.c0, g * t.cpg) - blk.c0;
    const int64_t s1 = std::min(blk.c1, (g + 1) * t.cpg) - blk.c0;
    double s = 0.0;
    for (int64_t j = s0; j < s1; ++j) s += col[j];
    Moments& m = out[g - blk.g0];
    m.count = rows * (s1 - s0);
    m.mean = s / static_cast<double>(m.count);
    for (int64_t j = s0; j < s1; ++j) mean_of_col[j] = m.mean;
  }
  // pass 2: centered sums of squares (cache-hot)
  ::normexport::nhwc::ColumnSums(tile, t.C, rows, w, col, [&mean_of_col](double v, int64_t j) noexcept {
    const double d = v - mean_of_col[j];
    return d * d;
  });
  for (int64_t g = blk.g0; g < blk.g1; ++g) {
    const int64_t s0 = std::max(blk.c0, g * t.cpg) - blk.c0;
    const int64_t s1 = std::min(blk.c1, (g + 1) * t.cpg) - blk.c0;
    double q = 0.0;
    for (int64_t j = s0; j < s1; ++j) q += col[j];
    out[g - blk.g0].m2 = q;
  }
}

// Normalizes tile (rows [r0, r0 + rows) of one sample, block blk) with the complete moments of
// the block's groups, group_moments[g - blk.g0]. x, y point at the sample's first element.
template <typename T>
inline void TileNormalize(const T* x, T* y, const T* scale, const T* bias, const Tiling& t, const Block& blk,
                          int64_t r0, int64_t rows, const Moments* group_moments, float eps, int act) noexcept {
  using C = typename ::normexport::nhwc::ComputeType<T>::type;
  using ::normexport::nhwc::ToDouble;
  const int64_t w = blk.c1 - blk.c0;
  C m[kMaxBlockChannels], a[kMaxBlockChannels], b[kMaxBlockChannels];
  for (int64_t g = blk.g0; g < blk.g1; ++g) {
    const Moments& mom = group_moments[g - blk.g0];
    const double mean = mom.mean;
    const double rstd = 1.0 / std::sqrt(mom.m2 / static_cast<double>(mom.count) + static_cast<double>(eps));
    const C mc = static_cast<C>(mean);
    // the rounding remainder of the mean (0 for double); NaN/Inf mean -> NaN b
    const double rem = std::isfinite(mean) ? mean - static_cast<double>(mc) : mean;
    const int64_t c_begin = std::max(blk.c0, g * t.cpg), c_end = std::min(blk.c1, (g + 1) * t.cpg);
    for (int64_t c = c_begin; c < c_end; ++c) {
      const double ac = ToDouble(scale[c]) * rstd;
      m[c - blk.c0] = mc;
      a[c - blk.c0] = static_cast<C>(ac);
      b[c - blk.c0] = static_cast<C>(ToDouble(bias[c]) - rem * ac);
    }
  }
  ::normexport::nhwc::MapRows(x + blk.c0, y + blk.c0, t.C, r0, rows, w,
                              [&](const C* in, C* out, int64_t n) noexcept {
                                detail::affine_act<C>(in, out, n, m, a, b, act);
                              });
}

}  // namespace nhwc
}  // namespace gn
}  // namespace normexport
