// CUDA kernel of normexport::FilterResponseNorm for channels-last input (channels_last=1).
// X is (N, S, C): the plane of channel c of sample n is column c of an S x C row-major
// matrix. One block per (n, tile of tx consecutive channels) (grid-stride over tiles), threads
// laid out tx x ty (tx = power of two >= C, at most 32; tx * ty = kThreads): a warp reads
// contiguous channels of 32 / tx rows (coalesced). Pass 1: per-thread Kahan-compensated float
// sums of x^2 down the column, the ty partial sums of a column added in double; pass 2: the
// fused scale/shift/TLU. 64-bit indexing throughout.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "filter_response_norm/frn_cuda.h"
#include "normexport/cuda_block.cuh"
#include "normexport/cuda_launch.h"

namespace normexport {
namespace frn {
namespace {

using cuda::DeviceType;
using cuda::Kahan;
using cuda::Load;
using cuda::Store;

constexpr int kThreads = 512;
constexpr int kMaxTx = 32;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    FilterResponseNormNhwcKernel(const T* __restrict__ x, T* __restrict__ y, const T* __restrict__ gamma,
                                 const T* __restrict__ beta, const T* __restrict__ tau, int64_t batch,
                                 int64_t channels, int64_t plane_size, int64_t channel_tiles, float eps, bool tlu) {
  __shared__ float partial[kThreads];
  __shared__ float s_scale[kMaxTx];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int width = blockDim.x, height = blockDim.y;
  const int64_t num_tiles = batch * channel_tiles;

  for (int64_t tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
    const int64_t n = tile / channel_tiles;
    const int64_t c = (tile % channel_tiles) * width + tx;
    const bool valid = c < channels;
    const int64_t base = n * plane_size * channels + c;

    // pass 1: sum of squares down the column (float, Kahan-compensated per thread)
    Kahan acc;
    if (valid) {
      for (int64_t r = ty; r < plane_size; r += height) {
        const float v = Load(x, base + r * channels);
        acc.Add(v * v);
      }
    }
    partial[ty * width + tx] = acc.sum;
    __syncthreads();
    if (ty == 0 && valid) {
      double total = 0.0;
      for (int k = 0; k < height; ++k) total += static_cast<double>(partial[k * width + tx]);
      const double nu2 = total / static_cast<double>(plane_size);
      s_scale[tx] = static_cast<float>(static_cast<double>(Load(gamma, c)) / sqrt(nu2 + static_cast<double>(eps)));
    }
    __syncthreads();

    // pass 2: y = x * scale + beta, then NaN-propagating max with tau
    if (valid) {
      const float scale = s_scale[tx];
      const float shift = Load(beta, c);
      const float t = tlu ? Load(tau, c) : 0.f;
      const bool tau_nan = tlu && isnan(t);
      for (int64_t r = ty; r < plane_size; r += height) {
        const int64_t i = base + r * channels;
        float v = fmaf(Load(x, i), scale, shift);
        if (tlu) v = (v < t || tau_nan) ? t : v;
        Store(y, i, v);
      }
    }
    __syncthreads();  // partial / s_scale are reused by the next tile
  }
}

}  // namespace

template <typename T>
int LaunchFilterResponseNormNhwc(void* stream, const T* x, T* y, const T* gamma, const T* beta, const T* tau,
                                 int64_t batch, int64_t channels, int64_t plane_size, float eps, bool tlu) noexcept {
  if (batch <= 0 || channels <= 0 || plane_size <= 0) return cudaSuccess;
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
  FilterResponseNormNhwcKernel<D><<<blocks, block, 0, static_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const D*>(x), reinterpret_cast<D*>(y), reinterpret_cast<const D*>(gamma),
      reinterpret_cast<const D*>(beta), reinterpret_cast<const D*>(tau), batch, channels, plane_size, channel_tiles,
      eps, tlu);
  return static_cast<int>(cudaGetLastError());
}

template int LaunchFilterResponseNormNhwc<float>(void*, const float*, float*, const float*, const float*,
                                                 const float*, int64_t, int64_t, int64_t, float, bool) noexcept;
template int LaunchFilterResponseNormNhwc<half>(void*, const half*, half*, const half*, const half*, const half*,
                                                int64_t, int64_t, int64_t, float, bool) noexcept;

}  // namespace frn
}  // namespace normexport
