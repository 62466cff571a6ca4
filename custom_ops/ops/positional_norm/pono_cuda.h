// CUDA launcher of normexport::PositionalNorm. Plain C++ interface: `stream` is
// a cudaStream_t, the result a cudaError_t value (0 = success; launch errors are
// checked with cudaGetLastError).
#pragma once

#include <cstdint>

#include "normexport/common.h"

namespace normexport {
namespace pono {

// x, y: device pointers to (N, C, S) contiguous elements; mean, std: (N, S).
// T: float or normexport::half.
template <typename T>
int LaunchPositionalNorm(void* stream, const T* x, T* y, T* mean, T* std, int64_t batch, int64_t channels,
                         int64_t positions, float eps, bool unbiased) noexcept;

}  // namespace pono
}  // namespace normexport
