// CUDA launcher of normexport::AdaIN. Plain C++ interface: `stream` is a
// cudaStream_t, the result a cudaError_t value (0 = success; launch errors are
// checked with cudaGetLastError).
#pragma once

#include <cstddef>
#include <cstdint>

#include "normexport/common.h"

namespace normexport {
namespace adain {

// content, y: device pointers to num_planes * content_plane elements; style:
// num_planes * style_plane elements (plane = n*C + c). T: float or normexport::half.
template <typename T>
int LaunchAdaIN(void* stream, const T* content, const T* style, T* y, int64_t num_planes, int64_t content_plane,
                int64_t style_plane, float eps, float alpha) noexcept;

// Channels last (adain_nhwc_cuda.cu): content, y hold batch * content_plane * channels
// elements, (N, content_plane, C); style batch * style_plane * channels, (N, style_plane, C).
// scratch: device memory of AdaINNhwcScratchBytes() bytes (nullptr when that is 0), used by
// the kernels only (free to reuse once they have run on `stream`).
size_t AdaINNhwcScratchBytes(int64_t batch, int64_t channels, int64_t content_plane, int64_t style_plane) noexcept;
template <typename T>
int LaunchAdaINNhwc(void* stream, const T* content, const T* style, T* y, int64_t batch, int64_t channels,
                    int64_t content_plane, int64_t style_plane, float eps, float alpha, void* scratch) noexcept;

}  // namespace adain
}  // namespace normexport
