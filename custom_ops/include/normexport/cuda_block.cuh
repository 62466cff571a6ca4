// Device helpers shared by the plane-statistics CUDA kernels (nvcc only):
// element load/store in float for float/__half, warp and block sums, the
// shifted two-pass moments of one plane computed by one block, Chan's combination
// of Welford states (thread, warp) and GroupNorm's fused activation.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "normexport/common.h"

namespace normexport {
namespace cuda {

template <typename T>
struct DeviceType {
  using type = T;
};
template <>
struct DeviceType<half> {
  using type = __half;
};

__device__ __forceinline__ float Load(const float* p, int64_t i) { return __ldg(p + i); }
__device__ __forceinline__ float Load(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ void Store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void Store(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}
__device__ __forceinline__ double WarpSum(double v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

constexpr int kMaxBlockThreads = 512;

// Sum of v over the block, returned to every thread. `scratch` holds
// kMaxBlockThreads / 32 + 1 values in shared memory; the call synchronizes.
template <typename A>
__device__ __forceinline__ A BlockSum(A v, A* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int num_warps = (blockDim.x + 31) >> 5;
  v = WarpSum(v);
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    A w = lane < num_warps ? scratch[lane] : A(0);
    w = WarpSum(w);
    if (lane == 0) scratch[kMaxBlockThreads / 32] = w;
  }
  __syncthreads();
  return scratch[kMaxBlockThreads / 32];
}

// Kahan-compensated per-thread float accumulator.
struct Kahan {
  float sum = 0.f, comp = 0.f;
  __device__ __forceinline__ void Add(float v) {
    const float t = v - comp;
    const float s = sum + t;
    comp = (s - sum) - t;
    sum = s;
  }
};

// Mean and biased variance of plane x[0, n) computed by the whole block, in
// float, shifted by the plane's first element: mean = shift + lo, and the
// variance is the mean of ((x - shift) - lo)^2. Shifting keeps the deviations
// of a plane with a large mean (x - shift is exact near the shift).
struct PlaneMoments {
  float shift, lo, var;
};
template <typename D>
__device__ __forceinline__ PlaneMoments BlockPlaneMoments(const D* x, int64_t n, float* scratch) {
  const float shift = Load(x, 0);
  Kahan a;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) a.Add(Load(x, i) - shift);
  const float lo = BlockSum(a.sum, scratch) / static_cast<float>(n);
  Kahan b;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float d = (Load(x, i) - shift) - lo;
    b.Add(d * d);
  }
  const float var = BlockSum(b.sum, scratch) / static_cast<float>(n);
  return {shift, lo, var};
}

// (n, mean, m2) += (nb, mean_b, m2_b): Chan et al.'s pairwise combination of counts, means
// and sums of squared deviations. The float form (per-thread / per-warp Welford states) and
// the double form (partial moments of row ranges) keep their own rounding order.
__device__ __forceinline__ void ChanCombine(float& n, float& mean, float& m2, float nb, float mean_b, float m2_b) {
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
__device__ __forceinline__ void ChanCombine(double& n, double& mean, double& m2, double nb, double mean_b,
                                            double m2_b) {
  if (nb == 0.0) return;
  if (n == 0.0) {
    n = nb, mean = mean_b, m2 = m2_b;
    return;
  }
  const double nn = n + nb, delta = mean_b - mean;
  mean += delta * (nb / nn);
  m2 += m2_b + delta * delta * (n * nb / nn);
  n = nn;
}

// Welford states (n, mean, m2) of a warp combined into lane 0 (ChanCombine, float).
__device__ __forceinline__ void WarpChanCombine(float& n, float& mean, float& m2) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float nb = __shfl_down_sync(0xffffffffu, n, offset);
    const float mb = __shfl_down_sync(0xffffffffu, mean, offset);
    const float qb = __shfl_down_sync(0xffffffffu, m2, offset);
    ChanCombine(n, mean, m2, nb, mb, qb);
  }
}

// One value into a per-thread Welford state (n, mean, m2), in float.
__device__ __forceinline__ void WelfordAdd(float& n, float& mean, float& m2, float v) {
  n += 1.f;
  const float d = v - mean;
  mean += d / n;
  m2 += d * (v - mean);
}

// The block's per-thread Welford states combined: each warp's by WarpChanCombine, then warp 0
// over the warps' results; the block's (n, mean, m2) in thread 0 after the call. w_n, w_mean,
// w_m2: kMaxBlockThreads / 32 floats each in shared memory, written before the call's one
// barrier and read after it (a caller synchronizes before the next call reuses them).
__device__ __forceinline__ void BlockChanCombine(float& n, float& mean, float& m2, float* w_n, float* w_mean,
                                                 float* w_m2) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int num_warps = (blockDim.x + 31) >> 5;
  WarpChanCombine(n, mean, m2);
  if (lane == 0) {
    w_n[warp] = n;
    w_mean[warp] = mean;
    w_m2[warp] = m2;
  }
  __syncthreads();
  if (warp == 0) {
    n = lane < num_warps ? w_n[lane] : 0.f;
    mean = lane < num_warps ? w_mean[lane] : 0.f;
    m2 = lane < num_warps ? w_m2[lane] : 0.f;
    WarpChanCombine(n, mean, m2);
  }
}

// The fused activation of GroupNorm: 0 none, 1 ReLU (NaN kept), 2 SiLU.
__device__ __forceinline__ float Activate(float v, int act) {
  if (act == 1) return v < 0.f ? 0.f : v;  // NaN kept
  if (act == 2) return v / (1.f + expf(-v));
  return v;
}

// About 4 elements per thread, between one warp and kMaxBlockThreads.
inline int ThreadsForPlane(int64_t plane_size) {
  int threads = 32;
  while (threads < kMaxBlockThreads && static_cast<int64_t>(threads) * 4 < plane_size) threads *= 2;
  return threads;
}

constexpr int64_t kMaxBlocks = int64_t{1} << 20;

// Blocks for `units` work units, capped at kMaxBlocks (a grid-stride loop covers the rest).
inline unsigned GridFor(int64_t units) { return static_cast<unsigned>(units < kMaxBlocks ? units : kMaxBlocks); }

}  // namespace cuda
}  // namespace normexport
