// CUDA kernel of normexport::GroupNorm for channels-last input (channels_last=1).
// X is (N, S, C): group g of sample n is the column band [g * cpg, (g + 1) * cpg) of an S x C
// row-major matrix. One block per (n, group) (grid-stride over groups); the block's threads
// are laid out as rows x columns: tpr = (power of two >= cpg, at most the block) threads per
// row, so a warp reads contiguous channels of one or more rows (coalesced for any cpg).
// Per-thread Welford in float, combined across the block with Chan's formula (warp shuffles,
// then shared memory): stable for a large mean against a small spread. Second pass: the
// per-channel scale/shift and the fused activation. float16 loaded as float, math in float.
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

using cuda::DeviceType;
using cuda::Load;
using cuda::Store;

// (n, mean, m2) += (nb, mean_b, m2_b)  (Chan et al.)
__device__ __forceinline__ void CombineNhwc(float& n, float& mean, float& m2, float nb, float mean_b, float m2_b) {
  if (nb == 0.f) return;
  if (n == 0.f) {
    n = nb;
    mean = mean_b;
    m2 = m2_b;
    return;
  }
  const float nn = n + nb;
  const float w = nb / nn;
  const float delta = mean_b - mean;
  mean += delta * w;
  m2 += m2_b + delta * delta * n * w;
  n = nn;
}

__device__ __forceinline__ void WarpCombineNhwc(float& n, float& mean, float& m2) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float nb = __shfl_down_sync(0xffffffffu, n, offset);
    const float mb = __shfl_down_sync(0xffffffffu, mean, offset);
    const float qb = __shfl_down_sync(0xffffffffu, m2, offset);
    CombineNhwc(n, mean, m2, nb, mb, qb);
  }
}

__device__ __forceinline__ float ActivateNhwc(float v, int act) {
  if (act == 1) return v < 0.f ? 0.f : v;  // NaN kept
  if (act == 2) return v / (1.f + expf(-v));
  return v;
}

constexpr int kMaxThreads = 512;

template <typename T>
__global__ void __launch_bounds__(kMaxThreads)
    GroupNormNhwcKernel(const T* __restrict__ x, T* __restrict__ y, const T* __restrict__ scale,
                        const T* __restrict__ bias, int64_t num_groups_total, int64_t groups, int64_t cpg,
                        int64_t spatial, int64_t channels, int tpr, float eps, int act) {
  __shared__ float w_n[kMaxThreads / 32], w_mean[kMaxThreads / 32], w_m2[kMaxThreads / 32];
  __shared__ float s_mean, s_rstd;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int num_warps = (blockDim.x + 31) >> 5;
  const int col0 = threadIdx.x & (tpr - 1);  // tpr: a power of two dividing blockDim.x
  const int row0 = threadIdx.x / tpr;
  const int row_step = blockDim.x / tpr;
  const int64_t group_size = cpg * spatial;

  for (int64_t grp = blockIdx.x; grp < num_groups_total; grp += gridDim.x) {
    const int64_t n = grp / groups;
    const int64_t c0 = (grp % groups) * cpg;
    const int64_t base = n * spatial * channels + c0;

    // pass 1: Welford per thread, then block combine
    float cnt = 0.f, mean = 0.f, m2 = 0.f;
    for (int64_t r = row0; r < spatial; r += row_step) {
      const int64_t row = base + r * channels;
      for (int64_t c = col0; c < cpg; c += tpr) {
        const float v = Load(x, row + c);
        cnt += 1.f;
        const float d = v - mean;
        mean += d / cnt;
        m2 += d * (v - mean);
      }
    }
    WarpCombineNhwc(cnt, mean, m2);
    if (lane == 0) {
      w_n[warp] = cnt;
      w_mean[warp] = mean;
      w_m2[warp] = m2;
    }
    __syncthreads();
    if (warp == 0) {
      cnt = lane < num_warps ? w_n[lane] : 0.f;
      mean = lane < num_warps ? w_mean[lane] : 0.f;
      m2 = lane < num_warps ? w_m2[lane] : 0.f;
      WarpCombineNhwc(cnt, mean, m2);
      if (lane == 0) {
        const double var = static_cast<double>(m2) / static_cast<double>(group_size);
        s_mean = mean;
        s_rstd = static_cast<float>(1.0 / sqrt(var + static_cast<double>(eps)));
      }
    }
    __syncthreads();

    // pass 2: y = act((x - mean) * scale[c] * rstd + bias[c])
    const float mu = s_mean;
    const float rstd = s_rstd;
    for (int64_t c = col0; c < cpg; c += tpr) {  // a thread keeps its columns' affine in registers
      const float a = Load(scale, c0 + c) * rstd;
      const float b = Load(bias, c0 + c);
      for (int64_t r = row0; r < spatial; r += row_step) {
        const int64_t i = base + r * channels + c;
        Store(y, i, ActivateNhwc(fmaf(Load(x, i) - mu, a, b), act));
      }
    }
    __syncthreads();  // w_* / s_* are reused by the next group
  }
}

}  // namespace

template <typename T>
int LaunchGroupNormNhwc(void* stream, const T* x, T* y, const T* scale, const T* bias, int64_t batch,
                        int64_t channels, int64_t spatial, int64_t num_groups, float eps, int activation) noexcept {
  if (batch <= 0 || channels <= 0 || spatial <= 0 || num_groups <= 0) return cudaSuccess;
  int err = cuda::UseStreamDevice(stream);
  if (err != cudaSuccess) return err;

  const int64_t cpg = channels / num_groups;
  const int64_t group_size = cpg * spatial;
  const int64_t num_groups_total = batch * num_groups;
  // about 4 elements per thread, between one warp and kMaxThreads
  int threads = 32;
  while (threads < kMaxThreads && static_cast<int64_t>(threads) * 4 < group_size) threads *= 2;
  int tpr = 1;  // threads per row: the power of two >= cpg, at most the block
  while (tpr < threads && tpr < cpg) tpr *= 2;
  const int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride loop covers the rest
  const unsigned blocks = static_cast<unsigned>(num_groups_total < kMaxBlocks ? num_groups_total : kMaxBlocks);

  using D = typename DeviceType<T>::type;
  GroupNormNhwcKernel<D><<<blocks, threads, 0, static_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const D*>(x), reinterpret_cast<D*>(y), reinterpret_cast<const D*>(scale),
      reinterpret_cast<const D*>(bias), num_groups_total, num_groups, cpg, spatial, channels, tpr, eps, activation);
  return static_cast<int>(cudaGetLastError());
}

template int LaunchGroupNormNhwc<float>(void*, const float*, float*, const float*, const float*, int64_t, int64_t,
                                        int64_t, int64_t, float, int) noexcept;
template int LaunchGroupNormNhwc<half>(void*, const half*, half*, const half*, const half*, int64_t, int64_t,
                                       int64_t, int64_t, float, int) noexcept;

}  // namespace gn
}  // namespace normexport
