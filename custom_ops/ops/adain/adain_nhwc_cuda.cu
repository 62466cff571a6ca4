// CUDA kernel of normexport::AdaIN for channels-last input (channels_last=1).
// content is (N, Sx, C), style (N, Sz, C): the plane of channel c of sample n is column c of a
// row-major S x C matrix. One block per (n, tile of tx consecutive channels) (grid-stride over
// tiles), threads laid out tx x ty (tx = power of two >= C, at most 32; tx * ty = kThreads): a
// warp reads contiguous channels of 32 / tx rows (coalesced). Per column, content and style:
// two passes in float over x - x[first row] (mean, then the sum of squared deviations), the
// ty partial sums of a column added in double; the coefficients in double by one thread per
// column; then y = ((x - shift) - delta) * a + b. A style plane of zero elements gives NaN
// (0 / 0), like the reference. 64-bit indexing throughout.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "adain/adain_cuda.h"
#include "normexport/cuda_block.cuh"
#include "normexport/cuda_launch.h"

namespace normexport {
namespace adain {
namespace {

using cuda::DeviceType;
using cuda::Load;
using cuda::Store;

constexpr int kThreads = 512;
constexpr int kMaxTx = 32;

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
  if (ty == 0) {
    double t = 0.0;
    for (int k = 0; k < height; ++k) t += static_cast<double>(partial[k * width + tx]);
    s_delta[tx] = static_cast<float>(t / static_cast<double>(rows));  // rows == 0 -> NaN
  }
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
  if (ty == 0) {
    double t = 0.0;
    for (int k = 0; k < height; ++k) t += static_cast<double>(partial[k * width + tx]);
    s_m2[tx] = t;
  }
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
  const int width = blockDim.x, height = blockDim.y;
  const int64_t num_tiles = batch * channel_tiles;

  for (int64_t tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
    const int64_t n = tile / channel_tiles;
    const int64_t c = (tile % channel_tiles) * width + tx;
    const bool valid = c < channels;
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

}  // namespace

template <typename T>
int LaunchAdaINNhwc(void* stream, const T* content, const T* style, T* y, int64_t batch, int64_t channels,
                    int64_t content_plane, int64_t style_plane, float eps, float alpha) noexcept {
  if (batch <= 0 || channels <= 0 || content_plane <= 0) return cudaSuccess;
  int err = cuda::UseStreamDevice(stream);
  if (err != cudaSuccess) return err;

  int width = 1;  // channels per block: the power of two >= C, at most kMaxTx
  while (width < kMaxTx && width < channels) width *= 2;
  const dim3 block(static_cast<unsigned>(width), static_cast<unsigned>(kThreads / width));
  const int64_t channel_tiles = (channels + width - 1) / width;
  const int64_t num_tiles = batch * channel_tiles;
  const int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride loop covers the rest
  const unsigned blocks = static_cast<unsigned>(num_tiles < kMaxBlocks ? num_tiles : kMaxBlocks);

  using D = typename DeviceType<T>::type;
  AdaINNhwcKernel<D><<<blocks, block, 0, static_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const D*>(content), reinterpret_cast<const D*>(style), reinterpret_cast<D*>(y), batch,
      channels, content_plane, style_plane, channel_tiles, eps, alpha);
  return static_cast<int>(cudaGetLastError());
}

template int LaunchAdaINNhwc<float>(void*, const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t,
                                    float, float) noexcept;
template int LaunchAdaINNhwc<half>(void*, const half*, const half*, half*, int64_t, int64_t, int64_t, int64_t, float,
                                   float) noexcept;

}  // namespace adain
}  // namespace normexport
