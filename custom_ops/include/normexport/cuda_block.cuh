// Device helpers shared by the plane-statistics CUDA kernels (nvcc only):
// element load/store in float for float/__half, warp and block sums, and the
// shifted two-pass moments of one plane computed by one block.
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

// About 4 elements per thread, between one warp and kMaxBlockThreads.
inline int ThreadsForPlane(int64_t plane_size) {
  int threads = 32;
  while (threads < kMaxBlockThreads && static_cast<int64_t>(threads) * 4 < plane_size) threads *= 2;
  return threads;
}

}  // namespace cuda
}  // namespace normexport
