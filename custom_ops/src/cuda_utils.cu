#include <cuda_runtime.h>

#include "normexport/cuda_launch.h"

namespace normexport {
namespace cuda {

const char* ErrorName(int code) noexcept { return cudaGetErrorName(static_cast<cudaError_t>(code)); }
const char* ErrorString(int code) noexcept { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

int UseStreamDevice(void* stream) noexcept {
#if CUDART_VERSION >= 12080
  if (stream == nullptr) return cudaSuccess;
  int dev = -1;
  cudaError_t err = cudaStreamGetDevice(static_cast<cudaStream_t>(stream), &dev);
  if (err != cudaSuccess) return err;
  int cur = -1;
  err = cudaGetDevice(&cur);
  if (err != cudaSuccess) return err;
  if (cur != dev) return cudaSetDevice(dev);
#else
  (void)stream;
#endif
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace normexport
