// CUDA launcher of normexport::SPADE. Plain C++ interface: no CUDA headers
// needed by callers; `stream` is a cudaStream_t, the result a cudaError_t value
// (0 = success; launch errors are checked with cudaGetLastError).
#pragma once

#include <cstdint>

#include "normexport/common.h"

namespace normexport {
namespace spade {

// x, gamma_map, beta_map, y: device pointers to num_planes * plane_size contiguous
// elements (plane = n * C + c); running_mean, running_var: C elements (read in mode 0).
// T: float or normexport::half (computed in float).
template <typename T>
int LaunchSpade(void* stream, const T* x, const T* gamma_map, const T* beta_map, const T* running_mean,
                const T* running_var, T* y, int64_t num_planes, int64_t channels, int64_t plane_size, float eps,
                int mode) noexcept;

}  // namespace spade
}  // namespace normexport
