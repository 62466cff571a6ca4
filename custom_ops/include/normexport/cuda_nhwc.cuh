// Launch machinery shared by the channels-last CUDA kernels (ops/*/..._nhwc_cuda.cu; nvcc
// only): the split of long columns / groups into row ranges when there are few
// tiles, and, for the column-tile kernels (FilterResponseNorm, AdaIN), the tx x ty block shape
// (tx = power of two >= C, at most kMaxTx; tx * ty = kColumnThreads) and the in-block sum of a
// column's ty partial sums.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "normexport/cuda_block.cuh"

namespace normexport {
namespace cuda {
namespace nhwc {

constexpr int64_t kTargetBlocks = 1024;  // enough blocks for any current GPU

// Rows [r0, r1) of range s of a `rows`-row column split into ranges of rows_per_split.
__host__ __device__ __forceinline__ void RowRange(int64_t s, int64_t rows_per_split, int64_t rows, int64_t* r0,
                                                  int64_t* r1) {
  *r0 = s * rows_per_split;
  *r1 = *r0 + rows_per_split < rows ? *r0 + rows_per_split : rows;
}

constexpr int kColumnThreads = 512;
constexpr int kMaxTx = 32;

// The launch shape of a column-tile kernel: channels per block (width = tx), rows per block
// step (height = ty), rows split into `splits` ranges of rows_per_split.
struct ColumnPlan {
  int width = 1, height = kColumnThreads;
  int64_t channel_tiles = 0, splits = 1, rows_per_split = 0;
};
inline ColumnPlan MakeColumnPlan(int64_t batch, int64_t channels, int64_t rows) {
  ColumnPlan p;
  while (p.width < kMaxTx && p.width < channels) p.width *= 2;
  p.height = kColumnThreads / p.width;
  p.channel_tiles = (channels + p.width - 1) / p.width;
  const int64_t units = batch * p.channel_tiles;
  if (units > 0 && units < kTargetBlocks && rows > 0) {
    const int64_t by_blocks = (kTargetBlocks + units - 1) / units;
    const int64_t by_rows = (rows + 4 * p.height - 1) / (4 * p.height);  // >= 4 rows per thread
    p.splits = by_blocks < by_rows ? by_blocks : by_rows;
    if (p.splits < 1) p.splits = 1;
  }
  p.rows_per_split = (rows + p.splits - 1) / p.splits;
  if (p.rows_per_split > 0) p.splits = (rows + p.rows_per_split - 1) / p.rows_per_split;
  return p;
}

// Work unit u of a column-tile kernel: (sample n, channel tile, row range s), row ranges
// innermost; column c of this thread (valid: c < channels).
struct ColumnUnit {
  int64_t n, s, c;
  bool valid;
};
__device__ __forceinline__ ColumnUnit ColumnUnitOf(int64_t u, int64_t splits, int64_t channel_tiles,
                                                   int64_t channels) {
  const int64_t tile = u / splits;
  ColumnUnit r;
  r.s = u % splits;
  r.n = tile / channel_tiles;
  r.c = (tile % channel_tiles) * blockDim.x + threadIdx.x;
  r.valid = r.c < channels;
  return r;
}

// The block's (blockDim.y) partial sums of column threadIdx.x, partial[ty * width + tx],
// added in double in ty order.
__device__ __forceinline__ double ColumnTotal(const float* partial) {
  const int tx = threadIdx.x, width = blockDim.x, height = blockDim.y;
  double t = 0.0;
  for (int k = 0; k < height; ++k) t += static_cast<double>(partial[k * width + tx]);
  return t;
}

}  // namespace nhwc
}  // namespace cuda
}  // namespace normexport
