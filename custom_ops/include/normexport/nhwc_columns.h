// The shared machinery of the channels-last CPU cores (ops/*/..._nhwc_core.h; host C++ only):
// the shape-only tiling of an (N, S, C) tensor, Chan's combination of moments, the mapping of
// rows (float16 through a float buffer), and the column sums over the rows of a tile (the
// statistics loops). ColumnSums: a tile is `rows` rows of `w` <= kMaxColumns consecutive
// channels, rows `stride` elements apart; acc[j] = sum over the rows of term(x[r][j], j), in
// double. Rows are taken four at a time (acc[j] += (t0 + t1) + (t2 + t3)), so the accumulator
// array is loaded and stored once per four elements, and the summation order depends only on
// the tile. float16 rows are converted to float first (F16C when present).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "normexport/common.h"
#include "normexport/cpu_half.h"
#include "normexport/cpu_moments.h"

namespace normexport {
namespace nhwc {

inline constexpr int64_t kMaxColumns = 512;
inline constexpr int64_t kTileElements = int64_t{1} << 15;  // a tile: about this many elements

// count, mean, M2 and their Chan combination (normexport/cpu_moments.h)
using Moments = moments::Counted;
using moments::Combine;

// The arithmetic type of the normalization: float for float and float16, double for double.
template <typename T>
using ComputeType = ::normexport::moments::compute_type<T>;

template <typename T>
inline double ToDouble(T v) noexcept {
  return static_cast<double>(::normexport::moments::load(v));
}

// The shape-only split of an (N, S, C) tensor into tiles (sample n, row tile rt, channel
// block b), index ((n * row_tiles + rt) * num_blocks + b): channel blocks of at most
// kMaxColumns columns, row tiles of rows_per_tile rows (a tile about kTileElements elements).
// MakeTiling: equal-width blocks; an op with its own blocks (GroupNorm) sets block_width and
// num_blocks, then SetRowTiles.
struct Tiling {
  int64_t N = 0, S = 0, C = 0;
  int64_t block_width = 0, num_blocks = 0;
  int64_t rows_per_tile = 0, row_tiles = 0;

  int64_t num_tiles() const noexcept { return N * row_tiles * num_blocks; }
  int64_t tile_elements() const noexcept { return rows_per_tile * block_width; }
};

inline void SetRowTiles(Tiling& t) noexcept {
  t.rows_per_tile = std::max<int64_t>(1, std::min(t.S, kTileElements / t.block_width));
  t.row_tiles = (t.S + t.rows_per_tile - 1) / t.rows_per_tile;
}

// N >= 0, S >= 0, C > 0 (S == 0 or N == 0: no tiles)
inline Tiling MakeTiling(int64_t N, int64_t S, int64_t C) noexcept {
  Tiling t;
  t.N = N, t.S = S, t.C = C;
  t.num_blocks = (C + kMaxColumns - 1) / kMaxColumns;
  t.block_width = (C + t.num_blocks - 1) / t.num_blocks;  // equal-width blocks
  SetRowTiles(t);
  return t;
}

// Tile index -> sample n, row tile rt (rows [r0, r0 + rows)), channel block b, and the block's
// columns [c0, c1) for equal-width blocks (MakeTiling).
struct Tile {
  int64_t n, rt, b, r0, rows, c0, c1;
};
inline Tile TileOf(const Tiling& t, int64_t tile) noexcept {
  Tile r;
  r.b = tile % t.num_blocks;
  r.rt = (tile / t.num_blocks) % t.row_tiles;
  r.n = tile / (t.num_blocks * t.row_tiles);
  r.r0 = r.rt * t.rows_per_tile;
  r.rows = std::min(t.rows_per_tile, t.S - r.r0);
  r.c0 = r.b * t.block_width;
  r.c1 = std::min(t.C, r.c0 + t.block_width);
  return r;
}

// y row = f(x row) over rows [r0, r0 + rows) of w <= kMaxColumns columns, rows `stride`
// elements apart: f(const Cmp* in, Cmp* out, int64_t w), Cmp = ComputeType<T>; float16 rows
// go through a float buffer (in == out), other types are passed in place (x and y may alias
// exactly).
template <typename T, typename F>
inline void MapRows(const T* x, T* y, int64_t stride, int64_t r0, int64_t rows, int64_t w, const F& f) noexcept {
  for (int64_t r = r0; r < r0 + rows; ++r) {
    const int64_t off = r * stride;
    if constexpr (std::is_same<T, half>::value) {
      float buf[kMaxColumns];
      half_to_float_n(x + off, buf, static_cast<size_t>(w));
      f(static_cast<const float*>(buf), buf, w);
      float_to_half_n(buf, y + off, static_cast<size_t>(w));
    } else {
      f(x + off, y + off, w);
    }
  }
}

// term: double (double value, int64_t column) noexcept
template <typename T, typename Term>
inline void ColumnSums(const T* x, int64_t stride, int64_t rows, int64_t w, double* __restrict__ acc,
                       const Term& term) noexcept {
  for (int64_t j = 0; j < w; ++j) acc[j] = 0.0;
  int64_t r = 0;
  if constexpr (std::is_same<T, half>::value) {
    float b0[kMaxColumns], b1[kMaxColumns], b2[kMaxColumns], b3[kMaxColumns];
    for (; r + 4 <= rows; r += 4) {
      half_to_float_n(x + r * stride, b0, static_cast<size_t>(w));
      half_to_float_n(x + (r + 1) * stride, b1, static_cast<size_t>(w));
      half_to_float_n(x + (r + 2) * stride, b2, static_cast<size_t>(w));
      half_to_float_n(x + (r + 3) * stride, b3, static_cast<size_t>(w));
      for (int64_t j = 0; j < w; ++j)
        acc[j] += (term(static_cast<double>(b0[j]), j) + term(static_cast<double>(b1[j]), j)) +
                  (term(static_cast<double>(b2[j]), j) + term(static_cast<double>(b3[j]), j));
    }
    for (; r < rows; ++r) {
      half_to_float_n(x + r * stride, b0, static_cast<size_t>(w));
      for (int64_t j = 0; j < w; ++j) acc[j] += term(static_cast<double>(b0[j]), j);
    }
  } else {
    for (; r + 4 <= rows; r += 4) {
      const T* __restrict__ p0 = x + r * stride;
      const T* __restrict__ p1 = p0 + stride;
      const T* __restrict__ p2 = p1 + stride;
      const T* __restrict__ p3 = p2 + stride;
      for (int64_t j = 0; j < w; ++j)
        acc[j] += (term(static_cast<double>(p0[j]), j) + term(static_cast<double>(p1[j]), j)) +
                  (term(static_cast<double>(p2[j]), j) + term(static_cast<double>(p3[j]), j));
    }
    for (; r < rows; ++r) {
      const T* __restrict__ p0 = x + r * stride;
      for (int64_t j = 0; j < w; ++j) acc[j] += term(static_cast<double>(p0[j]), j);
    }
  }
}

}  // namespace nhwc
}  // namespace normexport
