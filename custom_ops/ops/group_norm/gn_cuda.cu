// CUDA kernel of normexport::GroupNorm.
// One block per (n, group) (grid-stride over groups): per-thread Welford in float, combined
// across the block with Chan's formula (warp shuffles, then shared memory) - stable for a
// large mean against a small spread; then a second pass applying the per-channel
// scale/shift and the fused activation. float16 is loaded as float, math in float.
// 64-bit indexing throughout.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "group_norm/gn_cuda.h"
#include "normexport/cuda_block.cuh"
#include "normexport/cuda_launch.h"

namespace normexport {
namespace gn {
namespace {

using cuda::Activate;
using cuda::BlockChanCombine;
using cuda::DeviceType;
using cuda::Load;
using cuda::Store;
using cuda::WelfordAdd;

constexpr int kMaxThreads = cuda::kMaxBlockThreads;  // the cap of cuda::ThreadsForPlane

template <typename T>
__global__ void __launch_bounds__(kMaxThreads)
    GroupNormKernel(const T* __restrict__ x, T* __restrict__ y, const T* __restrict__ scale,
                    const T* __restrict__ bias, int64_t num_groups_total, int64_t groups, int64_t cpg,
                    int64_t spatial, float eps, int act) {
  __shared__ float w_n[kMaxThreads / 32], w_mean[kMaxThreads / 32], w_m2[kMaxThreads / 32];
  __shared__ float s_mean, s_rstd;
  const int64_t group_size = cpg * spatial;

  for (int64_t grp = blockIdx.x; grp < num_groups_total; grp += gridDim.x) {
    const int64_t base = grp * group_size;

    // pass 1: Welford per thread, then block combine
    float n = 0.f, mean = 0.f, m2 = 0.f;
    for (int64_t i = threadIdx.x; i < group_size; i += blockDim.x) WelfordAdd(n, mean, m2, Load(x, base + i));
    BlockChanCombine(n, mean, m2, w_n, w_mean, w_m2);
    if (threadIdx.x == 0) {
      const double var = static_cast<double>(m2) / static_cast<double>(group_size);
      s_mean = mean;
      s_rstd = static_cast<float>(1.0 / sqrt(var + static_cast<double>(eps)));
    }
    __syncthreads();

    // pass 2: y = act((x - mean) * scale[c] * rstd + bias[c])
    const float mu = s_mean;
    const float rstd = s_rstd;
    const int64_t c0 = (grp % groups) * cpg;
    if (spatial >= 32) {  // channel by channel: no per-element division
      for (int64_t cl = 0; cl < cpg; ++cl) {
        const float a = Load(scale, c0 + cl) * rstd;
        const float b = Load(bias, c0 + cl);
        const int64_t off = base + cl * spatial;
        for (int64_t i = threadIdx.x; i < spatial; i += blockDim.x)
          Store(y, off + i, Activate(fmaf(Load(x, off + i) - mu, a, b), act));
      }
    } else {
      for (int64_t i = threadIdx.x; i < group_size; i += blockDim.x) {
        const int64_t c = c0 + i / spatial;
        const float a = Load(scale, c) * rstd;
        Store(y, base + i, Activate(fmaf(Load(x, base + i) - mu, a, Load(bias, c)), act));
      }
    }
    __syncthreads();  // w_* / s_* are reused by the next group
  }
}

}  // namespace

template <typename T>
int LaunchGroupNorm(void* stream, const T* x, T* y, const T* scale, const T* bias, int64_t batch, int64_t channels,
                    int64_t spatial, int64_t num_groups, float eps, int activation) noexcept {
  if (batch <= 0 || channels <= 0 || spatial <= 0 || num_groups <= 0) return cudaSuccess;
  int err = cuda::UseStreamDevice(stream);
  if (err != cudaSuccess) return err;

  const int64_t cpg = channels / num_groups;
  const int64_t group_size = cpg * spatial;
  const int64_t num_groups_total = batch * num_groups;
  const int threads = cuda::ThreadsForPlane(group_size);  // about 4 elements per thread
  const unsigned blocks = cuda::GridFor(num_groups_total);   // grid-stride loop covers the rest

  using D = typename DeviceType<T>::type;
  GroupNormKernel<D><<<blocks, threads, 0, static_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const D*>(x), reinterpret_cast<D*>(y), reinterpret_cast<const D*>(scale),
      reinterpret_cast<const D*>(bias), num_groups_total, num_groups, cpg, spatial, eps, activation);
  return static_cast<int>(cudaGetLastError());
}

template int LaunchGroupNorm<float>(void*, const float*, float*, const float*, const float*, int64_t, int64_t,
                                    int64_t, int64_t, float, int) noexcept;
template int LaunchGroupNorm<half>(void*, const half*, half*, const half*, const half*, int64_t, int64_t, int64_t,
                                   int64_t, float, int) noexcept;

}  // namespace gn
}  // namespace normexport
