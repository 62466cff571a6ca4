// Column sums over the rows of a channels-last tile (host C++ only): the statistics loops of
// the NHWC CPU cores (ops/*/..._nhwc_core.h). A tile is `rows` rows of `w` <= kMaxColumns
// consecutive channels, rows `stride` elements apart; acc[j] = sum over the rows of
// term(x[r][j], j), in double. Rows are taken four at a time (acc[j] += (t0 + t1) + (t2 + t3)),
// so the accumulator array is loaded and stored once per four elements, and the summation
// order depends only on the tile. float16 rows are converted to float first (F16C when
// present).
#pragma once

#include <cstdint>
#include <type_traits>

#include "normexport/common.h"
#include "normexport/cpu_half.h"

namespace normexport {
namespace nhwc {

inline constexpr int64_t kMaxColumns = 512;

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
