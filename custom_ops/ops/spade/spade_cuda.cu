// CUDA kernel of normexport::SPADE. One block per (n, c) plane (grid-stride
// over planes): in mode 1 the block computes the plane's mean and biased
// variance (float, Kahan-compensated, shifted by the plane's first element),
// then every mode runs the fused x_hat * (1 + gamma) + beta pass. 64-bit indexing.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "normexport/cuda_block.cuh"
#include "normexport/cuda_launch.h"
#include "spade/spade_cuda.h"

namespace normexport {
namespace spade {
namespace {

using cuda::Load;
using cuda::Store;

template <typename D>
__global__ void __launch_bounds__(cuda::kMaxBlockThreads)
    SpadeKernel(const D* __restrict__ x, const D* __restrict__ gamma_map, const D* __restrict__ beta_map,
                const D* __restrict__ running_mean, const D* __restrict__ running_var, D* __restrict__ y,
                int64_t num_planes, int64_t channels, int64_t plane_size, float eps, int mode) {
  __shared__ float scratch[cuda::kMaxBlockThreads / 32 + 1];
  for (int64_t plane = blockIdx.x; plane < num_planes; plane += gridDim.x) {
    const int64_t base = plane * plane_size;
    const int64_t c = plane % channels;
    float hi, lo, var;
    if (mode == 0) {
      hi = Load(running_mean, c);
      lo = 0.f;
      var = Load(running_var, c);
    } else {
      const cuda::PlaneMoments m = cuda::BlockPlaneMoments(x + base, plane_size, scratch);
      hi = m.shift;
      lo = m.lo;
      var = m.var;
    }
    const float inv = static_cast<float>(1.0 / sqrt(static_cast<double>(var) + static_cast<double>(eps)));
    for (int64_t i = threadIdx.x; i < plane_size; i += blockDim.x) {
      const float xh = ((Load(x, base + i) - hi) - lo) * inv;
      Store(y, base + i, fmaf(xh, 1.f + Load(gamma_map, base + i), Load(beta_map, base + i)));
    }
  }
}

}  // namespace

template <typename T>
int LaunchSpade(void* stream, const T* x, const T* gamma_map, const T* beta_map, const T* running_mean,
                const T* running_var, T* y, int64_t num_planes, int64_t channels, int64_t plane_size, float eps,
                int mode) noexcept {
  if (num_planes <= 0 || plane_size <= 0) return cudaSuccess;
  int err = cuda::UseStreamDevice(stream);
  if (err != cudaSuccess) return err;
  const int threads = cuda::ThreadsForPlane(plane_size);
  const int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride loop covers the rest
  const unsigned blocks = static_cast<unsigned>(num_planes < kMaxBlocks ? num_planes : kMaxBlocks);
  using D = typename cuda::DeviceType<T>::type;
  SpadeKernel<D><<<blocks, threads, 0, static_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const D*>(x), reinterpret_cast<const D*>(gamma_map), reinterpret_cast<const D*>(beta_map),
      reinterpret_cast<const D*>(running_mean), reinterpret_cast<const D*>(running_var), reinterpret_cast<D*>(y),
      num_planes, channels, plane_size, eps, mode);
  return static_cast<int>(cudaGetLastError());
}

template int LaunchSpade<float>(void*, const float*, const float*, const float*, const float*, const float*, float*,
                                int64_t, int64_t, int64_t, float, int) noexcept;
template int LaunchSpade<half>(void*, const half*, const half*, const half*, const half*, const half*, half*,
                               int64_t, int64_t, int64_t, float, int) noexcept;

}  // namespace spade
}  // namespace normexport
