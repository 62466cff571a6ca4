// CUDA kernel of normexport::PositionalNorm.
// One thread per (n, position) (grid-stride), looping over the C channels:
// neighbouring threads read neighbouring positions of one channel row, so every
// load is coalesced. Two passes in float over x - x[channel 0] (mean, then sum of
// squared deviations), then Y = (x - mean) / std. 64-bit indexing throughout.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "normexport/cuda_block.cuh"
#include "normexport/cuda_launch.h"
#include "positional_norm/pono_cuda.h"

namespace normexport {
namespace pono {
namespace {

using cuda::DeviceType;
using cuda::Load;
using cuda::Store;

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    PositionalNormKernel(const T* __restrict__ x, T* __restrict__ y, T* __restrict__ mean_out,
                         T* __restrict__ std_out, int64_t total, int64_t channels, int64_t positions, float eps,
                         float divisor) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += stride) {
    const int64_t n = t / positions;
    const int64_t p = t - n * positions;
    const int64_t base = n * channels * positions + p;
    // statistics of x - shift (shift = the first channel's value): the differences are
    // small and exact for clustered data, so a large common mean costs no accuracy
    const float shift = Load(x, base);
    float s = 0.f;
    for (int64_t c = 0; c < channels; ++c) s += Load(x, base + c * positions) - shift;
    const float delta = s / static_cast<float>(channels);  // mean = shift + delta
    float q = 0.f;
    for (int64_t c = 0; c < channels; ++c) {
      const float d = (Load(x, base + c * positions) - shift) - delta;
      q = fmaf(d, d, q);
    }
    const float sd = sqrtf(q / divisor + eps);
    const float inv = 1.0f / sd;
    // inf / NaN: shift or delta is not finite -> mean inf/NaN, std and Y NaN like the reference
    float mu = shift + delta;
    if (!isfinite(shift)) {  // inf in channel 0: the plain mean keeps +-inf (or NaN)
      float plain = 0.f;
      for (int64_t c = 0; c < channels; ++c) plain += Load(x, base + c * positions);
      mu = plain / static_cast<float>(channels);
    }
    Store(mean_out, t, mu);
    Store(std_out, t, sd);
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t i = base + c * positions;
      Store(y, i, ((Load(x, i) - shift) - delta) * inv);
    }
  }
}

}  // namespace

template <typename T>
int LaunchPositionalNorm(void* stream, const T* x, T* y, T* mean, T* std, int64_t batch, int64_t channels,
                         int64_t positions, float eps, bool unbiased) noexcept {
  const int64_t total = batch * positions;
  if (total <= 0 || channels <= 0) return cudaSuccess;
  int err = cuda::UseStreamDevice(stream);
  if (err != cudaSuccess) return err;

  const int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride loop covers the rest
  int64_t blocks = (total + kThreads - 1) / kThreads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  const float divisor = static_cast<float>(channels - (unbiased ? 1 : 0));

  using D = typename DeviceType<T>::type;
  PositionalNormKernel<D><<<static_cast<unsigned>(blocks), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const D*>(x), reinterpret_cast<D*>(y), reinterpret_cast<D*>(mean),
      reinterpret_cast<D*>(std), total, channels, positions, eps, divisor);
  return static_cast<int>(cudaGetLastError());
}

template int LaunchPositionalNorm<float>(void*, const float*, float*, float*, float*, int64_t, int64_t, int64_t,
                                         float, bool) noexcept;
template int LaunchPositionalNorm<half>(void*, const half*, half*, half*, half*, int64_t, int64_t, int64_t, float,
                                        bool) noexcept;

}  // namespace pono
}  // namespace normexport
