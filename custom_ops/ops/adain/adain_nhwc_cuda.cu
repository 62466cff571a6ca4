// CUDA kernel of normexport::AdaIN for channels-last input (channels_last=1).
// content is (N, Sx, C), style (N, Sz, C): the plane of channel c of sample n is column c of a
// row-major S x C matrix. One block per (n, tile of tx consecutive channels) (grid-stride over
// tiles), threads laid out tx x ty (tx = power of two >= C, at most 32; tx * ty = kThreads): a
// warp reads contiguous channels of 32 / tx rows (coalesced). Per column, content and style:
// two passes in float over x - x[first row] (mean, then the sum of squared deviations), the
// ty partial sums of a column added in double; the coefficients in double by one thread per
// column; then y = ((x - shift) - delta) * a + b. A style plane of zero elements gives NaN
// (0 / 0), like the reference. 64-bit indexing throughout.
// When there are fewer tiles than kTargetBlocks and the columns are long, the rows of each
// tensor are split into ranges (each block then does (tile, row range)) in two kernels:
// shifted two-pass moments (mean, m2) per (n, range, c) of content and style into device
// scratch (double), then every content block combines its columns' ranges in order (Chan et
// al., deterministic), computes the coefficients and normalizes its rows.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "adain/adain_cuda.h"
#include "normexport/cuda_block.cuh"
#include "normexport/cuda_launch.h"
#include "normexport/cuda_nhwc.cuh"

namespace normexport {
namespace adain {
namespace {

using cuda::DeviceType;
using cuda::GridFor;
using cuda::Load;
using cuda::Store;

using cuda::nhwc::ColumnTotal;
using cuda::nhwc::ColumnUnitOf;
using cuda::nhwc::kMaxTx;
using cuda::nhwc::RowRange;
constexpr int kThreads = cuda::nhwc::kColumnThreads;

// Shifted two-pass moments of the block's columns of one (N, S, C) tensor; `base` is the
// offset of (n, row 0, c). On return (after a barrier) s_shift[tx], s_delta[tx], s_m2[tx] hold
// column tx's shift, mean - shift and sum of squared deviations (valid columns only).
template <typename T>
__device__ __forceinline__ void ColumnMoments(const T* __restrict__ x, int64_t base, int64_t rows, int64_t channels,
                                              bool valid, float* partial, float* s_shift, float* s_delta,
                                              double* s_m2) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int width = blockDim.x, height = blockDim.y;
  if (ty == 0) s_shift[tx] = (valid && rows > 0) ? Load(x, base) : 0.f;
  __syncthreads();
  const float sh = s_shift[tx];
  float s = 0.f;
  if (valid)
    for (int64_t r = ty; r < rows; r += height) s += Load(x, base + r * channels) - sh;
  partial[ty * width + tx] = s;
  __syncthreads();
  if (ty == 0) s_delta[tx] = static_cast<float>(ColumnTotal(partial) / static_cast<double>(rows));  // rows 0: NaN
  __syncthreads();
  const float dl = s_delta[tx];
  float q = 0.f;
  if (valid) {
    for (int64_t r = ty; r < rows; r += height) {
      const float d = (Load(x, base + r * channels) - sh) - dl;
      q = fmaf(d, d, q);
    }
  }
  partial[ty * width + tx] = q;
  __syncthreads();
  if (ty == 0) s_m2[tx] = ColumnTotal(partial);
  __syncthreads();
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    AdaINNhwcKernel(const T* __restrict__ content, const T* __restrict__ style, T* __restrict__ y, int64_t batch,
                    int64_t channels, int64_t content_plane, int64_t style_plane, int64_t channel_tiles, float eps,
                    float alpha) {
  __shared__ float partial[kThreads];
  __shared__ float xs[kMaxTx], xd[kMaxTx], zs[kMaxTx], zd[kMaxTx], ca[kMaxTx], cb[kMaxTx];
  __shared__ double xq[kMaxTx], zq[kMaxTx];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int height = blockDim.y;
  const int64_t num_tiles = batch * channel_tiles;

  for (int64_t tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
    const auto cu = ColumnUnitOf(tile, 1, channel_tiles, channels);
    const int64_t n = cu.n, c = cu.c;
    const bool valid = cu.valid;
    const int64_t xb = n * content_plane * channels + c;
    const int64_t zb = n * style_plane * channels + c;
    ColumnMoments(content, xb, content_plane, channels, valid, partial, xs, xd, xq);
    ColumnMoments(style, zb, style_plane, channels, valid, partial, zs, zd, zq);
    if (ty == 0 && valid) {
      const double e = static_cast<double>(eps), al = static_cast<double>(alpha);
      const double vx = xq[tx] / static_cast<double>(content_plane);
      const double vz = zq[tx] / static_cast<double>(style_plane);
      const double s = sqrt(vz + e) / sqrt(vx + e);
      const double mx = static_cast<double>(xs[tx]) + static_cast<double>(xd[tx]);
      const double mz = static_cast<double>(zs[tx]) + static_cast<double>(zd[tx]);
      ca[tx] = static_cast<float>(al * s + (1.0 - al));
      cb[tx] = static_cast<float>(al * mz + (1.0 - al) * mx);
    }
    __syncthreads();
    if (valid) {
      const float sh = xs[tx], dl = xd[tx], a = ca[tx], b = cb[tx];
      for (int64_t r = ty; r < content_plane; r += height) {
        const int64_t i = xb + r * channels;
        Store(y, i, fmaf((Load(content, i) - sh) - dl, a, b));
      }
    }
    __syncthreads();  // the shared arrays are reused by the next tile
  }
}

// Split rows, kernel 1: content units [0, nx), then style units. Unit (n, tile, s) writes the
// moments of rows [s * rows_per_split, ...) of its columns: mean[(n * splits + s) * C + c],
// m2[...] (double; a range of zero rows: NaN mean, 0 m2).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    AdaINNhwcPartialKernel(const T* __restrict__ content, const T* __restrict__ style, double* __restrict__ x_mean,
                           double* __restrict__ x_m2, double* __restrict__ z_mean, double* __restrict__ z_m2,
                           int64_t batch, int64_t channels, int64_t channel_tiles, int64_t content_plane,
                           int64_t x_splits, int64_t x_rows_per_split, int64_t style_plane, int64_t z_splits,
                           int64_t z_rows_per_split) {
  __shared__ float partial[kThreads];
  __shared__ float sh_s[kMaxTx], sh_d[kMaxTx];
  __shared__ double sh_q[kMaxTx];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t nx = batch * channel_tiles * x_splits;
  const int64_t units = nx + batch * channel_tiles * z_splits;
  for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {
    const bool is_x = u < nx;
    const int64_t v = is_x ? u : u - nx;
    const int64_t splits = is_x ? x_splits : z_splits;
    const int64_t rps = is_x ? x_rows_per_split : z_rows_per_split;
    const int64_t plane = is_x ? content_plane : style_plane;
    const auto cu = ColumnUnitOf(v, splits, channel_tiles, channels);
    const int64_t s = cu.s, n = cu.n, c = cu.c;
    const bool valid = cu.valid;
    int64_t r0, r1;
    RowRange(s, rps, plane, &r0, &r1);
    const int64_t rows = r1 > r0 ? r1 - r0 : 0;
    // the range as an (rows, C) tensor starting at row r0 of sample n
    ColumnMoments(is_x ? content : style, (n * plane + r0) * channels + c, rows, channels, valid, partial, sh_s, sh_d,
                  sh_q);
    if (ty == 0 && valid) {
      const int64_t k = (n * splits + s) * channels + c;
      (is_x ? x_mean : z_mean)[k] = static_cast<double>(sh_s[tx]) + static_cast<double>(sh_d[tx]);
      (is_x ? x_m2 : z_m2)[k] = rows > 0 ? sh_q[tx] : 0.0;
    }
    __syncthreads();  // the shared arrays are reused by the next unit
  }
}

// mean and biased variance of a column from its ranges, in range order (NaN without rows)
__device__ __forceinline__ void ColumnTotal(const double* mean, const double* m2, int64_t n, int64_t c,
                                            int64_t channels, int64_t splits, int64_t rows_per_split, int64_t plane,
                                            double* mu, double* var) {
  double cnt = 0.0, mm = 0.0, q = 0.0;
  for (int64_t s = 0; s < splits; ++s) {
    int64_t r0, r1;
    RowRange(s, rows_per_split, plane, &r0, &r1);
    if (r1 <= r0) continue;
    const int64_t k = (n * splits + s) * channels + c;
    cuda::ChanCombine(cnt, mm, q, static_cast<double>(r1 - r0), mean[k], m2[k]);
  }
  *mu = cnt > 0.0 ? mm : nan("");
  *var = cnt > 0.0 ? q / cnt : nan("");
}

// Split rows, kernel 2: per content unit, the coefficients of its columns from all ranges of
// both tensors, then y over its rows.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    AdaINNhwcApplyKernel(const T* __restrict__ content, T* __restrict__ y, const double* __restrict__ x_mean,
                         const double* __restrict__ x_m2, const double* __restrict__ z_mean,
                         const double* __restrict__ z_m2, int64_t batch, int64_t channels, int64_t channel_tiles,
                         int64_t content_plane, int64_t x_splits, int64_t x_rows_per_split, int64_t style_plane,
                         int64_t z_splits, int64_t z_rows_per_split, float eps, float alpha) {
  __shared__ float cm[kMaxTx], ca[kMaxTx], cb[kMaxTx];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int height = blockDim.y;
  const int64_t units = batch * channel_tiles * x_splits;
  for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {
    const auto cu = ColumnUnitOf(u, x_splits, channel_tiles, channels);
    const int64_t s = cu.s, n = cu.n, c = cu.c;
    const bool valid = cu.valid;
    if (ty == 0 && valid) {
      double mx, vx, mz, vz;
      ColumnTotal(x_mean, x_m2, n, c, channels, x_splits, x_rows_per_split, content_plane, &mx, &vx);
      ColumnTotal(z_mean, z_m2, n, c, channels, z_splits, z_rows_per_split, style_plane, &mz, &vz);
      const double e = static_cast<double>(eps), al = static_cast<double>(alpha);
      const double a = al * (sqrt(vz + e) / sqrt(vx + e)) + (1.0 - al);
      const double b = al * mz + (1.0 - al) * mx;
      const float m = static_cast<float>(mx);
      const double rem = isfinite(mx) ? mx - static_cast<double>(m) : mx;  // NaN/Inf mean -> NaN b
      cm[tx] = m;
      ca[tx] = static_cast<float>(a);
      cb[tx] = static_cast<float>(b - rem * a);
    }
    __syncthreads();
    if (valid) {
      int64_t r0, r1;
      RowRange(s, x_rows_per_split, content_plane, &r0, &r1);
      const float m = cm[tx], a = ca[tx], b = cb[tx];
      for (int64_t r = r0 + ty; r < r1; r += height) {
        const int64_t i = (n * content_plane + r) * channels + c;
        Store(y, i, fmaf(Load(content, i) - m, a, b));
      }
    }
    __syncthreads();  // cm / ca / cb are reused by the next unit
  }
}

}  // namespace

size_t AdaINNhwcScratchBytes(int64_t batch, int64_t channels, int64_t content_plane, int64_t style_plane) noexcept {
  if (batch <= 0 || channels <= 0 || content_plane <= 0) return 0;
  const auto px = cuda::nhwc::MakeColumnPlan(batch, channels, content_plane);
  const auto pz = cuda::nhwc::MakeColumnPlan(batch, channels, style_plane);
  if (px.splits == 1 && pz.splits == 1) return 0;
  return static_cast<size_t>(2 * batch * channels * (px.splits + pz.splits)) * sizeof(double);
}

template <typename T>
int LaunchAdaINNhwc(void* stream, const T* content, const T* style, T* y, int64_t batch, int64_t channels,
                    int64_t content_plane, int64_t style_plane, float eps, float alpha, void* scratch) noexcept {
  if (batch <= 0 || channels <= 0 || content_plane <= 0) return cudaSuccess;
  int err = cuda::UseStreamDevice(stream);
  if (err != cudaSuccess) return err;

  const auto px = cuda::nhwc::MakeColumnPlan(batch, channels, content_plane);
  const auto pz = cuda::nhwc::MakeColumnPlan(batch, channels, style_plane);
  const dim3 block(static_cast<unsigned>(px.width), static_cast<unsigned>(px.height));
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  using D = typename DeviceType<T>::type;
  const D* dc = reinterpret_cast<const D*>(content);
  if (px.splits == 1 && pz.splits == 1) {  // one block per tile (grid-stride loop covers the rest)
    AdaINNhwcKernel<D><<<GridFor(batch * px.channel_tiles), block, 0, st>>>(
        dc, reinterpret_cast<const D*>(style), reinterpret_cast<D*>(y), batch, channels, content_plane, style_plane,
        px.channel_tiles, eps, alpha);
    return static_cast<int>(cudaGetLastError());
  }
  if (scratch == nullptr) return cudaErrorInvalidValue;  // AdaINNhwcScratchBytes() > 0
  const int64_t nxk = batch * channels * px.splits, nzk = batch * channels * pz.splits;
  double* x_mean = static_cast<double*>(scratch);
  double* x_m2 = x_mean + nxk;
  double* z_mean = x_m2 + nxk;
  double* z_m2 = z_mean + nzk;
  const int64_t tiles = batch * px.channel_tiles;
  AdaINNhwcPartialKernel<D><<<GridFor(tiles * (px.splits + pz.splits)), block, 0, st>>>(
      dc, reinterpret_cast<const D*>(style), x_mean, x_m2, z_mean, z_m2, batch, channels, px.channel_tiles,
      content_plane, px.splits, px.rows_per_split, style_plane, pz.splits, pz.rows_per_split);
  err = static_cast<int>(cudaGetLastError());
  if (err != cudaSuccess) return err;
  AdaINNhwcApplyKernel<D><<<GridFor(tiles * px.splits), block, 0, st>>>(
      dc, reinterpret_cast<D*>(y), x_mean, x_m2, z_mean, z_m2, batch, channels, px.channel_tiles, content_plane,
      px.splits, px.rows_per_split, style_plane, pz.splits, pz.rows_per_split, eps, alpha);
  return static_cast<int>(cudaGetLastError());
}

template int LaunchAdaINNhwc<float>(void*, const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t,
                                    float, float, void*) noexcept;
template int LaunchAdaINNhwc<half>(void*, const half*, const half*, half*, int64_t, int64_t, int64_t, int64_t, float,
                                   float, void*) noexcept;

}  // namespace adain
}  // namespace normexport
