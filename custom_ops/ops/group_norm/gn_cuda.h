// CUDA launcher of normexport::GroupNorm. Plain C++ interface: no CUDA headers needed by
// callers; `stream` is a cudaStream_t, the result a cudaError_t value (0 = success; launch
// errors are checked with cudaGetLastError).
#pragma once

#include <cstddef>
#include <cstdint>

#include "normexport/common.h"

namespace normexport {
namespace gn {

// X, Y: device pointers to N * C * spatial contiguous elements; scale, bias: C elements.
// num_groups divides channels. activation: 0 none, 1 ReLU, 2 SiLU. T: float or normexport::half.
template <typename T>
int LaunchGroupNorm(void* stream, const T* x, T* y, const T* scale, const T* bias, int64_t batch, int64_t channels,
                    int64_t spatial, int64_t num_groups, float eps, int activation) noexcept;

// Channels last (gn_nhwc_cuda.cu): X, Y hold N * spatial * C contiguous elements, (N, spatial,
// C); scale, bias: C elements. scratch: device memory of GroupNormNhwcScratchBytes() bytes
// (nullptr when that is 0), used by the kernels only (free to reuse once they have run on
// `stream`). Same arguments and result otherwise.
size_t GroupNormNhwcScratchBytes(int64_t batch, int64_t channels, int64_t spatial, int64_t num_groups) noexcept;
template <typename T>
int LaunchGroupNormNhwc(void* stream, const T* x, T* y, const T* scale, const T* bias, int64_t batch,
                        int64_t channels, int64_t spatial, int64_t num_groups, float eps, int activation,
                        void* scratch) noexcept;

}  // namespace gn
}  // namespace normexport
