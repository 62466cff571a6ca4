// CUDA kernel of normexport::GroupNorm for channels-last input (channels_last=1).
// X is (N, S, C): group g of sample n is the column band [g * cpg, (g + 1) * cpg) of an S x C
// row-major matrix. One block per (n, group) (grid-stride over groups); the block's threads
// are laid out as rows x columns: tpr = (power of two >= cpg, at most the block) threads per
// row, so a warp reads contiguous channels of one or more rows (coalesced for any cpg).
// Per-thread Welford in float, combined across the block with Chan's formula (warp shuffles,
// then shared memory): stable for a large mean against a small spread. Second pass: the
// per-channel scale/shift and the fused activation. float16 loaded as float, math in float.
// 64-bit indexing throughout.
// When there are fewer groups than kTargetBlocks and the groups are long, the rows are split
// into `splits` ranges (each block then does (group, row range)) in two kernels: Welford
// moments per (n, g, range) into device scratch (count, mean, m2 in double), then every block
// combines its group's ranges in order (Chan, deterministic) and normalizes its rows.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "group_norm/gn_cuda.h"
#include "normexport/cuda_block.cuh"
#include "normexport/cuda_launch.h"
#include "normexport/cuda_nhwc.cuh"

namespace normexport {
namespace gn {
namespace {

using cuda::Activate;
using cuda::BlockChanCombine;
using cuda::ChanCombine;
using cuda::DeviceType;
using cuda::GridFor;
using cuda::Load;
using cuda::Store;
using cuda::WelfordAdd;
using cuda::nhwc::kTargetBlocks;
using cuda::nhwc::RowRange;

constexpr int kMaxThreads = cuda::kMaxBlockThreads;  // the cap of cuda::ThreadsForPlane

// The launch shape: threads per block, threads per row, rows split into `splits` ranges.
struct Plan {
  int threads = 32, tpr = 1;
  int64_t splits = 1, rows_per_split = 0;
};
Plan MakePlan(int64_t batch, int64_t spatial, int64_t cpg, int64_t groups) {
  Plan p;
  const int64_t group_size = cpg * spatial;
  p.threads = cuda::ThreadsForPlane(group_size);  // about 4 elements per thread
  while (p.tpr < p.threads && p.tpr < cpg) p.tpr *= 2;  // the power of two >= cpg, at most the block
  const int64_t units = batch * groups;
  if (units > 0 && units < kTargetBlocks && spatial > 1) {
    const int64_t by_blocks = (kTargetBlocks + units - 1) / units;
    const int64_t by_size = group_size / (int64_t{4} * p.threads);  // >= 4 elements per thread
    p.splits = by_blocks < by_size ? by_blocks : by_size;
    if (p.splits > spatial) p.splits = spatial;
    if (p.splits < 1) p.splits = 1;
  }
  p.rows_per_split = (spatial + p.splits - 1) / p.splits;
  p.splits = (spatial + p.rows_per_split - 1) / p.rows_per_split;
  return p;
}

// Welford moments of rows [r0, r1) x columns [0, cpg) at `base` (row stride `channels`),
// combined over the block: valid in thread 0 after the call (which synchronizes).
template <typename T>
__device__ __forceinline__ void BlockMoments(const T* __restrict__ x, int64_t base, int64_t r0, int64_t r1,
                                             int64_t channels, int64_t cpg, int tpr, float* w_n, float* w_mean,
                                             float* w_m2, float* cnt_out, float* mean_out, float* m2_out) {
  const int col0 = threadIdx.x & (tpr - 1);
  const int row_step = blockDim.x / tpr;
  float cnt = 0.f, mean = 0.f, m2 = 0.f;
  for (int64_t r = r0 + threadIdx.x / tpr; r < r1; r += row_step) {
    const int64_t row = base + r * channels;
    for (int64_t c = col0; c < cpg; c += tpr) WelfordAdd(cnt, mean, m2, Load(x, row + c));
  }
  BlockChanCombine(cnt, mean, m2, w_n, w_mean, w_m2);
  if (threadIdx.x == 0) *cnt_out = cnt, *mean_out = mean, *m2_out = m2;
  __syncthreads();
}

// y = act((x - mu) * scale[c] * rstd + bias[c]) over rows [r0, r1) of a group
template <typename T>
__device__ __forceinline__ void BlockApply(const T* __restrict__ x, T* __restrict__ y, const T* __restrict__ scale,
                                           const T* __restrict__ bias, int64_t base, int64_t c0, int64_t r0,
                                           int64_t r1, int64_t channels, int64_t cpg, int tpr, float mu, float rstd,
                                           int act) {
  const int col0 = threadIdx.x & (tpr - 1);
  const int row_step = blockDim.x / tpr;
  for (int64_t c = col0; c < cpg; c += tpr) {  // a thread keeps its columns' affine in registers
    const float a = Load(scale, c0 + c) * rstd;
    const float b = Load(bias, c0 + c);
    for (int64_t r = r0 + threadIdx.x / tpr; r < r1; r += row_step) {
      const int64_t i = base + r * channels + c;
      Store(y, i, Activate(fmaf(Load(x, i) - mu, a, b), act));
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kMaxThreads)
    GroupNormNhwcKernel(const T* __restrict__ x, T* __restrict__ y, const T* __restrict__ scale,
                        const T* __restrict__ bias, int64_t num_groups_total, int64_t groups, int64_t cpg,
                        int64_t spatial, int64_t channels, int tpr, float eps, int act) {
  __shared__ float w_n[kMaxThreads / 32], w_mean[kMaxThreads / 32], w_m2[kMaxThreads / 32];
  __shared__ float s_n, s_mean, s_m2;
  for (int64_t grp = blockIdx.x; grp < num_groups_total; grp += gridDim.x) {
    const int64_t n = grp / groups;
    const int64_t c0 = (grp % groups) * cpg;
    const int64_t base = n * spatial * channels + c0;
    BlockMoments(x, base, 0, spatial, channels, cpg, tpr, w_n, w_mean, w_m2, &s_n, &s_mean, &s_m2);
    const double var = static_cast<double>(s_m2) / static_cast<double>(cpg * spatial);
    const float rstd = static_cast<float>(1.0 / sqrt(var + static_cast<double>(eps)));
    BlockApply(x, y, scale, bias, base, c0, 0, spatial, channels, cpg, tpr, s_mean, rstd, act);
    __syncthreads();  // w_* / s_* are reused by the next group
  }
}

// Split rows, kernel 1: partial[((n * G + g) * splits + s) * 3 + {0, 1, 2}] = count, mean, m2
// of rows [s * rows_per_split, ...) of group (n, g).
template <typename T>
__global__ void __launch_bounds__(kMaxThreads)
    GroupNormNhwcPartialKernel(const T* __restrict__ x, double* __restrict__ partial, int64_t num_groups_total,
                               int64_t groups, int64_t cpg, int64_t spatial, int64_t channels, int tpr,
                               int64_t splits, int64_t rows_per_split) {
  __shared__ float w_n[kMaxThreads / 32], w_mean[kMaxThreads / 32], w_m2[kMaxThreads / 32];
  __shared__ float s_n, s_mean, s_m2;
  const int64_t units = num_groups_total * splits;
  for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {
    const int64_t s = u % splits, grp = u / splits;
    const int64_t n = grp / groups;
    const int64_t c0 = (grp % groups) * cpg;
    int64_t r0, r1;
    RowRange(s, rows_per_split, spatial, &r0, &r1);
    BlockMoments(x, n * spatial * channels + c0, r0, r1, channels, cpg, tpr, w_n, w_mean, w_m2, &s_n, &s_mean,
                 &s_m2);
    if (threadIdx.x == 0) {
      double* out = partial + u * 3;
      out[0] = static_cast<double>(s_n);
      out[1] = static_cast<double>(s_mean);
      out[2] = static_cast<double>(s_m2);
    }
    __syncthreads();  // w_* / s_* are reused by the next unit
  }
}

// Split rows, kernel 2: the group's ranges combined in order (Chan, double), then the rows of
// range s.
template <typename T>
__global__ void __launch_bounds__(kMaxThreads)
    GroupNormNhwcApplyKernel(const T* __restrict__ x, T* __restrict__ y, const T* __restrict__ scale,
                             const T* __restrict__ bias, const double* __restrict__ partial,
                             int64_t num_groups_total, int64_t groups, int64_t cpg, int64_t spatial,
                             int64_t channels, int tpr, int64_t splits, int64_t rows_per_split, float eps, int act) {
  __shared__ float s_mean, s_rstd;
  const int64_t units = num_groups_total * splits;
  for (int64_t u = blockIdx.x; u < units; u += gridDim.x) {
    const int64_t s = u % splits, grp = u / splits;
    if (threadIdx.x == 0) {
      double cnt = 0.0, mean = 0.0, m2 = 0.0;
      for (int64_t k = 0; k < splits; ++k) {
        const double* p = partial + (grp * splits + k) * 3;
        ChanCombine(cnt, mean, m2, p[0], p[1], p[2]);
      }
      s_mean = static_cast<float>(mean);
      s_rstd = static_cast<float>(1.0 / sqrt(m2 / cnt + static_cast<double>(eps)));
    }
    __syncthreads();
    const int64_t n = grp / groups;
    const int64_t c0 = (grp % groups) * cpg;
    int64_t r0, r1;
    RowRange(s, rows_per_split, spatial, &r0, &r1);
    BlockApply(x, y, scale, bias, n * spatial * channels + c0, c0, r0, r1, channels, cpg, tpr, s_mean, s_rstd, act);
    __syncthreads();  // s_mean / s_rstd are reused by the next unit
  }
}

}  // namespace

size_t GroupNormNhwcScratchBytes(int64_t batch, int64_t channels, int64_t spatial, int64_t num_groups) noexcept {
  if (batch <= 0 || channels <= 0 || spatial <= 0 || num_groups <= 0) return 0;
  const Plan p = MakePlan(batch, spatial, channels / num_groups, num_groups);
  return p.splits > 1 ? static_cast<size_t>(batch * num_groups * p.splits * 3) * sizeof(double) : 0;
}

template <typename T>
int LaunchGroupNormNhwc(void* stream, const T* x, T* y, const T* scale, const T* bias, int64_t batch,
                        int64_t channels, int64_t spatial, int64_t num_groups, float eps, int activation,
                        void* scratch) noexcept {
  if (batch <= 0 || channels <= 0 || spatial <= 0 || num_groups <= 0) return cudaSuccess;
  int err = cuda::UseStreamDevice(stream);
  if (err != cudaSuccess) return err;

  const int64_t cpg = channels / num_groups;
  const int64_t num_groups_total = batch * num_groups;
  const Plan p = MakePlan(batch, spatial, cpg, num_groups);
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  using D = typename DeviceType<T>::type;
  const D* dx = reinterpret_cast<const D*>(x);
  D* dy = reinterpret_cast<D*>(y);
  const D* ds = reinterpret_cast<const D*>(scale);
  const D* db = reinterpret_cast<const D*>(bias);
  if (p.splits == 1) {  // one block per group (grid-stride loop covers the rest)
    GroupNormNhwcKernel<D><<<GridFor(num_groups_total), p.threads, 0, st>>>(
        dx, dy, ds, db, num_groups_total, num_groups, cpg, spatial, channels, p.tpr, eps, activation);
    return static_cast<int>(cudaGetLastError());
  }
  if (scratch == nullptr) return cudaErrorInvalidValue;  // GroupNormNhwcScratchBytes() > 0
  double* partial = static_cast<double*>(scratch);
  const unsigned blocks = GridFor(num_groups_total * p.splits);
  GroupNormNhwcPartialKernel<D><<<blocks, p.threads, 0, st>>>(dx, partial, num_groups_total, num_groups, cpg,
                                                              spatial, channels, p.tpr, p.splits, p.rows_per_split);
  err = static_cast<int>(cudaGetLastError());
  if (err != cudaSuccess) return err;
  GroupNormNhwcApplyKernel<D><<<blocks, p.threads, 0, st>>>(dx, dy, ds, db, partial, num_groups_total, num_groups,
                                                            cpg, spatial, channels, p.tpr, p.splits,
                                                            p.rows_per_split, eps, activation);
  return static_cast<int>(cudaGetLastError());
}

template int LaunchGroupNormNhwc<float>(void*, const float*, float*, const float*, const float*, int64_t, int64_t,
                                        int64_t, int64_t, float, int, void*) noexcept;
template int LaunchGroupNormNhwc<half>(void*, const half*, half*, const half*, const half*, int64_t, int64_t,
                                       int64_t, int64_t, float, int, void*) noexcept;

}  // namespace gn
}  // namespace normexport
