// CUDA helpers with a plain C++ interface (no CUDA or ORT headers needed):
// CUDA error codes travel as int (the cudaError_t value, 0 = success).
// Implemented in src/cuda_utils.cu.
#pragma once

namespace normexport {
namespace cuda {

const char* ErrorName(int code) noexcept;    // e.g. "cudaErrorInvalidValue"
const char* ErrorString(int code) noexcept;  // human readable description

// Makes the device that owns `stream` (a cudaStream_t) current for this
// library's statically linked CUDA runtime, so kernels launch in the stream's
// context even when ORT runs on a device other than 0. Returns a cudaError_t value.
int UseStreamDevice(void* stream) noexcept;

}  // namespace cuda
}  // namespace normexport
