// CUDA launcher of normexport::FilterResponseNorm. Plain C++ interface: no
// CUDA headers needed by callers; `stream` is a cudaStream_t, the result a
// cudaError_t value (0 = success; launch errors are checked with cudaGetLastError).
#pragma once

#include <cstddef>
#include <cstdint>

#include "normexport/common.h"

namespace normexport {
namespace frn {

// X, Y: device pointers to num_planes * plane_size contiguous elements (plane = n*C + c).
// gamma, beta, tau: device pointers to C elements (tau unused and may be null when !tlu).
// T: float or normexport::half.
template <typename T>
int LaunchFilterResponseNorm(void* stream, const T* x, T* y, const T* gamma, const T* beta, const T* tau,
                             int64_t num_planes, int64_t channels, int64_t plane_size, float eps, bool tlu) noexcept;

// Channels last (frn_nhwc_cuda.cu): X, Y hold batch * plane_size * channels contiguous
// elements, (N, plane_size, C); gamma, beta, tau as above. scratch: device memory of
// FilterResponseNormNhwcScratchBytes() bytes (nullptr when that is 0), used by the kernels
// only (free to reuse once they have run on `stream`).
size_t FilterResponseNormNhwcScratchBytes(int64_t batch, int64_t channels, int64_t plane_size) noexcept;
template <typename T>
int LaunchFilterResponseNormNhwc(void* stream, const T* x, T* y, const T* gamma, const T* beta, const T* tau,
                                 int64_t batch, int64_t channels, int64_t plane_size, float eps, bool tlu,
                                 void* scratch) noexcept;

}  // namespace frn
}  // namespace normexport
