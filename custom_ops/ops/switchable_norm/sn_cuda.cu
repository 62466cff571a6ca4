// CUDA kernels of normexport::SwitchableNorm, three launches on one stream:
//   1. StatsKernel  one block per (n, c) plane: IN mean (shift + lo) and biased
//                   variance in float, Kahan-compensated, shifted by the plane's
//                   first element (skipped for rank 2: a plane is one value)
//   2. MixKernel    one block per sample: LN statistics from the IN ones (double,
//                   law of total variance), softmax of the logits, mixed mean / var
//                   per plane -> (mu_hi, mu_lo, a = scale / sqrt(var + eps), bias)
//   3. ApplyKernel  one block per plane (or a flat grid for small planes):
//                   y = ((x - mu_hi) - mu_lo) * a + bias
// 64-bit indexing throughout; absent branches contribute exactly nothing.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>

#include <cstdint>

#include "normexport/cuda_block.cuh"
#include "normexport/cuda_launch.h"
#include "switchable_norm/sn_cuda.h"

namespace normexport {
namespace switchable_norm {
namespace {

using cuda::Load;
using cuda::Store;

struct PlaneStat {  // phase 1 output
  double mean, var;
};

template <typename D>
__global__ void __launch_bounds__(cuda::kMaxBlockThreads)
    StatsKernel(const D* __restrict__ x, PlaneStat* __restrict__ stats, int64_t num_planes, int64_t plane_size) {
  __shared__ float scratch[cuda::kMaxBlockThreads / 32 + 1];
  for (int64_t plane = blockIdx.x; plane < num_planes; plane += gridDim.x) {
    const cuda::PlaneMoments m = cuda::BlockPlaneMoments(x + plane * plane_size, plane_size, scratch);
    if (threadIdx.x == 0) {
      stats[plane].mean = static_cast<double>(m.shift) + static_cast<double>(m.lo);
      stats[plane].var = static_cast<double>(m.var);
    }
  }
}

struct Mixed {
  double w_in, w_ln, w_bn;
};

template <typename D>
__device__ __forceinline__ Mixed Softmax(const D* logits, bool has_in, bool has_bn) {
  const int k = (has_in ? 1 : 0) + 1 + (has_bn ? 1 : 0);
  double v[3] = {0.0, 0.0, 0.0};
  double mx = -INFINITY;
  bool nan = false;
  for (int i = 0; i < k; ++i) {
    v[i] = static_cast<double>(Load(logits, i));
    if (isnan(v[i])) nan = true;
    if (v[i] > mx) mx = v[i];
  }
  double e[3] = {0.0, 0.0, 0.0};
  double s = 0.0;
  for (int i = 0; i < k; ++i) {
    e[i] = nan ? CUDART_NAN : exp(v[i] - mx);
    s += e[i];
  }
  Mixed w{0.0, 0.0, 0.0};
  int j = 0;
  if (has_in) w.w_in = e[j++] / s;
  w.w_ln = e[j++] / s;
  if (has_bn) w.w_bn = e[j++] / s;
  return w;
}

template <typename D>
__global__ void __launch_bounds__(cuda::kMaxBlockThreads)
    MixKernel(const D* __restrict__ x, const PlaneStat* __restrict__ stats, const D* __restrict__ scale,
              const D* __restrict__ bias, const D* __restrict__ running_mean, const D* __restrict__ running_var,
              const D* __restrict__ mean_weight, const D* __restrict__ var_weight, float4* __restrict__ coef,
              int64_t n_samples, int64_t channels, int64_t plane_size, bool has_in, bool has_bn, float eps) {
  __shared__ double scratch[cuda::kMaxBlockThreads / 32 + 1];
  const Mixed wm = Softmax(mean_weight, has_in, has_bn);
  const Mixed wv = Softmax(var_weight, has_in, has_bn);
  const double inv_c = 1.0 / static_cast<double>(channels);
  for (int64_t n = blockIdx.x; n < n_samples; n += gridDim.x) {
    const int64_t p0 = n * channels;
    // rank 2 (plane_size 1): the IN "statistics" are x itself and (x - x)^2
    auto mean_of = [&](int64_t c) -> double {
      return plane_size == 1 ? static_cast<double>(Load(x, p0 + c)) : stats[p0 + c].mean;
    };
    auto var_of = [&](int64_t c) -> double {
      if (plane_size != 1) return stats[p0 + c].var;
      const double v = static_cast<double>(Load(x, p0 + c));
      return (v - v) * (v - v);
    };
    double s = 0.0;
    for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) s += mean_of(c);
    const double mean_ln = cuda::BlockSum(s, scratch) * inv_c;
    double sv = 0.0, se = 0.0;
    for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) {
      const double e = mean_of(c) - mean_ln;
      sv += var_of(c);
      se += e * e;
    }
    const double var_ln = cuda::BlockSum(sv, scratch) * inv_c + cuda::BlockSum(se, scratch) * inv_c;
    for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) {
      double mu = wm.w_ln * mean_ln;
      double v = wv.w_ln * var_ln;
      if (has_in) {
        mu = wm.w_in * mean_of(c) + mu;
        v = wv.w_in * var_of(c) + v;
      }
      if (has_bn) {
        mu = mu + wm.w_bn * static_cast<double>(Load(running_mean, c));
        v = v + wv.w_bn * static_cast<double>(Load(running_var, c));
      }
      const float hi = static_cast<float>(mu);
      const float lo = isfinite(hi) ? static_cast<float>(mu - static_cast<double>(hi)) : 0.f;
      const double a = static_cast<double>(Load(scale, c)) / sqrt(v + static_cast<double>(eps));
      coef[p0 + c] = make_float4(hi, lo, static_cast<float>(a), Load(bias, c));
    }
  }
}

template <typename D>
__global__ void __launch_bounds__(cuda::kMaxBlockThreads)
    ApplyPlanesKernel(const D* __restrict__ x, const float4* __restrict__ coef, D* __restrict__ y,
                      int64_t num_planes, int64_t plane_size) {
  for (int64_t plane = blockIdx.x; plane < num_planes; plane += gridDim.x) {
    const float4 k = coef[plane];
    const int64_t base = plane * plane_size;
    for (int64_t i = threadIdx.x; i < plane_size; i += blockDim.x)
      Store(y, base + i, fmaf((Load(x, base + i) - k.x) - k.y, k.z, k.w));
  }
}

template <typename D>
__global__ void ApplyFlatKernel(const D* __restrict__ x, const float4* __restrict__ coef, D* __restrict__ y,
                                int64_t num_elements, int64_t plane_size) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < num_elements;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float4 k = coef[i / plane_size];
    Store(y, i, fmaf((Load(x, i) - k.x) - k.y, k.z, k.w));
  }
}

constexpr size_t AlignUp(size_t v) { return (v + 255) & ~size_t{255}; }

}  // namespace

size_t CudaScratchBytes(int64_t num_planes) noexcept {
  const size_t p = static_cast<size_t>(num_planes);
  return AlignUp(p * sizeof(PlaneStat)) + AlignUp(p * sizeof(float4));
}

template <typename T>
int LaunchSwitchableNorm(void* stream, const T* x, const T* scale, const T* bias, const T* running_mean,
                         const T* running_var, const T* mean_weight, const T* var_weight, T* y, int64_t n,
                         int64_t channels, int64_t plane_size, bool has_in, bool using_bn, float eps,
                         void* scratch) noexcept {
  const int64_t num_planes = n * channels;
  if (num_planes <= 0 || plane_size <= 0) return cudaSuccess;
  int err = cuda::UseStreamDevice(stream);
  if (err != cudaSuccess) return err;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  using D = typename cuda::DeviceType<T>::type;
  const D* dx = reinterpret_cast<const D*>(x);
  PlaneStat* stats = static_cast<PlaneStat*>(scratch);
  float4* coef = reinterpret_cast<float4*>(static_cast<char*>(scratch) +
                                           AlignUp(static_cast<size_t>(num_planes) * sizeof(PlaneStat)));
  const int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride loops cover the rest
  const unsigned plane_blocks = static_cast<unsigned>(num_planes < kMaxBlocks ? num_planes : kMaxBlocks);

  if (plane_size > 1) {
    StatsKernel<D><<<plane_blocks, cuda::ThreadsForPlane(plane_size), 0, s>>>(dx, stats, num_planes, plane_size);
    if ((err = static_cast<int>(cudaGetLastError())) != cudaSuccess) return err;
  }
  const unsigned sample_blocks = static_cast<unsigned>(n < kMaxBlocks ? n : kMaxBlocks);
  MixKernel<D><<<sample_blocks, cuda::ThreadsForPlane(channels), 0, s>>>(
      dx, stats, reinterpret_cast<const D*>(scale), reinterpret_cast<const D*>(bias),
      reinterpret_cast<const D*>(running_mean), reinterpret_cast<const D*>(running_var),
      reinterpret_cast<const D*>(mean_weight), reinterpret_cast<const D*>(var_weight), coef, n, channels, plane_size,
      has_in, using_bn, eps);
  if ((err = static_cast<int>(cudaGetLastError())) != cudaSuccess) return err;
  if (plane_size >= 128) {
    ApplyPlanesKernel<D><<<plane_blocks, cuda::ThreadsForPlane(plane_size), 0, s>>>(dx, coef, reinterpret_cast<D*>(y),
                                                                                   num_planes, plane_size);
  } else {
    const int64_t total = num_planes * plane_size;
    const int threads = 256;
    const int64_t want = (total + threads - 1) / threads;
    const unsigned blocks = static_cast<unsigned>(want < kMaxBlocks ? want : kMaxBlocks);
    ApplyFlatKernel<D><<<blocks, threads, 0, s>>>(dx, coef, reinterpret_cast<D*>(y), total, plane_size);
  }
  return static_cast<int>(cudaGetLastError());
}

template int LaunchSwitchableNorm<float>(void*, const float*, const float*, const float*, const float*, const float*,
                                         const float*, const float*, float*, int64_t, int64_t, int64_t, bool, bool,
                                         float, void*) noexcept;
template int LaunchSwitchableNorm<half>(void*, const half*, const half*, const half*, const half*, const half*,
                                        const half*, const half*, half*, int64_t, int64_t, int64_t, bool, bool, float,
                                        void*) noexcept;

}  // namespace switchable_norm
}  // namespace normexport
