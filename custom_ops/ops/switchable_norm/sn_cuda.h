// CUDA launcher of normexport::SwitchableNorm. Plain C++ interface: no CUDA
// headers needed by callers; `stream` is a cudaStream_t, the result a
// cudaError_t value (0 = success; every launch is checked with cudaGetLastError).
#pragma once

#include <cstddef>
#include <cstdint>

#include "normexport/common.h"

namespace normexport {
namespace switchable_norm {

// Bytes of device scratch LaunchSwitchableNorm needs for num_planes = N * C planes.
size_t CudaScratchBytes(int64_t num_planes) noexcept;

// x, y: device pointers to N * C * plane_size contiguous elements; scale, bias,
// running_mean, running_var: C elements (running statistics read when using_bn);
// mean_weight, var_weight: num_branches logits; scratch: CudaScratchBytes(N * C)
// bytes of device memory, 16-byte aligned, used in stream order.
// T: float or normexport::half (computed in float; mixing in double).
template <typename T>
int LaunchSwitchableNorm(void* stream, const T* x, const T* scale, const T* bias, const T* running_mean,
                         const T* running_var, const T* mean_weight, const T* var_weight, T* y, int64_t n,
                         int64_t channels, int64_t plane_size, bool has_in, bool using_bn, float eps,
                         void* scratch) noexcept;

}  // namespace switchable_norm
}  // namespace normexport
