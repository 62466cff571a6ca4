// CUDA kernel of normexport::FilterResponseNorm.
// One block per (n, c) plane (grid-stride over planes): block reduction of
// sum(x^2) in float with per-thread Kahan compensation, then the fused
// scale/shift/TLU pass. 64-bit indexing throughout.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "filter_response_norm/frn_cuda.h"
#include "normexport/cuda_block.cuh"
#include "normexport/cuda_launch.h"

namespace normexport {
namespace frn {
namespace {

using cuda::DeviceType;
using cuda::Load;
using cuda::Store;
using cuda::WarpSum;

constexpr int kMaxThreads = 512;

template <typename T>
__global__ void __launch_bounds__(kMaxThreads)
    FilterResponseNormKernel(const T* __restrict__ x, T* __restrict__ y, const T* __restrict__ gamma,
                             const T* __restrict__ beta, const T* __restrict__ tau, int64_t num_planes,
                             int64_t channels, int64_t plane_size, float eps, bool tlu) {
  __shared__ float warp_sums[kMaxThreads / 32];
  __shared__ float s_scale;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int num_warps = (blockDim.x + 31) >> 5;

  for (int64_t plane = blockIdx.x; plane < num_planes; plane += gridDim.x) {
    const int64_t base = plane * plane_size;
    const int64_t c = plane % channels;

    // pass 1: sum of squares (float, Kahan-compensated per thread)
    float sum = 0.f, comp = 0.f;
    for (int64_t i = threadIdx.x; i < plane_size; i += blockDim.x) {
      const float v = Load(x, base + i);
      const float t = v * v - comp;
      const float s = sum + t;
      comp = (s - sum) - t;
      sum = s;
    }
    sum = WarpSum(sum);
    if (lane == 0) warp_sums[warp] = sum;
    __syncthreads();
    if (warp == 0) {
      float v = lane < num_warps ? warp_sums[lane] : 0.f;
      v = WarpSum(v);
      if (lane == 0) {
        const double nu2 = static_cast<double>(v) / static_cast<double>(plane_size);
        s_scale = static_cast<float>(static_cast<double>(Load(gamma, c)) / sqrt(nu2 + static_cast<double>(eps)));
      }
    }
    __syncthreads();

    // pass 2: y = x * scale + beta, then NaN-propagating max with tau
    const float scale = s_scale;
    const float shift = Load(beta, c);
    const float t = tlu ? Load(tau, c) : 0.f;
    const bool tau_nan = tlu && isnan(t);
    for (int64_t i = threadIdx.x; i < plane_size; i += blockDim.x) {
      float v = fmaf(Load(x, base + i), scale, shift);
      if (tlu) v = (v < t || tau_nan) ? t : v;
      Store(y, base + i, v);
    }
    __syncthreads();  // warp_sums / s_scale are reused by the next plane
  }
}

}  // namespace

template <typename T>
int LaunchFilterResponseNorm(void* stream, const T* x, T* y, const T* gamma, const T* beta, const T* tau,
                             int64_t num_planes, int64_t channels, int64_t plane_size, float eps, bool tlu) noexcept {
  if (num_planes <= 0 || plane_size <= 0) return cudaSuccess;
  int err = cuda::UseStreamDevice(stream);
  if (err != cudaSuccess) return err;

  // about 4 elements per thread, between one warp and kMaxThreads
  int threads = 32;
  while (threads < kMaxThreads && static_cast<int64_t>(threads) * 4 < plane_size) threads *= 2;
  const int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride loop covers the rest
  const unsigned blocks = static_cast<unsigned>(num_planes < kMaxBlocks ? num_planes : kMaxBlocks);

  using D = typename DeviceType<T>::type;
  FilterResponseNormKernel<D><<<blocks, threads, 0, static_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const D*>(x), reinterpret_cast<D*>(y), reinterpret_cast<const D*>(gamma),
      reinterpret_cast<const D*>(beta), reinterpret_cast<const D*>(tau), num_planes, channels, plane_size, eps, tlu);
  return static_cast<int>(cudaGetLastError());
}

template int LaunchFilterResponseNorm<float>(void*, const float*, float*, const float*, const float*, const float*,
                                             int64_t, int64_t, int64_t, float, bool) noexcept;
template int LaunchFilterResponseNorm<half>(void*, const half*, half*, const half*, const half*, const half*,
                                            int64_t, int64_t, int64_t, float, bool) noexcept;

}  // namespace frn
}  // namespace normexport
