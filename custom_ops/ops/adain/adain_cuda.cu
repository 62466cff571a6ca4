// CUDA kernel of normexport::AdaIN.
// One block per (n, c) plane (grid-stride over planes): two-pass block
// reductions in float over x - x[0] (mean, then sum of squared deviations) of
// the content and the style plane, per-plane coefficients in double by one thread, then
// the fused y = (x - mean) * a + b pass. 64-bit indexing throughout.
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
using cuda::WarpSum;

constexpr int kMaxThreads = 512;

// Sum over the block; the result is valid in every thread. `scratch` holds kMaxThreads/32 floats.
__device__ float BlockSum(float v, float* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int num_warps = (blockDim.x + 31) >> 5;
  v = WarpSum(v);
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < num_warps ? scratch[lane] : 0.f;
  r = WarpSum(r);
  r = __shfl_sync(0xffffffffu, r, 0);
  return r;
}

// Moments of x - shift with shift = x[base] (small exact differences for a large
// common mean): mean = shift + *delta, *m2 = sum((x - shift - delta)^2).
template <typename T>
__device__ void PlaneMoments(const T* __restrict__ x, int64_t base, int64_t n, float* scratch, float* shift,
                             float* delta, float* m2) {
  const float sh = n > 0 ? Load(x, base) : 0.f;
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += Load(x, base + i) - sh;
  const float dl = BlockSum(s, scratch) / static_cast<float>(n);  // n == 0 -> NaN, like the reference
  float q = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float d = (Load(x, base + i) - sh) - dl;
    q = fmaf(d, d, q);
  }
  *shift = sh;
  *delta = dl;
  *m2 = BlockSum(q, scratch);
}

template <typename T>
__global__ void __launch_bounds__(kMaxThreads)
    AdaINKernel(const T* __restrict__ content, const T* __restrict__ style, T* __restrict__ y, int64_t num_planes,
                int64_t content_plane, int64_t style_plane, float eps, float alpha) {
  __shared__ float scratch[kMaxThreads / 32];
  for (int64_t plane = blockIdx.x; plane < num_planes; plane += gridDim.x) {
    const int64_t xb = plane * content_plane;
    const int64_t zb = plane * style_plane;
    float sx, dx, qx, sz, dz, qz;
    PlaneMoments(content, xb, content_plane, scratch, &sx, &dx, &qx);
    PlaneMoments(style, zb, style_plane, scratch, &sz, &dz, &qz);
    // every thread computes the same coefficients (no extra barrier needed):
    // y = ((x - shift_x) - delta_x) * a + b
    const double e = static_cast<double>(eps), al = static_cast<double>(alpha);
    const double vx = static_cast<double>(qx) / static_cast<double>(content_plane);
    const double vz = static_cast<double>(qz) / static_cast<double>(style_plane);
    const double s = sqrt(vz + e) / sqrt(vx + e);
    const double mx = static_cast<double>(sx) + static_cast<double>(dx);
    const double mz = static_cast<double>(sz) + static_cast<double>(dz);
    const float a = static_cast<float>(al * s + (1.0 - al));
    const float b = static_cast<float>(al * mz + (1.0 - al) * mx);
    for (int64_t i = threadIdx.x; i < content_plane; i += blockDim.x) {
      Store(y, xb + i, fmaf((Load(content, xb + i) - sx) - dx, a, b));
    }
  }
}

}  // namespace

template <typename T>
int LaunchAdaIN(void* stream, const T* content, const T* style, T* y, int64_t num_planes, int64_t content_plane,
                int64_t style_plane, float eps, float alpha) noexcept {
  if (num_planes <= 0 || content_plane <= 0) return cudaSuccess;
  int err = cuda::UseStreamDevice(stream);
  if (err != cudaSuccess) return err;

  const int64_t work = content_plane > style_plane ? content_plane : style_plane;
  int threads = 32;
  while (threads < kMaxThreads && static_cast<int64_t>(threads) * 4 < work) threads *= 2;
  const int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride loop covers the rest
  const unsigned blocks = static_cast<unsigned>(num_planes < kMaxBlocks ? num_planes : kMaxBlocks);

  using D = typename DeviceType<T>::type;
  AdaINKernel<D><<<blocks, threads, 0, static_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const D*>(content), reinterpret_cast<const D*>(style), reinterpret_cast<D*>(y), num_planes,
      content_plane, style_plane, eps, alpha);
  return static_cast<int>(cudaGetLastError());
}

template int LaunchAdaIN<float>(void*, const float*, const float*, float*, int64_t, int64_t, int64_t, float,
                                float) noexcept;
template int LaunchAdaIN<half>(void*, const half*, const half*, half*, int64_t, int64_t, int64_t, float,
                               float) noexcept;

}  // namespace adain
}  // namespace normexport
