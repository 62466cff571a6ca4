// CUDA kernel of normexport::FilterResponseNorm for channels-last input (channels_last=1).
// X is (N, S, C): the plane of channel c of sample n is column c of an S x C row-major
// matrix. One block per (n, tile of tx consecutive channels) (grid-stride over tiles), threads
// laid out tx x ty (tx = power of two >= C, at most 32; tx * ty = kThreads): a warp reads
// contiguous channels of 32 / tx rows (coalesced). Pass 1: per-thread Kahan-compensated float
// sums of x^2 down the column, the ty partial sums of a column added in double; pass 2: the
// fused scale/shift/TLU. 64-bit indexing throughout.
// When there are fewer tiles than kTargetBlocks and the columns are long, the rows are split
// into `splits` ranges (each block then does (tile, row range)) in two kernels: partial sums
// of x^2 per (n, range, c) into device scratch (double), then every block adds its columns'
// partials in range order (deterministic) and normalizes its rows.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "filter_response_norm/frn_cuda.h"
#include "normexport/cuda_block.cuh"
#include "normexport/cuda_launch.h"
#include "normexport/cuda_nhwc.cuh"

namespace normexport {
namespace frn {
namespace {

using cuda::DeviceType;
using cuda::GridFor;
using cuda::Kahan;
using cuda::Load;
using cuda::Store;

using cuda::nhwc::ColumnTotal;
using cuda::nhwc::ColumnUnitOf;
using cuda::nhwc::kMaxTx;
using cuda::nhwc::RowRange;
constexpr int kThreads = cuda::nhwc::kColumnThreads;

// This thread's Kahan-compensated float sum of x^2 over rows r0 + ty, r0 + ty + height, ...
// (< r1) of column c of sample n.
template <typename T>
__device__ __forceinline__ float ColumnSumSquares(const T* __restrict__ x, int64_t n, int64_t c, int64_t r0,
                                                  int64_t r1, int64_t plane_size, int64_t channels) {
  Kahan acc;
  for (int64_t r = r0 + threadIdx.y; r < r1; r += blockDim.y) {
    const float v = Load(x, (n * plane_size + r) * channels + c);
    acc.Add(v * v);
  }
  return acc.sum;
}

// gamma[c] / sqrt(sum_sq / plane_size + eps), in double
template <typename T>
__device__ __forceinline__ float ColumnScale(const T* __restrict__ gamma, int64_t c, double sum_sq, int64_t plane_size,
                                             float eps) {
  const double nu2 = sum_sq / static_cast<double>(plane_size);
  return static_cast<float>(static_cast<double>(Load(gamma, c)) / sqrt(nu2 + static_cast<double>(eps)));
}

// y = x * scale + beta[c], then the NaN-propagating max with tau[c], over this thread's rows
// of [r0, r1) of column c of sample n.
template <typename T>
__device__ __forceinline__ void ColumnApply(const T* __restrict__ x, T* __restrict__ y, const T* __restrict__ beta,
                                            const T* __restrict__ tau, int64_t n, int64_t c, int64_t r0, int64_t r1,
                                            int64_t plane_size, int64_t channels, float scale, bool tlu) {
  const float shift = Load(beta, c);
  const float t = tlu ? Load(tau, c) : 0.f;
  const bool tau_nan = tlu && isnan(t);
  for (int64_t r = r0 + threadIdx.y; r < r1; r += blockDim.y) {
    const int64_t i = (n * plane_size + r) * channels + c;
    float v = fmaf(Load(x, i), scale, shift);
    if (tlu) v = (v < t || tau_nan) ? t : v;
    Store(y, i, v);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    FilterResponseNormNhwcKernel(const T* __restrict__ x, T* __restrict__ y, const T* __restrict__ gamma,
                                 const T* __restrict__ beta, const T* __restrict__ tau, int64_t batch,
                                 int64_t channels, int64_t plane_size, int64_t channel_tiles, float eps, bool tlu) {
  __shared__ float partial[kThreads];
  __shared__ float s_scale[kMaxTx];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t num_tiles = batch * channel_tiles;

  for (int64_t tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
    const auto cu = ColumnUnitOf(tile, 1, channel_tiles, channels);
    // pass 1: sum of squares down the column (float, Kahan-compensated per thread)
    partial[ty * blockDim.x + tx] = cu.valid ? ColumnSumSquares(x, cu.n, cu.c, 0, plane_size, plane_size, channels)
                                             : 0.f;
    __syncthreads();
    if (ty == 0 && cu.valid) s_scale[tx] = ColumnScale(gamma, cu.c, ColumnTotal(partial), plane_size, eps);
    __syncthreads();
    // pass 2: y = x * scale + beta, then NaN-propagating max with tau
    if (cu.valid) ColumnApply(x, y, beta, tau, cu.n, cu.c, 0, plane_size, plane_size, channels, s_scale[tx], tlu);
    __syncthreads();  // partial / s_scale are reused by the next tile
  }
}

// Split rows, kernel 1: partial[(n * splits + s) * channels + c] = sum of x^2 over range s.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    FrnNhwcPartialKernel(const T* __restrict__ x, double* __restrict__ partial, int64_t batch, int64_t channels,
                         int64_t plane_size, int64_t channel_tiles, int64_t splits, int64_t rows_per_split) {
  __shared__ float part[kThreads];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t units = batch * channel_tiles * splits;
  for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {
    const auto cu = ColumnUnitOf(u, splits, channel_tiles, channels);
    int64_t r0, r1;
    RowRange(cu.s, rows_per_split, plane_size, &r0, &r1);
    part[ty * blockDim.x + tx] = cu.valid ? ColumnSumSquares(x, cu.n, cu.c, r0, r1, plane_size, channels) : 0.f;
    __syncthreads();
    if (ty == 0 && cu.valid) partial[(cu.n * splits + cu.s) * channels + cu.c] = ColumnTotal(part);
    __syncthreads();  // part is reused by the next unit
  }
}

// Split rows, kernel 2: the column totals (ranges added in order), then the rows of range s.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    FrnNhwcApplyKernel(const T* __restrict__ x, T* __restrict__ y, const T* __restrict__ gamma,
                       const T* __restrict__ beta, const T* __restrict__ tau, const double* __restrict__ partial,
                       int64_t batch, int64_t channels, int64_t plane_size, int64_t channel_tiles, int64_t splits,
                       int64_t rows_per_split, float eps, bool tlu) {
  __shared__ float s_scale[kMaxTx];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t units = batch * channel_tiles * splits;
  for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {
    const auto cu = ColumnUnitOf(u, splits, channel_tiles, channels);
    if (ty == 0 && cu.valid) {
      double t = 0.0;
      for (int64_t k = 0; k < splits; ++k) t += partial[(cu.n * splits + k) * channels + cu.c];
      s_scale[tx] = ColumnScale(gamma, cu.c, t, plane_size, eps);
    }
    __syncthreads();
    if (cu.valid) {
      int64_t r0, r1;
      RowRange(cu.s, rows_per_split, plane_size, &r0, &r1);
      ColumnApply(x, y, beta, tau, cu.n, cu.c, r0, r1, plane_size, channels, s_scale[tx], tlu);
    }
    __syncthreads();  // s_scale is reused by the next unit
  }
}

}  // namespace

size_t FilterResponseNormNhwcScratchBytes(int64_t batch, int64_t channels, int64_t plane_size) noexcept {
  if (batch <= 0 || channels <= 0 || plane_size <= 0) return 0;
  const auto p = cuda::nhwc::MakeColumnPlan(batch, channels, plane_size);
  return p.splits > 1 ? static_cast<size_t>(batch * p.splits * channels) * sizeof(double) : 0;
}

template <typename T>
int LaunchFilterResponseNormNhwc(void* stream, const T* x, T* y, const T* gamma, const T* beta, const T* tau,
                                 int64_t batch, int64_t channels, int64_t plane_size, float eps, bool tlu,
                                 void* scratch) noexcept {
  if (batch <= 0 || channels <= 0 || plane_size <= 0) return cudaSuccess;
  int err = cuda::UseStreamDevice(stream);
  if (err != cudaSuccess) return err;

  const auto p = cuda::nhwc::MakeColumnPlan(batch, channels, plane_size);
  const dim3 block(static_cast<unsigned>(p.width), static_cast<unsigned>(p.height));
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  using D = typename DeviceType<T>::type;
  const D* dx = reinterpret_cast<const D*>(x);
  if (p.splits == 1) {  // one block per tile (grid-stride loop covers the rest)
    FilterResponseNormNhwcKernel<D><<<GridFor(batch * p.channel_tiles), block, 0, st>>>(
        dx, reinterpret_cast<D*>(y), reinterpret_cast<const D*>(gamma), reinterpret_cast<const D*>(beta),
        reinterpret_cast<const D*>(tau), batch, channels, plane_size, p.channel_tiles, eps, tlu);
    return static_cast<int>(cudaGetLastError());
  }
  if (scratch == nullptr) return cudaErrorInvalidValue;  // FilterResponseNormNhwcScratchBytes() > 0
  double* partial = static_cast<double*>(scratch);
  const unsigned blocks = GridFor(batch * p.channel_tiles * p.splits);
  FrnNhwcPartialKernel<D><<<blocks, block, 0, st>>>(dx, partial, batch, channels, plane_size, p.channel_tiles,
                                                    p.splits, p.rows_per_split);
  err = static_cast<int>(cudaGetLastError());
  if (err != cudaSuccess) return err;
  FrnNhwcApplyKernel<D><<<blocks, block, 0, st>>>(
      dx, reinterpret_cast<D*>(y), reinterpret_cast<const D*>(gamma), reinterpret_cast<const D*>(beta),
      reinterpret_cast<const D*>(tau), partial, batch, channels, plane_size, p.channel_tiles, p.splits,
      p.rows_per_split, eps, tlu);
  return static_cast<int>(cudaGetLastError());
}

template int LaunchFilterResponseNormNhwc<float>(void*, const float*, float*, const float*, const float*,
                                                 const float*, int64_t, int64_t, int64_t, float, bool, void*) noexcept;
template int LaunchFilterResponseNormNhwc<half>(void*, const half*, half*, const half*, const half*, const half*,
                                                int64_t, int64_t, int64_t, float, bool, void*) noexcept;

}  // namespace frn
}  // namespace normexport
